"""Starting a run: exactly one per contract (its id and digest), once the contract and every
input are in.

Both the contract webhook and the input blob triggers call `start_run_if_ready`; events may
come in any order and more than once. The run record is created with a conditional write,
so only one caller starts the orchestration; a caller that finds the record but no
orchestration (its starter crashed in between) starts it under the same instance id.
"""
from __future__ import annotations

import asyncio
import logging

import azure.durable_functions as df
from azure.core.exceptions import ResourceNotFoundError

from shared import azure_clients, telemetry
from shared.contract import training
from shared.contract_store import ContractStore, contract_inputs, split_blob_path
from shared.run_records import RunRecords, run_id_for

log = logging.getLogger(__name__)

STARTER_GRACE_SECONDS = 15  # a claimed run with no orchestration after this: its starter died


def missing_inputs(payload: dict) -> list[str]:
    service = azure_clients.blob_service()
    missing = []
    for item in contract_inputs(payload):
        container, name = split_blob_path(item["blob"])
        try:
            service.get_blob_client(container, name).get_blob_properties()
        except ResourceNotFoundError:
            missing.append(item["blob"])
    return missing


def run_input(contract_record: dict) -> dict:
    payload = contract_record["payload"]
    return {"run_id": run_id_for(payload["contract_id"], contract_record["digest"]),
            "contract_id": payload["contract_id"], "contract_digest": contract_record["digest"],
            "deadline_seconds": int(training(payload)["deadline_seconds"])}


async def start_run_if_ready(client: df.DurableOrchestrationClient, contract_id: str, digest: str) -> dict:
    """Start the run of contract (contract_id, digest) if it is stored and complete; report
    what happened. Storage calls block, so they run in a worker thread (`asyncio.to_thread`),
    never on the event loop the Durable client shares."""
    with telemetry.run_context(contract_id=contract_id):
        claim = await asyncio.to_thread(_claim, contract_id, digest)
        if "answer" in claim:
            return claim["answer"]
        run = claim["run"]
        with telemetry.run_context(run):
            if not claim["created"]:
                status = await client.get_status(run["run_id"])
                if status is not None and status.runtime_status is not None:
                    return {"run_id": run["run_id"], "started": False, "reason": "run already exists"}
                records = RunRecords(azure_clients.blob_service())
                if not await asyncio.to_thread(records.is_stale, run["run_id"], STARTER_GRACE_SECONDS):
                    return {"run_id": run["run_id"], "started": False, "reason": "run is being started"}
            await client.start_new("ccr_run", run["run_id"], run)
            log.info("started run %s for contract %s", run["run_id"], contract_id)
            return {"run_id": run["run_id"], "started": True}


def _claim(contract_id: str, digest: str) -> dict:
    """The blocking part: the stored contract, its inputs, and the conditional create of the
    run record. `{"answer"}` when there is nothing to start, else `{"run", "created"}`."""
    service = azure_clients.blob_service()
    record = ContractStore(service).get(contract_id, digest)
    if record is None:
        return {"answer": {"contract_id": contract_id, "digest": digest, "started": False,
                           "reason": "no accepted contract yet"}}
    run = run_input(record)
    missing = missing_inputs(record["payload"])
    if missing:
        return {"answer": {"run_id": run["run_id"], "started": False, "waiting_for": missing}}
    return {"run": run, "created": RunRecords(service).create(run["run_id"], contract_id, digest)}
