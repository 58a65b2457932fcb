"""A party sees only the runs of contracts it is a party of.

Claim: the status API shows a run (its record, or its line in the list) to an authenticated
party only when that party's DID is the TDC or a TDP of the run's contract; a run's output is
for its TDC alone (`tdc_of_run`, used by `shared.party_sas`). Attack stopped: a party, or an outsider
with a DID, learning which contracts other parties run, when, with which outcome and budget.
Another party's run answers exactly like a run that does not exist, so an id cannot be probed.
"""
from __future__ import annotations

from azure.storage.blob import BlobServiceClient

from shared import contract as contracts
from shared.contract_store import ContractStore
from shared.run_records import RunRecords


class PartyRuns:
    """Run records as one party may see them (contracts are read once per call)."""

    def __init__(self, service: BlobServiceClient):
        self._runs = RunRecords(service)
        self._contracts = ContractStore(service)
        self._payloads: dict[tuple[str, str], dict | None] = {}

    def _payload(self, record: dict) -> dict | None:
        """The payload of the run's contract: its id *and* digest (a contract's identity)."""
        contract_id, digest = record.get("contract_id"), record.get("contract_digest")
        if not isinstance(contract_id, str) or not isinstance(digest, str):
            return None
        if (contract_id, digest) not in self._payloads:
            stored = self._contracts.get(contract_id, digest)
            self._payloads[contract_id, digest] = stored["payload"] if stored else None
        return self._payloads[contract_id, digest]

    def parties(self, record: dict) -> list[str]:
        payload = self._payload(record)
        return contracts.parties(payload) if payload else []

    def tdc(self, record: dict) -> str | None:
        payload = self._payload(record)
        return payload["tdc"]["did"] if payload else None

    def list_for(self, did: str) -> list[dict]:
        """Records of every run of a contract `did` is a party of."""
        return [record for record in self._runs.list() if did in self.parties(record)]

    def get_for(self, did: str, run_id: str) -> dict | None:
        """The record, or None when there is no such run *or* `did` is not a party of it."""
        record = self._runs.get(run_id)
        return record if record is not None and did in self.parties(record) else None

    def tdc_of_run(self, run_id: str) -> str | None:
        """The DID of the TDC of a run's contract (the one party its output is for)."""
        record = self._runs.get(run_id)
        return self.tdc(record) if record is not None else None
