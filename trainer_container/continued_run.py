"""A continued run as the trainer takes it: which new version it trains on and which kept model
state it starts from, checked before any key or data is asked for.

Claim: the trainer trains on a new version only with its provider's signed declaration of
exactly that package, for a dataset of the contract it runs, after the contract's version, and
only if its own run id is the one that version's continued run is named by
(shared/continuation.py): so its attested outcome (which carries the run id) speaks for that
version alone. The package itself is then checked as any input is (trainer_container/run.py
`fetch`): its manifest against the declared pin, its header against the data key the provider
granted to this contract.

Attacks stopped: a control plane (or anyone writing the continuation) naming an undeclared or
altered package, another provider's declaration, a version the contract already covers, or one
version's declaration under another version's run."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace

from shared import continuation as continuations
from shared import contract as contracts
from shared import did as dids
from shared import storage_names
from shared import version_declaration as versions
from trainer_container.contract_terms import PackageRef


class ContinuationError(ValueError):
    """A continued run whose version or declaration does not hold (names no values)."""


def checked(document: bytes, payload: dict, contract_digest: str, run_id: str,
            resolve_did: Callable[[str], dict] | None = None) -> continuations.Continuation:
    if not contracts.continued_training(payload):
        raise ContinuationError("the contract does not allow continued training")
    try:
        continued = continuations.Continuation.from_dict(json.loads(document))
    except (ValueError, TypeError, KeyError):
        raise ContinuationError("the continuation is not a valid continuation document") from None
    try:
        claims = versions.verify(continued.declaration, resolve_did or dids.resolve)
    except (versions.VersionDeclarationError, dids.DidError) as problem:
        raise ContinuationError(f"the version declaration does not verify: {problem}") from None
    if (claims["provider"], claims["dataset"], claims["version"], versions.pin(claims)) != \
            (continued.provider, continued.dataset, continued.version, continued.pin):
        raise ContinuationError("the continuation is not the one its provider's declaration declares")
    entry = continuations.dataset_entry(payload, continued.provider, continued.dataset)
    if entry is None:
        raise ContinuationError("the declared version is of a dataset the contract does not name")
    if continued.version <= entry["version"]:
        raise ContinuationError(f"version {continued.version} is not after the contract's version {entry['version']}")
    if run_id != continuations.run_id(payload["contract_id"], contract_digest, continued.provider, continued.dataset,
                                      continued.version):
        raise ContinuationError("this run is not the continued run of the declared version (its run id differs)")
    prefix = f"{storage_names.DATASETS}/{dids.did_name(continued.provider)}/{continued.dataset}/"
    if not continued.blob.startswith(prefix):
        raise ContinuationError("the declared version's package is not under its provider's dataset")
    return continued


def version_ref(ref: PackageRef, continued: continuations.Continuation) -> PackageRef:
    """The dataset's input swapped for its new version: same grant (data key), declared pin."""
    container, _, blob = continued.blob.partition("/")
    return replace(ref, container=container, blob=blob, pin=dict(continued.pin))
