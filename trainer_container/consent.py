"""The trainer verifies the contract itself before it asks for any key.

Claim: the terms this trainer applies are exactly the ones every party signed, and they are
the contract its container policy was measured with. The group's CCE policy requires
CCR_CONTRACT_DIGEST to hold one value, so the host data that every key grant pins already
binds that digest; here the trainer checks that the envelope it was handed (CCR_CONTRACT) is
the contract with that digest, that every party (and nobody else) signed it with the key of
its DID document, that each dataset's provider is among them, and that it is in force now.

Attacks stopped: a deployer that hands the trainer other terms than the measured contract (a
forged or altered CCR_CONTRACT), a contract some party did not sign, or one whose dataset
names a provider that did not sign it. Nothing is downloaded and no key is asked for before
this passes."""
from __future__ import annotations

from typing import Callable

from shared import contract as contracts


class ConsentError(ValueError):
    """The contract handed to the trainer is not the measured one, or not signed by all."""


def verified_contract(envelope: bytes, measured_digest: str,
                      resolve_did: Callable[[str], dict] | None = None) -> contracts.Contract:
    try:
        payload, _ = contracts.envelope_signers(envelope)
    except contracts.ContractError as error:
        raise ConsentError(f"the contract envelope is unusable: {error}") from None
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    if digest != measured_digest:
        raise ConsentError("the contract handed to the trainer is not the one its container policy was measured "
                           "with (CCR_CONTRACT_DIGEST differs)")
    try:
        contract = contracts.verify_contract(envelope, resolve_did)
    except contracts.ContractError as error:
        raise ConsentError(f"the contract is not signed by every party: {type(error).__name__}: {error}") from None
    providers = {did for did, _ in contracts.datasets(contract.payload)}
    if not providers <= set(contract.signers):
        raise ConsentError("a dataset's provider did not sign the contract")
    return contract
