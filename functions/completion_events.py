"""Event Grid trigger: the trainer's completion event, raised to its run's orchestration, which
believes it only once `verify_trainer_outcome` has checked its attestation; and the trainer's
per-epoch progress, recorded on the run record once it proves itself the same way
(`run_steps.record_trainer_progress`)."""
from __future__ import annotations

import asyncio
import logging

import azure.durable_functions as df
import azure.functions as func

from orchestrations.run_steps import record_trainer_progress
from orchestrations.run_workflow import TRAINER_FINISHED_EVENT
from shared import events, telemetry

bp = df.Blueprint()
log = logging.getLogger(__name__)

# What the orchestration needs to judge the claim: the attestation token and the signed outcome
# (shared/attested_outcome.py). Nothing else in the event is believed.
_FIELDS = ("run_id", "status", "attestation", "outcome")
_PROGRESS_FIELDS = ("run_id", "attestation", "progress")
MAX_FIELD_CHARS = 32 * 1024


@bp.event_grid_trigger(arg_name="event")
@bp.durable_client_input(client_name="client")
async def trainer_finished(event: func.EventGridEvent, client: df.DurableOrchestrationClient) -> None:
    if event.event_type == events.TRAINER_PROGRESS:
        await _progress(event)
        return
    if event.event_type not in (events.TRAINER_COMPLETED, events.TRAINER_FAILED):
        log.info("ignoring event of type %s", event.event_type)
        return
    data = event.get_json() or {}
    run_id = data.get("run_id")
    if not isinstance(run_id, str) or not run_id.startswith("run-"):
        log.warning("completion event %s without a valid run id; ignored", event.id)
        return
    with telemetry.run_context(run_id=run_id):
        status = await client.get_status(run_id)
        if status is None or status.runtime_status is None:
            log.warning("completion event for unknown run %s; ignored", run_id)
            return
        claim = {k: data.get(k) for k in _FIELDS if isinstance(data.get(k), str) and len(data[k]) <= MAX_FIELD_CHARS}
        await client.raise_event(run_id, TRAINER_FINISHED_EVENT, claim)
        log.info("completion event (%s) raised to run %s", event.event_type, run_id)


async def _progress(event: func.EventGridEvent) -> None:
    data = event.get_json()
    data = data if isinstance(data, dict) else {}
    claim = {k: data[k] for k in _PROGRESS_FIELDS if isinstance(data.get(k), str) and len(data[k]) <= MAX_FIELD_CHARS}
    run_id = claim.get("run_id") if str(claim.get("run_id", "")).startswith("run-") else None
    with telemetry.run_context(run_id=run_id):
        # blocking checks (storage, the attestation authority's keys) off the host's event loop
        recorded = await asyncio.to_thread(record_trainer_progress, claim)
        log.info("progress event %s", "recorded" if recorded else "not recorded")
