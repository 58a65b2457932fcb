"""Telling the TDC: each attempt is one activity that raises, the host retries it with durable
timers, and a notice still undelivered is recorded without changing the run's outcome.

The orchestrator `ccr_run` itself is replayed here by the azure-functions-durable SDK, the way
the local host drives it (history events and retry bookkeeping as local_emulator/host/durable
does, docs in ../shared/DESIGN.md), with no host process: the run's earlier steps answer from a
script, the webhook attempts are real POSTs to a closed port. That the host runs retries this
way is tests/host/test_durable.py's business."""
from __future__ import annotations

import json
import logging
import secrets
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from local_emulator.host.durable import history as h
from orchestrations import activities, run_workflow, tdc_notice
from shared import azure_clients, telemetry
from shared.contract_store import ContractStore
from shared.run_records import RunRecords

RUN = {"run_id": "run-00000000000000aa", "contract_id": "c-1", "contract_digest": "d" * 64, "deadline_seconds": 60}
SUMMARY = {"run_id": RUN["run_id"], "contract_id": "c-1", "status": "failed", "failed_phase": "validating",
           "reason": "input datasets/x.ccr is missing", "output_blob": None, "output_blake3": None}


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/notify"   # nobody listens there now


class Replay:
    """Drives `ccr_run` to the end; activities answer synchronously from `activities`
    (name -> function of the input, raising for a failed attempt)."""

    def __init__(self, activities: dict):
        self.activities = activities
        self.handle = run_workflow.ccr_run._function.get_user_function()
        self.history: list[dict] = []
        self.next_id = 0
        self.action_count = 0

    def run(self, run_input: dict):
        pending = [h.event(h.EXECUTION_STARTED, Name="ccr_run", Input=json.dumps(run_input), Version="",
                           OrchestrationInstance={"InstanceId": run_input["run_id"], "ExecutionId": "e"})]
        for _ in range(200):
            ordinary = [e for e in pending if not self._is_retry_event(e)]
            batches = ([ordinary] if ordinary else []) + [[e] for e in pending if e not in ordinary]
            pending = []
            for batch in batches:
                retry_events = self._retry_bookkeeping(batch[0], pending) \
                    if len(batch) == 1 and self._is_retry_event(batch[0]) else []
                episode = [h.event(h.ORCHESTRATOR_STARTED)] + batch
                context = {"history": [dict(e, IsPlayed=True) for e in self.history] + episode,
                           "input": json.dumps(run_input), "instanceId": run_input["run_id"], "isReplaying": False,
                           "parentInstanceId": None, "upperSchemaVersion": 2}
                result = json.loads(self.handle(json.dumps(context)))
                self.history += episode + retry_events
                actions = h.flatten_actions(result.get("actions"))
                for action in actions[self.action_count:]:
                    if action["actionType"] in h.TAKES_TASK_ID:
                        self.history.append(self._schedule(action, self._take_id(), 1, pending))
                self.action_count = len(actions)
                if result.get("isDone"):
                    return result["output"]
                self.history.append(h.event(h.ORCHESTRATOR_COMPLETED))
        raise AssertionError("the orchestration did not finish")

    def _take_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _schedule(self, action: dict, task_id: int, attempt: int, pending: list) -> dict:
        if action["actionType"] == h.CREATE_TIMER:   # the training deadline: never reached here
            return h.event(h.TIMER_CREATED, task_id, FireAt=action["fireAt"])
        name, given = action["functionName"], json.loads(action.get("input") or "null")
        try:
            pending.append(h.event(h.TASK_COMPLETED, TaskScheduledId=task_id,
                                   Result=json.dumps(self.activities[name](given))))
        except Exception as error:  # noqa: BLE001 - a failed attempt, as the host reports it
            pending.append(h.event(h.TASK_FAILED, TaskScheduledId=task_id, Details="",
                                   Reason=f"Activity function '{name}' failed: {type(error).__name__}: {error}"))
        return h.event(h.TASK_SCHEDULED, task_id, Name=name, Input=action.get("input"),
                       RetryOptions=action.get("retryOptions"), Action=action, Attempt=attempt)

    def _is_retry_event(self, event: dict) -> bool:
        if event["EventType"] == h.TASK_FAILED:
            scheduled = h.find_event(self.history, h.TASK_SCHEDULED, event["TaskScheduledId"])
            return bool(scheduled and scheduled.get("RetryOptions"))
        if event["EventType"] == h.TIMER_FIRED:
            return "RetryFor" in (h.find_event(self.history, h.TIMER_CREATED, event["TimerId"]) or {})
        return False

    def _retry_bookkeeping(self, event: dict, pending: list) -> list[dict]:
        """After a failure a back-off timer (fired at once here); after the timer the next
        attempt, unless that was the last: then the SDK reports the failure."""
        if event["EventType"] == h.TASK_FAILED:
            failed = h.find_event(self.history, h.TASK_SCHEDULED, event["TaskScheduledId"])
            timer_id = self._take_id()
            pending.append(h.event(h.TIMER_FIRED, TimerId=timer_id, FireAt=h.iso(h.utc_now())))
            return [h.event(h.TIMER_CREATED, timer_id, FireAt=h.iso(h.utc_now()),
                            RetryFor={"EventType": h.TASK_SCHEDULED, "EventId": failed["EventId"]})]
        timer = h.find_event(self.history, h.TIMER_CREATED, event["TimerId"])
        failed = h.find_event(self.history, h.TASK_SCHEDULED, timer["RetryFor"]["EventId"])
        if failed["Attempt"] >= failed["RetryOptions"]["maxNumberOfAttempts"]:
            return []
        return [self._schedule(failed["Action"], self._take_id(), failed["Attempt"] + 1, pending)]


@pytest.fixture
def webhook_attempts():
    return []


@pytest.fixture
def replay(webhook_attempts):
    """A run refused at validation (no trainer, nothing to clean up), then the notices."""
    recorded = {}
    url = closed_port_url()

    def notify_tdc(notice: dict) -> dict:
        assert notice["run"]["run_id"] == RUN["run_id"] and notice["summary"] == SUMMARY
        if notice["channel"] == "event":
            return {"delivered": True}
        webhook_attempts.append(notice["channel"])
        return tdc_notice.post_webhook(url, tdc_notice.notice(notice["summary"]))   # real POST, nobody listening

    engine = Replay({
        "validate_inputs": lambda run: {"ok": False, "reason": SUMMARY["reason"]},
        "finish_run": lambda result: SUMMARY,
        "notify_tdc": notify_tdc,
        "record_notification": lambda given: recorded.update(given) or given["delivery"],
    })
    engine.recorded = recorded
    return engine


def test_an_unreachable_webhook_is_retried_by_the_host_then_recorded_and_the_outcome_stands(replay, webhook_attempts):
    output = replay.run(RUN)
    assert output == SUMMARY   # the run's outcome, untouched by the undelivered notice
    attempts = run_workflow.NOTICE_RETRY.max_number_of_attempts
    assert webhook_attempts == ["webhook"] * attempts
    assert replay.recorded == {"run": RUN, "delivery": {
        "event": {"delivered": True},
        "webhook": {"delivered": False, "attempts": attempts,
                    "reason": "Activity function 'notify_tdc' failed: NoticeNotDelivered: "
                              "TDC webhook not reached (ConnectionError)"}}}
    scheduled = [e for e in replay.history if e["EventType"] == h.TASK_SCHEDULED and e["Name"] == "notify_tdc"]
    assert [e["Attempt"] for e in scheduled] == [1] + list(range(1, attempts + 1))   # event once, webhook N times
    assert scheduled[-1]["RetryOptions"] == {"firstRetryIntervalInMilliseconds": 5000,
                                             "maxNumberOfAttempts": attempts}
    retry_timers = [e for e in replay.history if e["EventType"] == h.TIMER_CREATED and "RetryFor" in e]
    assert len(retry_timers) == attempts   # a back-off after each failure, the last before the error


def test_a_webhook_answering_an_error_status_is_a_failed_attempt():
    bodies = []

    class Down(BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Down)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    try:
        with pytest.raises(tdc_notice.NoticeNotDelivered, match="TDC webhook answered 503"):
            tdc_notice.post_webhook(f"http://127.0.0.1:{server.server_port}/notify", tdc_notice.notice(SUMMARY))
    finally:
        server.shutdown()
        server.server_close()
    assert bodies == [{key: SUMMARY.get(key) for key in tdc_notice.NOTICE_FIELDS}]
    assert tdc_notice.post_webhook(None, {}) == {"delivered": False, "reason": "the contract names no webhook"}


@pytest.fixture
def stored_contract(azurite, monkeypatch):
    """The run's contract in Azurite, its webhook carrying a function key in its query string
    (as a TDC's Functions endpoint would), unreachable; and the run's record."""
    monkeypatch.setenv("CCR_STORAGE_CONNECTION", azurite)
    azure_clients.blob_service.cache_clear()
    key = secrets.token_urlsafe(16)
    # as much of a contract as the notice reads, plus the TDC's DID: the session's Azurite is shared
    # with other modules' status-API tests, which list every stored contract's parties
    payload = {"contract_id": RUN["contract_id"], "tdps": [],
               "tdc": {"did": "did:web:127.0.0.1%3A9:notice-tdc", "model": {"blob": "models/m/model-1.ccr"},
                       "output": {"webhook": closed_port_url() + f"?code={key}"}}}
    ContractStore(azure_clients.blob_service()).accept(payload, RUN["contract_digest"], "", None)
    RunRecords(azure_clients.blob_service()).create(RUN["run_id"], RUN["contract_id"], RUN["contract_digest"])
    yield key
    azure_clients.blob_service.cache_clear()


def test_activity_logs_carry_the_run_and_contract_ids_and_no_secret(stored_contract, caplog):
    notify = activities.notify_tdc._function.get_user_function()
    record_notification = activities.record_notification._function.get_user_function()
    caplog.set_level(logging.INFO)
    with pytest.raises(tdc_notice.NoticeNotDelivered):
        notify({"run": RUN, "summary": SUMMARY, "channel": "webhook"})
    delivery = {"webhook": {"delivered": False, "attempts": 4, "reason": "TDC webhook not reached"}}
    assert record_notification({"run": RUN, "delivery": delivery}) == delivery
    ours = [r for r in caplog.records if r.name == activities.log.name]
    assert [r.getMessage() for r in ours] == [
        "activity notify_tdc started",
        "activity notify_tdc: TDC webhook not reached (ConnectionError)",
        "activity record_notification started", "notice to the TDC: webhook not delivered",
        "activity record_notification done"]
    for record in caplog.records:   # ours and the SDKs' alike, made inside the activities
        assert (record.run_id, record.contract_id) == (RUN["run_id"], RUN["contract_id"])
        assert stored_contract not in record.getMessage() and stored_contract not in json.dumps(
            {k: str(v) for k, v in vars(record).items()})
    assert RunRecords(azure_clients.blob_service()).get(RUN["run_id"])["notification"] == delivery
    assert telemetry.run_fields() == {}   # nothing leaks past the activity
