"""A continued run: which new dataset version it trains on, and from which earlier run's model.

Claim: a continued run is named by its contract and the dataset version it trains on
(`run_id`), so a version's arrival starts at most one run per contract however often it is
announced, and the trainer, which recomputes the name, can tell from its own run id which
version it was deployed for. Every other field is checked where it is used: the declaration
by its provider's signature (admission, the budget rule, the trainer), the package by its
manifest against the declaration's pin and its header against the contract's data key (the
version must be encrypted under the key its provider already granted to this contract), the
previous state by the contract's state key (shared/model_states.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

from shared import contract as contracts
from shared.contract_store import contract_inputs


@dataclass(frozen=True)
class Continuation:
    provider: str                  # the dataset's provider DID
    dataset: str                   # the dataset's name in the contract
    version: int                   # the declared version trained on
    blob: str                      # `datasets/...` path of that version's package
    pin: dict                      # its commitment, as the declaration pins it ({"blake3": hex})
    declaration: str               # the provider's version declaration (compact JWS)
    previous_run_id: str           # the run whose kept model state this one starts from
    populations: tuple[str, ...]   # whose budgets it is charged to (shared/version_budget.py)

    def to_dict(self) -> dict:
        return {**asdict(self), "populations": list(self.populations)}

    @classmethod
    def from_dict(cls, value: dict) -> "Continuation":
        return cls(**{**value, "populations": tuple(value["populations"])})


def run_id(contract_id: str, contract_digest: str, provider: str, dataset: str, version: int) -> str:
    """The one continued run of this contract on this version of this dataset."""
    identity = f"{contract_id}@{contract_digest}#{provider}/{dataset}@v{version}"
    return "run-" + hashlib.sha256(identity.encode()).hexdigest()[:16]


def dataset_entry(payload: dict, provider: str, dataset: str) -> dict | None:
    """The contract's entry of that provider's dataset, if it names one."""
    return next((entry for did, entry in contracts.datasets(payload) if (did, entry["name"]) == (provider, dataset)),
                None)


def run_inputs(payload: dict, continuation: Continuation | None) -> list[dict]:
    """The packages a run reads: the contract's, with the continued dataset's package swapped for
    its new version's (same data key, the declared commitment)."""
    inputs = contract_inputs(payload)
    if continuation is None:
        return inputs
    entry = dataset_entry(payload, continuation.provider, continuation.dataset)
    swapped = {"kind": "dataset", "name": continuation.dataset, "blob": continuation.blob,
               "key_id": entry["key_id"], **continuation.pin}
    return [swapped if item.get("kind") == "dataset" and item["blob"] == entry["blob"] else item for item in inputs]


def of_run(run: dict) -> Continuation | None:
    return Continuation.from_dict(run["continuation"]) if run.get("continuation") else None
