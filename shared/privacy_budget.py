"""Privacy budget kept per dataset population across runs.

A dataset is identified by its provider's DID and its name (`shared.contract.dataset_identity`),
not by a file: the same people re-encrypted, or named by another contract, draw on the same
budget, and a contract naming another provider's file under its own DID charges its own.
Runs compose by basic sequential composition (epsilons and deltas add up): a conservative
bound that needs no accountant state. The lifetime (epsilon, delta) is the provider's signed
declaration (`shared.budget_declaration`): the first one a run brings is pinned here, and a run
bringing another (a provider or anyone else trying a larger budget) is refused. A run on a new
dataset version draws on the populations shared/version_budget.py names for it (`reserve_each`).
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

    def declaration(self, identity: str) -> dict | None:
        """The declaration pinned for this population ({"digest", "epsilon", "delta"}), if any run reserved."""
        return (self._blobs.get(self._name(identity)) or {}).get("declaration")

    def reserve(self, identity: str, run_id: str, declared: dict, epsilon: float, delta: float) -> str | None:
        """Reserve (`epsilon`, `delta`) for this run if, with every other run's, they fit in the
        declared lifetime budget (`declared`: {"digest", "epsilon", "delta"}), atomically with
        respect to other runs reserving the same population (ETag-checked update). None when
        reserved, else why not (a count-free sentence)."""
        refusal = {}

        def mutate(ledger: dict) -> None:
            pinned = ledger.setdefault("declaration", dict(declared))
            others = [e for rid, e in ledger["runs"].items() if rid != run_id]
            if pinned["digest"] != declared["digest"]:
                refusal["why"] = (f"refused: another lifetime budget was declared for it before (epsilon {pinned['epsilon']}, "
                                  f"delta {pinned['delta']}); a budget is declared once")
            elif sum(e["epsilon"] for e in others) + epsilon > pinned["epsilon"] + 1e-12:
                refusal["why"] = f"exhausted: epsilon {epsilon} does not fit in what is left of {pinned['epsilon']}"
            elif sum(e.get("delta", 0.0) for e in others) + delta > pinned["delta"] * (1 + 1e-9):
                refusal["why"] = f"exhausted: delta {delta} does not fit in what is left of {pinned['delta']}"
            else:
                refusal.pop("why", None)
                ledger["runs"][run_id] = {"epsilon": float(epsilon), "delta": float(delta), "state": "reserved"}
        self._blobs.update(self._name(identity), mutate, default={"runs": {}})
        return refusal.get("why")

    def reserve_each(self, identities: tuple[str, ...], run_id: str, declared: dict, epsilon: float,
                     delta: float) -> str | None:
        """`reserve` on every population a run draws on (a new dataset version's, from
        shared/version_budget.py), all or none: a refusal by one gives back the others. None when
        reserved, else which population refused and why."""
        for done, identity in enumerate(identities):
            why = self.reserve(identity, run_id, declared, epsilon, delta)
            if why is not None:
                for reserved in identities[:done]:
                    self.release(reserved, run_id)
                return f"{identity}: {why}"
        return None

    def release(self, identity: str, run_id: str) -> None:
        """Give back a reservation of a run that never touched the data."""
        def mutate(ledger: dict) -> None:
            ledger["runs"].pop(run_id, None)
        self._blobs.update(self._name(identity), mutate, default={"runs": {}})
