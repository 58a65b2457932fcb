"""The run record: what the status API shows about a run (phases with timestamps, container
group, the trainer's attested progress, outcome, output location, privacy budget spent). Never
holds data, keys or tokens. The run's nonce is kept beside it (`nonces/`), never in it: the
status API shows the whole record to every party of the run."""
from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from azure.storage.blob import BlobServiceClient

from shared import storage_names
from shared.json_blobs import JsonBlobs


def run_id_for(contract_id: str, digest: str) -> str:
    """One run per contract, whatever the order or repetition of the events that start it. A
    contract is its id and its digest: another contract under the same id gets another run."""
    if not isinstance(digest, str) or len(digest) != 64:
        raise ValueError("run_id_for needs the contract's digest (64 hex digits)")
    return "run-" + hashlib.sha256(f"{contract_id}@{digest}".encode()).hexdigest()[:16]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class RunRecords:
    def __init__(self, service: BlobServiceClient):
        self._blobs = JsonBlobs(service, storage_names.RUNS)

    @staticmethod
    def _name(run_id: str) -> str:
        return f"records/{run_id}.json"

    def create(self, run_id: str, contract_id: str, contract_digest: str, **fields) -> bool:
        """The run's record, once (conditional write): False if it exists. `fields` say more
        about the run (an inference run: its workload, requester and batch)."""
        return self._blobs.create(self._name(run_id), {
            **fields, "run_id": run_id, "contract_id": contract_id, "contract_digest": contract_digest,
            "status": "pending", "phase": "admitted", "created": utc_now(), "phases": {}})

    def get(self, run_id: str) -> dict | None:
        return self._blobs.get(self._name(run_id))

    def keep_nonce(self, run_id: str, nonce: str) -> None:
        """The nonce the run's trainer is deployed with (to check its progress events)."""
        self._blobs.update(f"nonces/{run_id}.json", lambda doc: doc.update(nonce=nonce), default={})

    def nonce(self, run_id: str) -> str | None:
        doc = self._blobs.get(f"nonces/{run_id}.json")
        return doc.get("nonce") if doc else None

    def record_progress(self, run_id: str, progress: dict) -> bool:
        """Record the trainer's attested `progress` (epoch, epochs, epsilon_spent) if its epoch is
        higher than the recorded one and the run has not finished; True when recorded."""
        recorded = []

        def mutate(record: dict) -> None:
            recorded.clear()
            if record.get("finished") or (record.get("progress") or {}).get("epoch", 0) >= progress["epoch"]:
                return
            record["progress"] = {**progress, "at": utc_now()}
            recorded.append(True)
        if self.get(run_id) is None:
            return False
        self._blobs.update(self._name(run_id), mutate)
        return bool(recorded)

    def list(self) -> list[dict]:
        return [doc for _, doc in self._blobs.list("records/")]

    def enter_phase(self, run_id: str, phase: str, **fields) -> dict:
        """Close the current phase and open `phase` (timestamps in UTC). A pending run is
        `running` from its first phase until `finish` records its outcome."""
        def mutate(record: dict) -> None:
            now = utc_now()
            if record.get("status") == "pending":
                record["status"] = "running"
            current = record["phases"].get(record.get("phase"))
            if current is not None and "ended" not in current:
                current["ended"] = now
            record["phases"].setdefault(phase, {"started": now})
            record["phase"] = phase
            record.update(fields)
        return self._blobs.update(self._name(run_id), mutate)

    def finish(self, run_id: str, fields: dict) -> dict:
        def mutate(record: dict) -> None:
            now = utc_now()
            current = record["phases"].get(record.get("phase"))
            if current is not None and "ended" not in current:
                current["ended"] = now
            record["phase"] = "finished"
            record["finished"] = record.get("finished") or now
            record.update(fields)
        return self._blobs.update(self._name(run_id), mutate)
