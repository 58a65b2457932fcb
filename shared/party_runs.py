"""A party sees only the runs of contracts it is a party of.

Claim: the status API shows a run (its record, or its line in the list) to an authenticated
party only when that party's DID is the TDC or a TDP of the run's contract; a run's output is
for its TDC alone (`tdc_of_run`, used by `shared.party_sas`), an inference run's predictions for
its requester alone (`requester_of_run`); every party of the contract sees each inference run's
record (who asked, how many rows), which is what makes many queries visible. Attack stopped: a party, or an outsider
with a DID, learning which contracts other parties run, when, with which outcome and budget.
Another party's run answers exactly like a run that does not exist, so an id cannot be probed.
"""
from __future__ import annotations

import base64

from azure.storage.blob import BlobServiceClient

from shared import contract as contracts
from shared.contract_store import ContractStore, contract_inputs, split_blob_path
from shared.run_records import RunRecords, run_id_for


RUN_SUMMARY = ("run_id", "contract_id", "status", "phase", "created", "finished", "container_group",
               "output_blob", "privacy_budget_spent", "workload", "requester", "rows")


class PartyRuns:
    """Run records as one party may see them (contracts are read once per call)."""

    def __init__(self, service: BlobServiceClient):
        self._service = service
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

    def requester_of_run(self, run_id: str) -> str | None:
        """The requester of an inference run (the one party its predictions are for), else None."""
        record = self._runs.get(run_id)
        return record.get("requester") if record is not None and record.get("workload") == "inference" else None

    def contract_status(self, did: str, contract_id: str, digest: str) -> dict | None:
        """An accepted contract as a party of it sees it: who signed, which inputs have arrived
        and which are missing, and its run. None when the contract is not accepted *or* `did`
        is not a party of it (answered alike, so nobody probes another's contracts). Input
        presence is of blobs the contract names, which every party of it signed."""
        stored = self._contracts.get(contract_id, digest)
        if stored is None or did not in contracts.parties(stored["payload"]):
            return None
        payload = stored["payload"]
        try:
            signers = contracts.envelope_signers(base64.b64decode(stored["envelope"]))[1]
        except (ValueError, contracts.ContractError):
            signers = []
        owners = {dataset["blob"]: tdp["did"] for tdp in payload["tdps"] for dataset in tdp["datasets"]}
        inputs = []
        for item in contract_inputs(payload):
            container, name = split_blob_path(item["blob"])
            present = self._service.get_blob_client(container, name).exists()
            inputs.append({"kind": item["kind"], "name": item["name"], "blob": item["blob"],
                           "party": owners.get(item["blob"], payload["tdc"]["did"]), "present": present})
        run_id = run_id_for(contract_id, digest)
        run = self._runs.get(run_id)
        return {"contract_id": contract_id, "digest": digest, "accepted": stored.get("accepted"),
                "ledger_seqno": stored.get("seqno"), "parties": contracts.parties(payload), "signers": signers,
                "inputs": inputs, "missing": [item["blob"] for item in inputs if not item["present"]],
                "run_id": run_id, "run": {key: run.get(key) for key in (*RUN_SUMMARY, "reason")} if run else None}
