"""What the live run page shows a party: its accepted contracts and the runs of those contracts
with phases, timestamps, the trainer's progress and the outcome. The same rule as the status
API (shared/party_runs.py): only contracts the party is a party of, and their runs; the run
fields are the status API's (public parameters, charged DP figures, ids and locations)."""
from __future__ import annotations

from azure.storage.blob import BlobServiceClient

from shared import contract as contracts
from shared import storage_names
from shared.json_blobs import JsonBlobs
from shared.party_runs import PartyRuns

RUN_FIELDS = ("run_id", "contract_id", "status", "phase", "phases", "created", "finished", "progress",
              "failed_phase", "reason", "output_blob", "privacy_budget_spent")


def overview(service: BlobServiceClient, did: str) -> dict:
    own = []
    for name, record in JsonBlobs(service, storage_names.CONTRACTS).list():
        if name.startswith("inputs/") or not isinstance(record, dict) or "payload" not in record:
            continue
        payload = record["payload"]
        parties = contracts.parties(payload)
        if did not in parties:
            continue
        role = "tdc" if payload["tdc"]["did"] == did else "tdp"
        own.append({"contract_id": record.get("contract_id"), "digest": record.get("digest"),
                    "accepted": record.get("accepted"), "role": role, "purpose": payload.get("purpose"),
                    "parties": len(parties)})
    own.sort(key=lambda c: c.get("accepted") or "", reverse=True)
    runs = PartyRuns(service).list_for(did)
    runs.sort(key=lambda r: r.get("created") or "", reverse=True)
    return {"party": did, "contracts": own, "runs": [{k: r.get(k) for k in RUN_FIELDS} for r in runs]}
