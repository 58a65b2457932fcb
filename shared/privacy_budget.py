"""Privacy budget kept per dataset across runs.

A dataset is identified by its plaintext digest, so the same table reused in another
contract draws on the same budget. Runs compose by basic sequential composition
(epsilons and deltas add up): a conservative bound that needs no accountant state.
"""
from __future__ import annotations

from azure.storage.blob import BlobServiceClient

from shared import storage_names
from shared.json_blobs import JsonBlobs


class PrivacyBudget:
    def __init__(self, service: BlobServiceClient):
        self._blobs = JsonBlobs(service, storage_names.RUNS)

    @staticmethod
    def _name(dataset_sha256: str) -> str:
        return f"budget/{dataset_sha256}.json"

    def spent(self, dataset_sha256: str) -> float:
        return self.spent_excluding(dataset_sha256, run_id=None)

    def spent_excluding(self, dataset_sha256: str, run_id: str | None) -> float:
        """Epsilon spent or reserved by every run but `run_id` (a retried admission)."""
        ledger = self._blobs.get(self._name(dataset_sha256)) or {"runs": {}}
        return sum(entry["epsilon"] for rid, entry in ledger["runs"].items() if rid != run_id)

    def of_run(self, dataset_sha256: str, run_id: str) -> float:
        ledger = self._blobs.get(self._name(dataset_sha256)) or {"runs": {}}
        return ledger["runs"].get(run_id, {}).get("epsilon", 0.0)

    def remaining(self, dataset_sha256: str, threshold: float, run_id: str | None = None) -> float:
        return max(0.0, threshold - self.spent_excluding(dataset_sha256, run_id))

    def record(self, dataset_sha256: str, run_id: str, epsilon: float, delta: float,
               state: str) -> None:
        """Set this run's entry (`reserved` at admission, `spent` after training).
        Idempotent per run: a retried activity does not spend the budget twice."""
        def mutate(ledger: dict) -> None:
            ledger["runs"][run_id] = {"epsilon": float(epsilon), "delta": float(delta), "state": state}
        self._blobs.update(self._name(dataset_sha256), mutate, default={"runs": {}})

    def release(self, dataset_sha256: str, run_id: str) -> None:
        """Give back a reservation of a run that never touched the data."""
        def mutate(ledger: dict) -> None:
            ledger["runs"].pop(run_id, None)
        self._blobs.update(self._name(dataset_sha256), mutate, default={"runs": {}})
