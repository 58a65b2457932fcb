"""Starting an inference run: a requester's batch arrives in `inference-batches/`.

Claim: only a batch uploaded by a party the contract names in `workloads.inference.requesters`
starts anything, and each batch starts at most one run. The uploader is the party whose name
the path carries (a party's only storage credential is a one-blob SAS under its own name:
shared/party_sas.py); the contract is the accepted one whose digest the path carries. A run
starts only if
  - that contract has an inference workload and names the uploader as a requester,
  - the batch is a package under the requester's derived inference key for this contract
    (shared/inference_requests.py; its header only: no key is needed to read it), and
  - a training run of the contract kept its model state (the model the inference restores).
The run is named by (contract, digest, batch path) and its record is created with a conditional
write (orchestrations/admission.py `start_claimed`), so a batch announced twice runs once.
Anything else starts nothing: no record, no orchestration, no container group. The refusal is
recorded (`runs/inference-refusals/<sha256 of the path>.json`: the path and the reason, no
content) and logged, so the model owner and the operator see who tried.

Attacks stopped: a party the contract does not name submitting batches to query the model; a
batch under another key (refused before any run); the same batch announced again to run twice."""
from __future__ import annotations

import asyncio
import hashlib
import logging

import azure.durable_functions as df
from azure.core.exceptions import ResourceNotFoundError

from orchestrations import admission
from orchestrations.run_steps import package_head
from shared import azure_clients, inference_requests, storage_names
from shared import contract as contracts
from shared.contract_store import ContractStore, split_blob_path
from shared.json_blobs import JsonBlobs
from shared.package import PackageError, read_header
from shared.run_records import RunRecords, utc_now

log = logging.getLogger(__name__)
ORCHESTRATOR = "ccr_inference"


async def start_inference(client: df.DurableOrchestrationClient, blob_path: str) -> dict:
    """For an `inference-batches/` arrival: the inference run it starts, or why none."""
    claim = await asyncio.to_thread(_claim, blob_path)
    if "answer" in claim:
        return claim["answer"]
    return await admission.start_claimed(client, claim["run"], claim["created"], ORCHESTRATOR)


def refusals() -> JsonBlobs:
    return JsonBlobs(azure_clients.blob_service(), storage_names.RUNS)


def refusal_name(blob_path: str) -> str:
    return f"inference-refusals/{hashlib.sha256(blob_path.encode()).hexdigest()}.json"


def _refused(blob_path: str, reason: str) -> dict:
    answer = {"blob": blob_path, "started": False, "reason": f"{reason}: nothing started"}
    refusals().create(refusal_name(blob_path), {**answer, "at": utc_now()})
    log.warning("inference batch %s refused: %s", blob_path, reason)
    return {"answer": answer}


def _claim(blob_path: str) -> dict:
    parsed = inference_requests.parse_batch_path(blob_path)
    if parsed is None:
        return _refused(blob_path, "not an inference batch path (inference-batches/<party>/<contract digest>/<batch>.ccr)")
    party, digest, _ = parsed
    service = azure_clients.blob_service()
    store = ContractStore(service)
    keys = store.inferring(digest)
    if not keys:
        return _refused(blob_path, "no accepted contract with an inference workload has that digest")
    record = store.get(*keys[0])
    payload = record["payload"]
    requester = inference_requests.requester(payload, party)
    if requester is None:
        return _refused(blob_path, f"party {party} is not a requester the contract names")
    try:
        header = read_header(package_head(service.get_blob_client(*split_blob_path(blob_path))))
    except (PackageError, ResourceNotFoundError) as problem:
        return _refused(blob_path, f"not a valid package: {problem}")
    if header.key_id != inference_requests.key_id(payload["contract_id"], requester, inference_requests.INPUT):
        return _refused(blob_path, "the batch is not encrypted under the requester's inference key for this contract")
    model_run = latest_model_run(digest)
    if model_run is None:
        return _refused(blob_path, "no run of the contract has kept a trained model yet")
    run_id = inference_requests.run_id(payload["contract_id"], digest, blob_path)
    run = {"run_id": run_id, "contract_id": payload["contract_id"], "contract_digest": digest,
           "deadline_seconds": int(contracts.inference(payload)["deadline_seconds"]), "workload": "inference",
           "request": {"batch": blob_path, "requester": requester, "model_run_id": model_run}}
    created = RunRecords(service).create(run_id, payload["contract_id"], digest, workload="inference",
                                         requester=requester, batch=blob_path, model_run_id=model_run)
    return {"run": run, "created": created}


def latest_model_run(digest: str) -> str | None:
    """The training run of the contract that finished last with a kept model state, if any."""
    kept = [r for r in RunRecords(azure_clients.blob_service()).list()
            if r.get("contract_digest") == digest and r.get("workload") != "inference"
            and r.get("status") == "succeeded" and r.get("model_state_sha256")]
    return max(kept, key=lambda r: r["finished"])["run_id"] if kept else None
