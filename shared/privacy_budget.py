"""Privacy budget kept per dataset population across runs.

A dataset is identified by its provider's DID and its name (`shared.contract.dataset_identity`),
not by a file: the same people re-encrypted, or named by another contract, draw on the same
budget, and a contract naming another provider's file under its own DID charges its own.
Runs compose by basic sequential composition (epsilons and deltas add up): a conservative
bound that needs no accountant state.
"""
from __future__ import annotations

import hashlib

from azure.storage.blob import BlobServiceClient

from shared import storage_names
from shared.json_blobs import JsonBlobs


class PrivacyBudget:
    def __init__(self, service: BlobServiceClient):
        self._blobs = JsonBlobs(service, storage_names.RUNS)

    @staticmethod
    def _name(identity: str) -> str:
        return f"budget/{hashlib.sha256(identity.encode()).hexdigest()}.json"

    def runs(self, identity: str) -> dict[str, dict]:
        """Each run's entry (epsilon, delta, reserved or spent) against this population."""
        return (self._blobs.get(self._name(identity)) or {"runs": {}})["runs"]

    def of_run(self, identity: str, run_id: str) -> float:
        return self.runs(identity).get(run_id, {}).get("epsilon", 0.0)

    def spend(self, identity: str, run_id: str, epsilon: float, delta: float) -> None:
        """Replace this run's reservation by what it actually spent (idempotent per run)."""
        def mutate(ledger: dict) -> None:
            ledger["runs"][run_id] = {"epsilon": float(epsilon), "delta": float(delta), "state": "spent"}
        self._blobs.update(self._name(identity), mutate, default={"runs": {}})

    def reserve(self, identity: str, run_id: str, threshold: float, epsilon: float, delta: float) -> bool:
        """Reserve `epsilon` for this run if it still fits under `threshold`, atomically with
        respect to other runs reserving the same dataset (ETag-checked update)."""
        fits = {}

        def mutate(ledger: dict) -> None:
            others = sum(e["epsilon"] for rid, e in ledger["runs"].items() if rid != run_id)
            fits["ok"] = others + epsilon <= threshold + 1e-12
            if fits["ok"]:
                ledger["runs"][run_id] = {"epsilon": float(epsilon), "delta": float(delta), "state": "reserved"}
        self._blobs.update(self._name(identity), mutate, default={"runs": {}})
        return fits["ok"]

    def release(self, identity: str, run_id: str) -> None:
        """Give back a reservation of a run that never touched the data."""
        def mutate(ledger: dict) -> None:
            ledger["runs"].pop(run_id, None)
        self._blobs.update(self._name(identity), mutate, default={"runs": {}})
