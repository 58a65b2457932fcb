"""The control plane's one key act: the state KEK of a contract that keeps its model state
(continued training, or an inference workload: shared/contract.py `keeps_model_state`),
created when the contract is accepted (shared/model_states.py says why here and not by a party).

Created once, idempotently (the ledger may deliver a contract again): an existing KEK of that
name must carry exactly this contract's release policy, else the contract's continued runs are
refused rather than trusting a key someone else shaped."""
from __future__ import annotations

from azure.core.exceptions import ResourceNotFoundError
from azure.keyvault.keys import KeyReleasePolicy

from shared import azure_clients, key_grants, model_states, settings
from shared.release_policy import policy_from_json, policy_to_json


class StateKeyError(RuntimeError):
    """The contract's state KEK exists with another release policy, or is not exportable."""


def ensure_state_kek(payload: dict, contract_digest: str) -> str:
    """Create the contract's state KEK in the control plane's vault (RSA-HSM, exportable, immutable
    release policy admitting only this contract's trainer group, and its inference group if any) unless it exists; its name."""
    name = model_states.kek_name(contract_digest)
    policy = key_grants.state_release_policy(settings.require("CCR_MAA_URL"), payload, contract_digest)
    with azure_clients.key_client() as vault:
        try:
            key = vault.get_key(name)
        except ResourceNotFoundError:
            vault.create_rsa_key(name, size=key_grants.KEK_BITS, hardware_protected=True, exportable=True,
                                 key_operations=["wrapKey", "unwrapKey", "encrypt", "decrypt"],
                                 release_policy=KeyReleasePolicy(policy_to_json(policy), immutable=True))
            return name
    existing = key.properties.release_policy
    if existing is None or not key.properties.exportable or policy_from_json(existing.encoded_policy) != policy:
        raise StateKeyError(f"state key {name} exists with another release policy than this contract's")
    return name
