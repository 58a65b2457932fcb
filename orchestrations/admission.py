"""Starting a run: exactly one per contract (its id and digest), once the contract and every
input are in.

Both the contract webhook and the input blob triggers call `start_run_if_ready`; events may
come in any order and more than once. The run record is created with a conditional write,
so only one caller starts the orchestration.

Recovery, with only what Azure offers (a conditional blob write, get_status, start_new under
a fixed instance id, which Durable refuses while that instance is pending or running): a
caller that finds the record but no orchestration waits until the record is older than the
starter's grace (CCR_ADMISSION_GRACE_SECONDS, 15), looks again, and starts the orchestration
itself if there still is none; a start refused because the instance appeared meanwhile is
"run already exists". So a starter killed after writing the record loses nothing once any
event for the contract comes again (the ledger redelivers, an upload), and that event is
never answered "being started" and dropped. The steps carry fault points
(shared/fault_points.py: admission.after_record, admission.after_start).
"""
from __future__ import annotations

import asyncio
import logging
import os
from datetime import datetime, timezone

import azure.durable_functions as df
from azure.core.exceptions import ResourceNotFoundError

from shared import azure_clients, fault_points, telemetry
from shared.contract import training
from shared.contract_store import ContractStore, contract_inputs, split_blob_path
from shared.run_records import RunRecords, run_id_for

log = logging.getLogger(__name__)

STARTER_GRACE_SECONDS = 15  # a claimed run with no orchestration after this: its starter died


def starter_grace_seconds() -> float:
    return float(os.environ.get("CCR_ADMISSION_GRACE_SECONDS", STARTER_GRACE_SECONDS))


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
        return await start_claimed(client, claim["run"], claim["created"])


async def start_claimed(client: df.DurableOrchestrationClient, run: dict, created: bool,
                        orchestrator: str = "ccr_run") -> dict:
    """Start the orchestration of a run whose record exists (`created`: this caller wrote it),
    unless it exists or appears within its starter's grace; report what happened. Continued
    runs (orchestrations/continued_admission.py) and inference runs (`orchestrator`
    "ccr_inference": orchestrations/inference_admission.py) are started the same way."""
    with telemetry.run_context(run):
        exists = {"run_id": run["run_id"], "started": False, "reason": "run already exists"}
        if created:
            fault_points.reached("admission.after_record")
        else:
            # claimed, not started: its starter is still at it, or died; wait out its grace
            if await _appears_within_grace(client, run["run_id"]):
                return exists
            log.warning("run %s was claimed but never started: starting it", run["run_id"])
        try:
            await client.start_new(orchestrator, run["run_id"], run)
        except Exception:
            if await _orchestration_exists(client, run["run_id"]):
                return exists  # another caller started it meanwhile
            raise
        fault_points.reached("admission.after_start")
        log.info("started run %s for contract %s", run["run_id"], run["contract_id"])
        return {"run_id": run["run_id"], "started": True}


async def _orchestration_exists(client: df.DurableOrchestrationClient, run_id: str) -> bool:
    status = await client.get_status(run_id)
    return status is not None and status.runtime_status is not None


async def _appears_within_grace(client: df.DurableOrchestrationClient, run_id: str) -> bool:
    """Whether the run's orchestration exists now or appears before its starter's grace ends."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + await asyncio.to_thread(_grace_left, run_id)
    while True:
        if await _orchestration_exists(client, run_id):
            return True
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(min(0.5, max(0.0, deadline - loop.time())))


def _grace_left(run_id: str) -> float:
    """Seconds until the run record is older than the starter's grace (0 if it already is)."""
    record = RunRecords(azure_clients.blob_service()).get(run_id)
    if record is None:
        return 0.0
    age = (datetime.now(timezone.utc) - datetime.fromisoformat(record["created"])).total_seconds()
    return max(0.0, starter_grace_seconds() - age)


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
