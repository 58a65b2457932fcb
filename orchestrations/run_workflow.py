"""The clean-room run: validate the data, import the keys (gather every party's grant to this
contract), reserve the privacy budget, spin up the confidential trainer, wait, clean up,
notify the TDC. A continued run (shared/continuation.py) first waits for the run it continues
from to keep its model state.

"Import keys" is the parties' own act: each one grants its data key to this contract when it
signs (shared/key_grants.py), because a key the control plane could import for any contract
would protect nothing against a dishonest control plane or party. The step stays here as
`gather_key_grants`: nothing is reserved or deployed until every grant is in place and pins
this contract's trainer group.

Deterministic orchestrator code only: every side effect happens in an activity
(`orchestrations/activities.py`). Custom status always names the current phase so the
status API and the Durable management API show where a run is.
"""
from __future__ import annotations

from datetime import timedelta

import azure.durable_functions as df

bp = df.Blueprint()

TRAINER_FINISHED_EVENT = "TrainerFinished"
RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=1000, max_number_of_attempts=3)
# Telling the TDC: an unreachable webhook is retried by the host with durable timers between
# attempts (the SDK's RetryOptions has no back-off coefficient: a fixed interval).
NOTICE_RETRY = df.RetryOptions(first_retry_interval_in_milliseconds=5000, max_number_of_attempts=4)
NOTICE_CHANNELS = ("event", "webhook")
PREVIOUS_POLL_SECONDS = 5  # a continued run asks this often whether the run before it kept its model


def _status(context: df.DurableOrchestrationContext, phase: str, **extra) -> None:
    context.set_custom_status({"phase": phase, **extra})


@bp.orchestration_trigger(context_name="context")
def ccr_run(context: df.DurableOrchestrationContext):
    """One run of one contract; its instance id is the run id derived from the contract."""
    run = context.get_input()
    progress = {"phase": "validating", "deployed": False}
    try:
        outcome = yield from _run_steps(context, run, progress)
    except Exception as error:  # an activity failed after its retries
        outcome = {"status": "failed", "phase": progress["phase"], "reason": safe_reason(error)}
    return (yield from _finish(context, run, outcome, progress["deployed"]))


def _run_steps(context, run: dict, progress: dict):
    """Validate, gather grants, reserve, deploy, wait; returns the outcome, raises if an
    activity fails."""
    def enter(phase: str, **extra):
        progress["phase"] = phase
        _status(context, phase, **extra)

    if run.get("continuation"):  # a continued run starts from the model its previous run keeps
        enter("waiting_for_previous_model")
        previous = yield from _wait_for_previous_model(context, run)
        if not previous["kept"]:
            return _refused("waiting_for_previous_model", previous["reason"])

    enter("validating")
    validation = yield context.call_activity_with_retry("validate_inputs", RETRY, run)
    if not validation["ok"]:
        return _refused("validating", validation["reason"])

    enter("gathering_key_grants")
    grants = yield context.call_activity_with_retry("gather_key_grants", RETRY, run)
    if not grants["ok"]:
        return _refused("gathering_key_grants", grants["reason"])

    enter("reserving_budget")
    budget = yield context.call_activity_with_retry("reserve_privacy_budget", RETRY, run)
    if not budget["ok"]:
        return _refused("reserving_budget", budget["reason"])

    enter("deploying")
    progress["deployed"] = True  # from here on, cleanup must always try to delete the group
    # The run's nonce, drawn now (deterministically under replay): only the trainer deployed
    # with it can sign an outcome the control plane believes.
    run = {**run, "nonce": str(context.new_uuid())}
    deployment = yield context.call_activity_with_retry("deploy_trainer", RETRY, run)
    if not deployment["ok"]:
        return _refused("deploying", deployment["reason"])

    enter("training", container_group=deployment["container_group"])
    outcome = yield from wait_for_attested_outcome(context, run, "verify_trainer_outcome")
    if outcome is None:
        return {"status": "failed", "phase": "training",
                "reason": f"deadline of {run['deadline_seconds']} s passed before the trainer finished"}
    return _trainer_outcome(outcome)


def wait_for_attested_outcome(context, run: dict, verifier: str):
    """The outcome the group deployed for `run` attested (each completion event checked by the
    activity `verifier`), or None once the run's deadline passed: events that do not prove
    themselves are ignored, and the wait goes on."""
    timer = context.create_timer(context.current_utc_datetime + timedelta(seconds=run["deadline_seconds"]))
    while True:
        finished = context.wait_for_external_event(TRAINER_FINISHED_EVENT)
        winner = yield context.task_any([finished, timer])
        if winner != finished:
            return None
        verdict = yield context.call_activity_with_retry(verifier, RETRY, {"run": run, "event": finished.result})
        if verdict["ok"]:
            timer.cancel()
            return verdict["outcome"]


def _wait_for_previous_model(context, run: dict):
    """Until the previous run has kept its model state (asked every PREVIOUS_POLL_SECONDS on a
    durable timer), it finished without one, or the run's deadline passed."""
    deadline = context.current_utc_datetime + timedelta(seconds=run["deadline_seconds"])
    while True:
        previous = yield context.call_activity_with_retry("previous_model_state", RETRY, run)
        if previous["kept"]:
            return previous
        if previous["finished"]:
            return {"kept": False, "reason": "the run it continues from kept no model state"}
        if context.current_utc_datetime >= deadline:
            return {"kept": False, "reason": "the run it continues from did not finish before this run's deadline"}
        yield context.create_timer(context.current_utc_datetime + timedelta(seconds=PREVIOUS_POLL_SECONDS))


def _finish(context, run: dict, outcome: dict, deployed: bool):
    """Cleanup, the recorded outcome and the TDC's notice, whatever the outcome: never leave a
    container group."""
    if deployed:
        _status(context, "cleaning_up")
        yield context.call_activity_with_retry("clean_up_trainer", RETRY, run)
    _status(context, "notifying")
    summary = yield context.call_activity_with_retry(
        "finish_run", RETRY, {"run": run, "outcome": outcome})
    yield from _notify_tdc(context, run, summary)
    _status(context, "finished", status=summary["status"])
    return summary


def _notify_tdc(context, run: dict, summary: dict):
    """Each channel retried by the host; one that still fails is recorded, never the run's
    outcome."""
    delivery = {}
    for channel in NOTICE_CHANNELS:
        try:
            delivery[channel] = yield context.call_activity_with_retry(
                "notify_tdc", NOTICE_RETRY, {"run": run, "summary": summary, "channel": channel})
        except Exception as error:  # every attempt failed
            delivery[channel] = {"delivered": False, "attempts": NOTICE_RETRY.max_number_of_attempts,
                                 "reason": safe_reason(error)}
    yield context.call_activity_with_retry("record_notification", RETRY,
                                           {"run": run, "delivery": delivery})


def _refused(phase: str, reason: str) -> dict:
    """A run stopped before any trainer ran: no data was touched."""
    return {"status": "failed", "phase": phase, "reason": reason, "data_untouched": True}


def _trainer_outcome(outcome: dict) -> dict:
    """The attested outcome as the run's: budget figures come only from here."""
    if outcome["status"] == "succeeded":
        return {"status": "succeeded", "phase": "training",
                "output_blob": outcome.get("output_blob"), "output_blake3": outcome.get("output_blake3"),
                "metrics": outcome.get("metrics_summary"), "privacy": outcome.get("privacy"),
                **{k: outcome[k] for k in ("model_state_sha256", "previous_model_sha256") if k in outcome}}
    reason = f"trainer failed: {outcome.get('error_class', 'UnknownError')}: {outcome.get('message', '')}"[:500]
    return {"status": "failed", "phase": "training", "reason": reason, "data_untouched": not outcome["data_read"]}


def safe_reason(error: Exception) -> str:
    """Activity errors reach us as text; keep only the first line, bounded."""
    text = str(error).split("$OutOfProcData$")[0].strip().splitlines()
    return (text[0] if text else type(error).__name__)[:500]
