"""The inference run: gather the requester's grants, spin up the confidential inference group,
wait for its attested outcome, clean up, record the run, tell the requester.

Started by a requester's batch (orchestrations/inference_admission.py); its instance id is the
inference run id. Nothing is reserved: predictions of the requester's own rows spend no privacy
budget (docs/TRUST_CHAIN.md section 12). Deterministic orchestrator code only; every side effect
is an activity below, each recording its phase on the run record."""
from __future__ import annotations

import azure.durable_functions as df

from orchestrations import inference_steps, tdc_notice
from orchestrations.activities import activity_step, deploy_group, run_records
from orchestrations.run_workflow import NOTICE_RETRY, RETRY, safe_reason, wait_for_attested_outcome

bp = df.Blueprint()


@bp.orchestration_trigger(context_name="context")
def ccr_inference(context: df.DurableOrchestrationContext):
    run = context.get_input()
    progress = {"phase": "gathering_key_grants", "deployed": False}
    try:
        outcome = yield from _steps(context, run, progress)
    except Exception as error:  # an activity failed after its retries
        outcome = {"status": "failed", "phase": progress["phase"], "reason": safe_reason(error)}
    if progress["deployed"]:
        context.set_custom_status({"phase": "cleaning_up"})
        yield context.call_activity_with_retry("clean_up_trainer", RETRY, run)
    context.set_custom_status({"phase": "notifying"})
    summary = yield context.call_activity_with_retry("finish_inference", RETRY, {"run": run, "outcome": outcome})
    try:
        yield context.call_activity_with_retry("notify_requester", NOTICE_RETRY, {"run": run, "summary": summary})
    except Exception:  # recorded by the attempts' logs; never the run's outcome
        pass
    context.set_custom_status({"phase": "finished", "status": summary["status"]})
    return summary


def _steps(context, run: dict, progress: dict):
    def enter(phase: str, **extra):
        progress["phase"] = phase
        context.set_custom_status({"phase": phase, **extra})

    enter("gathering_key_grants")
    grants = yield context.call_activity_with_retry("gather_inference_grants", RETRY, run)
    if not grants["ok"]:
        return {"status": "failed", "phase": "gathering_key_grants", "reason": grants["reason"]}
    enter("deploying")
    progress["deployed"] = True
    run.update(nonce=str(context.new_uuid()))  # only the group deployed with it can sign a believed outcome
    deployment = yield context.call_activity_with_retry("deploy_inference", RETRY, run)
    if not deployment["ok"]:
        return {"status": "failed", "phase": "deploying", "reason": deployment["reason"]}
    enter("inferring", container_group=deployment["container_group"])
    outcome = yield from wait_for_attested_outcome(context, run, "verify_inference_outcome")
    if outcome is None:
        return {"status": "failed", "phase": "inferring",
                "reason": f"deadline of {run['deadline_seconds']} s passed before the inference finished"}
    return _outcome(outcome)


def _outcome(outcome: dict) -> dict:
    if outcome["status"] == "succeeded":
        return {"status": "succeeded", "phase": "inferring",
                **{k: outcome.get(k) for k in ("rows", "batch_commitment", "output_blake3", "model_state_sha256")}}
    reason = f"inference failed: {outcome.get('error_class', 'UnknownError')}: {outcome.get('message', '')}"[:500]
    return {"status": "failed", "phase": "inferring", "reason": reason}


# --- activities ---------------------------------------------------------------------------

@bp.activity_trigger(input_name="run")
def gather_inference_grants(run: dict) -> dict:
    with activity_step("gather_inference_grants", run):
        run_records().enter_phase(run["run_id"], "gathering_key_grants")
        return inference_steps.gather_inference_grants(run)


@bp.activity_trigger(input_name="run")
def deploy_inference(run: dict) -> dict:
    with activity_step("deploy_inference", run):
        return deploy_group(run, inference_steps.deploy_inference, "inferring")


@bp.activity_trigger(input_name="claim")
def verify_inference_outcome(claim: dict) -> dict:
    with activity_step("verify_inference_outcome", claim["run"]):
        return inference_steps.verify_inference_outcome(claim["run"], claim["event"])


@bp.activity_trigger(input_name="result")
def finish_inference(result: dict) -> dict:
    with activity_step("finish_inference", result["run"]):
        run_records().enter_phase(result["run"]["run_id"], "notifying")
        return inference_steps.finish_inference(result["run"], result["outcome"])


@bp.activity_trigger(input_name="notice")
def notify_requester(notice: dict) -> dict:
    """One attempt to tell the requester (a `CCR.Run.Finished` event under its own subject)."""
    with activity_step("notify_requester", notice["run"]):
        message = {**tdc_notice.notice(notice["summary"]), "rows": notice["summary"].get("rows")}
        return tdc_notice.publish_event(message, [notice["run"]["request"]["requester"]])
