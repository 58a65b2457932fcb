"""The run's steps as Durable activities. Each one is idempotent (the host may run an
activity again after a crash) and records its phase in the run record. Each runs inside
`activity_step`: every log record it makes carries the run's `run_id` and `contract_id` as fields
(shared/telemetry.py), and its start, end or failure (the exception class only) is logged."""
from __future__ import annotations

import logging
from contextlib import contextmanager

import azure.durable_functions as df

from orchestrations import run_steps, tdc_notice
from shared import azure_clients, telemetry
from shared.run_records import RunRecords

bp = df.Blueprint()
log = logging.getLogger(__name__)


def run_records() -> RunRecords:
    return RunRecords(azure_clients.blob_service())


@contextmanager
def activity_step(name: str, run: dict):
    with telemetry.run_context(run):
        log.info("activity %s started", name)
        try:
            yield
        except tdc_notice.NoticeNotDelivered as undelivered:   # its text names a class or a status only
            log.warning("activity %s: %s", name, undelivered)
            raise
        except Exception as error:
            log.warning("activity %s failed: %s", name, type(error).__name__)
            raise
        log.info("activity %s done", name)


def deploy_group(run: dict, deploy, running_phase: str) -> dict:
    """A run's container group deployed by `deploy(run)`, recorded as the run's record has it:
    the deploying phase and the run's nonce first (to check the group's progress events), then
    `running_phase` with the group's name once it is up; `deploy`'s answer."""
    run_records().enter_phase(run["run_id"], "deploying")
    run_records().keep_nonce(run["run_id"], run["nonce"])
    deployed = deploy(run)
    if deployed["ok"]:
        run_records().enter_phase(run["run_id"], running_phase, container_group=deployed["container_group"])
    return deployed


@bp.activity_trigger(input_name="run")
def previous_model_state(run: dict) -> dict:
    with activity_step("previous_model_state", run):
        run_records().enter_phase(run["run_id"], "waiting_for_previous_model")
        return run_steps.previous_model_state(run)


@bp.activity_trigger(input_name="run")
def validate_inputs(run: dict) -> dict:
    with activity_step("validate_inputs", run):
        run_records().enter_phase(run["run_id"], "validating")
        return run_steps.validate_inputs(run)


@bp.activity_trigger(input_name="run")
def gather_key_grants(run: dict) -> dict:
    with activity_step("gather_key_grants", run):
        run_records().enter_phase(run["run_id"], "gathering_key_grants")
        return run_steps.gather_key_grants(run)


@bp.activity_trigger(input_name="run")
def reserve_privacy_budget(run: dict) -> dict:
    with activity_step("reserve_privacy_budget", run):
        run_records().enter_phase(run["run_id"], "reserving_budget")
        return run_steps.reserve_privacy_budget(run)


@bp.activity_trigger(input_name="run")
def deploy_trainer(run: dict) -> dict:
    with activity_step("deploy_trainer", run):
        return deploy_group(run, run_steps.deploy_trainer, "training")


@bp.activity_trigger(input_name="claim")
def verify_trainer_outcome(claim: dict) -> dict:
    with activity_step("verify_trainer_outcome", claim["run"]):
        return run_steps.verify_trainer_outcome(claim["run"], claim["event"])


@bp.activity_trigger(input_name="run")
def clean_up_trainer(run: dict) -> dict:
    with activity_step("clean_up_trainer", run):
        run_records().enter_phase(run["run_id"], "cleaning_up")
        return run_steps.clean_up_trainer(run)


@bp.activity_trigger(input_name="result")
def finish_run(result: dict) -> dict:
    with activity_step("finish_run", result["run"]):
        run_records().enter_phase(result["run"]["run_id"], "notifying")
        return run_steps.finish_run(result["run"], result["outcome"])


@bp.activity_trigger(input_name="notice")
def notify_tdc(notice: dict) -> dict:
    """One attempt to tell the TDC on one channel; raises when it did not get through (the
    orchestrator retries with durable timers)."""
    with activity_step("notify_tdc", notice["run"]):
        return tdc_notice.deliver(notice["run"], notice["summary"], notice["channel"])


@bp.activity_trigger(input_name="notification")
def record_notification(notification: dict) -> dict:
    with activity_step("record_notification", notification["run"]):
        delivery = notification["delivery"]
        log.info("notice to the TDC: %s", ", ".join(
            f"{channel} {'delivered' if outcome.get('delivered') else 'not delivered'}"
            for channel, outcome in delivery.items()))
        return tdc_notice.record(notification["run"]["run_id"], delivery)
