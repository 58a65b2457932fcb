"""Event Grid trigger: the trainer's completion event, raised to its run's orchestration, which
believes it only once `verify_trainer_outcome` has checked its attestation."""
from __future__ import annotations

import logging

import azure.durable_functions as df
import azure.functions as func

from orchestrations.run_workflow import TRAINER_FINISHED_EVENT
from shared import events, telemetry

bp = df.Blueprint()
log = logging.getLogger(__name__)

# What the orchestration needs to judge the claim: the attestation token and the signed outcome
# (shared/attested_outcome.py). Nothing else in the event is believed.
_FIELDS = ("run_id", "status", "attestation", "outcome")
MAX_FIELD_CHARS = 32 * 1024


@bp.event_grid_trigger(arg_name="event")
@bp.durable_client_input(client_name="client")
async def trainer_finished(event: func.EventGridEvent, client: df.DurableOrchestrationClient) -> None:
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
