"""Where a contract's trained model state is kept for continued training, and under which key.

Claim: the model state a continued run starts from never leaves the clean room in a form anyone
outside can read: not the TDC (who gets only the exported model, as before), not a provider,
not the operator. The trainer encrypts the state (trainer_container/model_state.py) as a
package under a fresh data key and wraps that key (a JWE, as a grant: shared/key_grants.py)
under the contract's *state KEK*: an exportable RSA-HSM key whose immutable release policy
admits only this contract's attested trainer group (`key_grants.kek_release_policy`).

Who creates the state KEK: the control plane, in its own vault (CCR_KEYVAULT_URL), when it
accepts a contract that allows continued training (orchestrations/state_key.py). Not the TDC
or a provider: a KEK in a party's own vault is one whose release policy that party could
replace, and then release the key to itself. The control plane may create keys but holds no
release role, and the policy is immutable, so it cannot release the KEK either; any party can
read the KEK's policy and check that it pins the contract's trainer (docs/TRUST_CHAIN.md).

Attacks stopped: the TDC uploading a "previous model" of its choosing (the state is read only
from the `model-states` container, written once by an attested trainer, and its digest is in
that run's attested outcome); a state of another contract (the KEK is per contract digest, so
its data key does not unwrap under this contract's trainer).
"""
from __future__ import annotations

from shared import key_grants, storage_names

STATE_SUBJECT = "model-state"
CONTENT_TYPE = "application/vnd.ccr.model-state+zip"  # as trainer_container/model_state.py
STATE_KEY_ID_PREFIX = "model-state-"


def kek_name(contract_digest: str) -> str:
    """The contract's state KEK in the control plane's vault."""
    return key_grants.kek_name(contract_digest, STATE_SUBJECT)


def package_path(contract_digest: str, run_id: str) -> str:
    """`model-states/<contract digest>/<run id>.ccr`: the state a run leaves, created once."""
    return f"{storage_names.MODEL_STATES}/{contract_digest}/{run_id}{storage_names.PACKAGE_SUFFIX}"


def wrapped_key_path(contract_digest: str, run_id: str) -> str:
    """`model-states/<contract digest>/<run id>.jwe`: that state's data key, wrapped under the
    contract's state KEK."""
    return f"{storage_names.MODEL_STATES}/{contract_digest}/{run_id}.jwe"


def paths(contract_digest: str, run_id: str) -> list[str]:
    return [package_path(contract_digest, run_id), wrapped_key_path(contract_digest, run_id)]


def continuation_path(contract_digest: str, run_id: str) -> str:
    """`model-states/<contract digest>/<run id>.continuation.json`: what a continued run trains on
    and starts from (shared/continuation.py), written by the control plane, checked by the trainer."""
    return f"{storage_names.MODEL_STATES}/{contract_digest}/{run_id}.continuation.json"


def state_key_id(run_id: str) -> str:
    """The key id a state package's header names: its run's (each state has a fresh data key)."""
    return STATE_KEY_ID_PREFIX + run_id
