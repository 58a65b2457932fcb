"""Instance management as the Durable extension's HttpApiHandler does it (issue 13), on one host
for the module: suspend and resume (events and activity results held, no orchestrator code run
while suspended), restart, rewind (failed activities and sub-orchestrations run again, nothing else), the
showHistory shape of the status API, and query paging with continuation tokens. Driven through
the SDK's DurableOrchestrationClient (the test app's `manage` function) where the SDK has the
operation, raw HTTP otherwise."""
import base64
import json
import time
import uuid

import requests
from azure.data.tables import TableClient

from tests.conftest import wait_until
from tests.host.conftest import manage, records, start, status, wait_done

INTERNAL_KEYS = {"EventId", "IsPlayed", "MessageKey", "Action", "RetryOptions", "Attempt", "RetryFor", "Key",
                 "OrchestrationInstance", "Version", "TaskScheduledId", "TimerId"}


def webhook(host, path: str = "") -> str:
    return f"{host.url}/runtime/webhooks/durabletask{path}"


def post(host, instance_id: str, operation: str, **params) -> requests.Response:
    return requests.post(webhook(host, f"/instances/{instance_id}/{operation}"),
                         params={"code": host.system_key, **params}, timeout=10)


def wait_status(links: dict, runtime_status: str, custom_status=None) -> dict:
    def reached():
        body = status(links)
        return body if body["runtimeStatus"] == runtime_status and (
            custom_status is None or body["customStatus"] == custom_status) else None
    return wait_until(reached, 20, 0.05, f"{runtime_status} / {custom_status}")


def test_a_suspended_instance_holds_events_and_activity_results_until_resumed(shared_host, shared_records):
    host = shared_host
    tag = uuid.uuid4().hex[:8]
    links = start(host, "gated", {"tag": tag, "sleep": 1.0})
    wait_status(links, "Running", "waiting")

    assert manage(host, "suspend", links["id"], {"reason": "maintenance"}).status_code == 202
    suspended = wait_status(links, "Suspended")
    answer = requests.get(links["statusQueryGetUri"], timeout=10)
    assert answer.status_code == 202 and answer.headers["Retry-After"] == "5"
    assert manage(host, "raise", links["id"], {"event": "go", "data": 3}).status_code == 202
    time.sleep(1.0)  # the event is in; no orchestrator code may see it while suspended
    held = status(links)
    assert (held["runtimeStatus"], held["customStatus"]) == ("Suspended", "waiting")
    assert held["lastUpdatedTime"] == suspended["lastUpdatedTime"]
    assert records(shared_records, "work", tag) == []

    assert manage(host, "resume", links["id"], {"reason": "back"}).status_code == 202
    wait_status(links, "Running", "got go")  # the held event reached the orchestrator
    assert manage(host, "suspend", links["id"], {"reason": "again"}).status_code == 202
    wait_status(links, "Suspended")
    wait_until(lambda: records(shared_records, "work", tag), 10, message="activity ran")
    time.sleep(0.5)  # its result reaches the instance, which must not act on it
    held = status(links)
    assert (held["runtimeStatus"], held["customStatus"], held["output"]) == ("Suspended", "got go", None)

    assert manage(host, "resume", links["id"]).status_code == 202
    done = wait_done(links)
    assert (done["runtimeStatus"], done["customStatus"], done["output"]) == ("Completed", "done", 30)
    assert records(shared_records, "work", tag) == [f"{tag}:3"]
    history = requests.get(links["statusQueryGetUri"], params={"showHistory": "true"}, timeout=10).json()
    markers = [(e["EventType"], e.get("Reason")) for e in history["historyEvents"]
               if e["EventType"] in ("ExecutionSuspended", "ExecutionResumed")]
    assert markers == [("ExecutionSuspended", "maintenance"), ("ExecutionResumed", "back"),
                       ("ExecutionSuspended", "again"), ("ExecutionResumed", "test")]


def test_events_held_by_a_suspended_instance_survive_kill_9(host, azurite, record_dir):
    """The held event is stored before its message is acknowledged: kill -9 the host, start it
    again, and the instance is still Suspended and, once resumed, acts on the event."""
    links = start(host, "gated", {"tag": "held"})
    wait_status(links, "Running", "waiting")
    assert manage(host, "suspend", links["id"]).status_code == 202
    wait_status(links, "Suspended")
    assert manage(host, "raise", links["id"], {"event": "go", "data": 4}).status_code == 202
    table = TableClient.from_connection_string(azurite, f"{host.hub}Instances")
    wait_until(lambda: [row for row in table.query_entities("PartitionKey eq @pk", parameters={"pk": links["id"]})
                        if row["RowKey"].startswith("b")], 10, 0.05, "event held in a buffer row")
    host.kill()
    host.start()
    held = status(links)
    assert (held["runtimeStatus"], held["customStatus"]) == ("Suspended", "waiting")
    assert manage(host, "resume", links["id"]).status_code == 202
    done = wait_done(links, timeout=30)
    assert (done["runtimeStatus"], done["output"]) == ("Completed", 40)
    assert records(record_dir, "work", "held") == ["held:4"]
    assert not [row for row in table.query_entities("PartitionKey eq @pk", parameters={"pk": links["id"]})
                if row["RowKey"].startswith("b")]  # released rows are deleted
    table.close()


def test_suspend_and_resume_answer_as_http_api_handler_for_wrong_states(shared_host):
    """404 unknown, 410 finished, 500 (the extension's InvalidOperationException, in its error
    shape) for suspending a suspended instance or resuming a running one; a terminate still
    ends a suspended instance."""
    host = shared_host
    assert post(host, "no-such-instance", "suspend").status_code == 404
    unkeyed = requests.post(webhook(host, "/instances/no-such-instance/suspend"), timeout=10)
    assert unkeyed.status_code == 401  # the public webhook wants the durabletask system key
    assert post(host, "no-such-instance", "resume").status_code == 404
    refused = manage(host, "suspend", "no-such-instance").json()["refused"]
    assert refused == "No instance with ID 'no-such-instance' found."

    done = wait_done(start(host, "fan_out", {"n": 1, "tag": "suspend-done"}))
    assert post(host, done["instanceId"], "suspend").status_code == 410
    assert post(host, done["instanceId"], "resume").status_code == 410
    assert manage(host, "suspend", done["instanceId"]).status_code == 202  # the SDK accepts 410 silently

    links = start(host, "forever")
    wait_status(links, "Running")
    resumed_running = post(host, links["id"], "resume")
    assert resumed_running.status_code == 500
    assert resumed_running.json()["ExceptionMessage"] == (
        f"Cannot resume the orchestration instance {links['id']} because instance is in the Running state.")
    assert post(host, links["id"], "suspend", reason="x").status_code == 202
    wait_status(links, "Suspended")
    twice = post(host, links["id"], "suspend")
    assert twice.status_code == 500 and twice.json()["Message"] == "Something went wrong while processing your request"
    assert requests.post(links["terminatePostUri"].replace("{text}", "stop"), timeout=10).status_code == 202
    assert (wait_done(links)["runtimeStatus"], status(links)["output"]) == ("Terminated", "stop")


def test_restart_runs_the_orchestrator_again_with_its_input(shared_host):
    """restart(id): a new instance (new id) with the same input; restartWithNewInstanceId=false:
    the same id once finished, 409 while running; an unknown id 400. The SDK's restart returns
    what the extension answers: the new instance's check-status payload."""
    host = shared_host
    first = wait_done(start(host, "fan_out", {"n": 2, "tag": "restart"}))
    restarted = manage(host, "restart", first["instanceId"]).json()["restarted"]
    assert restarted["id"] != first["instanceId"] and set(restarted) >= {"statusQueryGetUri", "purgeHistoryDeleteUri"}
    again = wait_done(restarted)
    assert (again["name"], again["input"], again["output"]) == ("fan_out", first["input"], 10)

    same = manage(host, "restart", first["instanceId"], {"new_id": False}).json()["restarted"]
    assert same["id"] == first["instanceId"]
    rerun = wait_done(same)
    assert rerun["output"] == 10 and rerun["createdTime"] >= first["createdTime"]

    running = start(host, "forever")
    wait_status(running, "Running")
    conflict = post(host, running["id"], "restart", restartWithNewInstanceId="false")
    assert conflict.status_code == 409 and "non-terminal" in conflict.json()["Message"]
    assert status(running)["runtimeStatus"] == "Running"
    unknown = post(host, "never-was", "restart")
    assert unknown.status_code == 400 and unknown.json()["Message"].startswith("InstanceId does not match")
    requests.post(running["terminatePostUri"].replace("{text}", "done"), timeout=10)


def completed_again(host, failed: dict) -> dict:
    """The rewound instance's status once it has completed (the rewind is applied asynchronously)."""
    links = {"statusQueryGetUri": done_url(host, failed)}
    return wait_until(lambda: (lambda s: s if s["runtimeStatus"] == "Completed" else None)(status(links)), 30)


def test_rewind_reruns_only_the_failed_activity(shared_host, shared_records):
    """A Failed instance rewound through the SDK's client.rewind: Running again, only the failed
    activity runs again (the successful one before it does not), and the instance completes."""
    host, tag = shared_host, "rw-" + uuid.uuid4().hex[:8]
    failed = wait_done(start(host, "rewindable", {"tag": tag}))
    assert failed["runtimeStatus"] == "Failed"
    assert records(shared_records, "work", tag) == [f"{tag}:1"] and len(records(shared_records, "once-" + tag)) == 1
    assert manage(host, "rewind", failed["instanceId"]).status_code == 202
    done = completed_again(host, failed)
    assert done["output"] == [10, "ok on run 2", 30]
    assert records(shared_records, "work", tag) == [f"{tag}:1", f"{tag}:3"]      # the first ran once
    assert len(records(shared_records, "once-" + tag)) == 2
    history = requests.get(done_url(host, failed), params={"showHistory": "true"}, timeout=10).json()["historyEvents"]
    assert [e["EventType"] for e in history] == ["ExecutionStarted", "TaskCompleted", "TaskCompleted",
                                                 "TaskCompleted", "ExecutionCompleted"]


def test_rewind_of_an_activity_that_ran_out_of_retries_runs_it_once_more(shared_host, shared_records):
    """Three attempts failed (the host's retries, back-off timers between them): rewound, the
    activity runs a fourth time, under the last attempt's task id, and the instance completes."""
    host, key = shared_host, "rr-" + uuid.uuid4().hex[:8]
    failed = wait_done(start(host, "with_retry", {"key": key, "fail": 3}))
    assert failed["runtimeStatus"] == "Failed" and len(records(shared_records, "flaky-" + key)) == 3
    assert manage(host, "rewind", failed["instanceId"]).status_code == 202
    assert completed_again(host, failed)["output"] == "ok after 4"
    assert len(records(shared_records, "flaky-" + key)) == 4


def test_rewind_replays_with_outcomes_that_came_after_the_failure(shared_host, shared_records):
    """A fan-out fails while two activities still run; their results reach a Failed instance,
    which holds them (rewind.py). Rewound, it replays with them: they do not run again, only
    the failed activity does."""
    host, tag = shared_host, "rf-" + uuid.uuid4().hex[:8]
    failed = wait_done(start(host, "rewindable_fan_out", {"tag": tag}))
    assert failed["runtimeStatus"] == "Failed"
    wait_until(lambda: len(records(shared_records, "work", tag)) == 2, 30)
    time.sleep(0.5)                                   # their outcomes reach the failed instance
    assert manage(host, "rewind", failed["instanceId"]).status_code == 202
    assert completed_again(host, failed)["output"] == [0, 10, "ok on run 2"]
    assert sorted(records(shared_records, "work", tag)) == [f"{tag}:0", f"{tag}:1"]
    assert len(records(shared_records, "once-" + tag)) == 2


def test_kill_9_while_a_rewind_is_applied_neither_loses_nor_repeats_it(host, record_dir):
    """The host dies right after a rewind's commit (its request is delivered again: ignored), then
    after another's sends but before its commit (applied again): restarted, each instance
    completes and its failed activity ran again exactly once. Outcomes a Failed fan-out held
    before the crashes are still there for its rewind: its slow activities do not run again."""
    points = ("durable.rewind.after_commit", "durable.rewind.before_commit")
    held = wait_done(start(host, "rewindable_fan_out", {"tag": "rk-held"}))
    failed = {point: wait_done(start(host, "rewindable", {"tag": "rk-" + point.rsplit(".", 1)[1]})) for point in points}
    assert {done["runtimeStatus"] for done in [held, *failed.values()]} == {"Failed"}
    wait_until(lambda: len(records(record_dir, "work", "rk-held")) == 2, 30)
    time.sleep(0.5)                                   # their outcomes reach the failed instance
    for index, point in enumerate(points):
        host.env["CCR_FAULT_POINT"] = point
        host.kill()
        host.start()
        if index:   # the previous rewind, applied across the crash, has completed
            previous = points[index - 1]
            assert completed_again(host, failed[previous])["output"] == [10, "ok on run 2", 30]
        assert manage(host, "rewind", failed[point]["instanceId"]).status_code == 202
        wait_until(lambda: host.process.poll() is not None, 30, 0.05, f"host killed at {point}")
        host.kill()
        assert f"fault point {point} reached" in host.logs()
    host.env["CCR_FAULT_POINT"] = ""
    host.start()
    assert completed_again(host, failed[points[-1]])["output"] == [10, "ok on run 2", 30]
    assert manage(host, "rewind", held["instanceId"]).status_code == 202
    assert completed_again(host, held)["output"] == [0, 10, "ok on run 2"]
    assert sorted(records(record_dir, "work", "rk-held")) == ["rk-held:0", "rk-held:1"]
    for point in points:
        tag = "rk-" + point.rsplit(".", 1)[1]
        assert records(record_dir, "work", tag) == [f"{tag}:1", f"{tag}:3"]
        assert len(records(record_dir, "once-" + tag)) == 2


def test_rewind_reruns_a_failed_sub_orchestration(shared_host, shared_records):
    host, tag = shared_host, "rs-" + uuid.uuid4().hex[:8]
    failed = wait_done(start(host, "rewindable_parent", {"tag": tag}))
    assert failed["runtimeStatus"] == "Failed"
    assert post(host, failed["instanceId"], "rewind", reason="retry it").status_code == 202
    done = completed_again(host, failed)
    assert done["output"] == [0, [10, "ok on run 2", 30]]
    assert records(shared_records, "work", tag) == [f"{tag}:0", f"{tag}:1", f"{tag}:3"]
    assert len(records(shared_records, "once-" + tag)) == 2


def test_rewind_answers_as_the_extension_for_other_states(shared_host):
    """404 unknown; 410 Completed (the SDK's "only supported on failed" message); 500 Running
    (the client's InvalidOperationException), and the running instance is untouched."""
    host = shared_host
    assert post(host, "never-was", "rewind", reason="r").status_code == 404
    done = wait_done(start(host, "fan_out", {"n": 1, "tag": "rewind"}))
    assert post(host, done["instanceId"], "rewind").status_code == 410
    assert "only supported on failed" in manage(host, "rewind", done["instanceId"]).json()["refused"]
    running = start(host, "forever")
    wait_until(lambda: status(running)["runtimeStatus"] == "Running", 30)
    refused = post(host, running["id"], "rewind")
    assert refused.status_code == 500 and "only supported on failed" in refused.json()["ExceptionMessage"]
    assert status(running)["runtimeStatus"] == "Running"
    requests.post(running["terminatePostUri"].replace("{text}", "done"), timeout=10)


def test_rewinding_an_orchestrators_own_exception_replays_it_and_it_fails_again(shared_host):
    host = shared_host
    failed = wait_done(start(host, "broken"))
    time.sleep(1.1)                      # status times are whole seconds: the replay's must be later
    assert post(host, failed["instanceId"], "rewind").status_code == 202
    links = {"statusQueryGetUri": done_url(host, failed)}
    again = wait_until(lambda: (lambda s: s if s["lastUpdatedTime"] > failed["lastUpdatedTime"] else None)(
        status(links)), 30)
    assert again["runtimeStatus"] == "Failed" and "orchestrator gave up" in json.dumps(again["output"])
    history = status(links, showHistory="true")["historyEvents"]
    assert [e["EventType"] for e in history].count("ExecutionCompleted") == 1


def done_url(host, done: dict) -> str:
    return webhook(host, f"/instances/{done['instanceId']}") + f"?code={host.system_key}"


def test_show_history_has_the_extensions_shape(shared_host):
    """As the HTTP API reference's example: EventType names, a finished task's TaskScheduled
    folded into its TaskCompleted (FunctionName, ScheduledTime), ExecutionStarted's
    FunctionName, Result only with showHistoryOutput and then parsed JSON, no internal keys."""
    host = shared_host
    done = wait_done(start(host, "fan_out", {"n": 2, "tag": "shape"}))
    url = done_url(host, done)
    plain = requests.get(url, params={"showHistory": "true"}, timeout=10).json()
    assert "history" not in plain
    events = plain["historyEvents"]
    assert [e["EventType"] for e in events] == ["ExecutionStarted", "TaskCompleted", "TaskCompleted",
                                               "ExecutionCompleted"]
    assert not any(INTERNAL_KEYS & set(e) for e in events)
    assert not any("Result" in e for e in events)
    started, first, _, completed = events
    assert (started["FunctionName"], json.loads(started["Input"])) == ("fan_out", {"n": 2, "tag": "shape"})
    assert first["FunctionName"] == "work" and first["ScheduledTime"] <= first["Timestamp"]
    assert json.loads(first["Input"])["tag"] == "shape"
    assert completed["OrchestrationStatus"] == "Completed"
    through_sdk = manage(host, "status", done["instanceId"]).json()  # historyEvents, as the SDK keeps it
    assert through_sdk["history"] == [e["EventType"] for e in events] and through_sdk["sdk_history"] is None

    full = requests.get(url, params={"showHistory": "true", "showHistoryOutput": "true", "showInput": "false"},
                        timeout=10).json()
    assert full["input"] is None
    assert sorted(e["Result"] for e in full["historyEvents"] if e["EventType"] == "TaskCompleted") == [0, 10]
    assert full["historyEvents"][-1]["Result"] == 10
    assert not any("Input" in e for e in full["historyEvents"])


def test_a_running_task_keeps_its_task_scheduled_event(shared_host):
    host = shared_host
    links = start(host, "gated", {"tag": "scheduled", "sleep": 2.0})
    wait_status(links, "Running", "waiting")
    manage(host, "raise", links["id"], {"event": "go", "data": 1})
    wait_status(links, "Running", "got go")
    events = requests.get(links["statusQueryGetUri"], params={"showHistory": "true"}, timeout=10).json()[
        "historyEvents"]
    assert [e["EventType"] for e in events] == ["ExecutionStarted", "EventRaised", "TaskScheduled"]
    assert events[-1]["Name"] == "work" and not INTERNAL_KEYS & set(events[-1])
    wait_done(links)


def test_instance_queries_page_with_top_and_continuation_tokens(shared_host):
    """top=2 over five instances: pages of 2, 2 and 1 in id order, each but the last naming the
    next in x-ms-continuation-token; a token this host never issued is refused (400); the SDK's
    get_status_all and get_status_by list them (the extension's default page holds 100)."""
    host = shared_host
    prefix = "page-" + uuid.uuid4().hex[:6] + "-"
    ids = [f"{prefix}{i}" for i in range(5)]
    for instance_id in ids:
        wait_done(start(host, "fan_out", {"n": 1, "tag": "page"}, instance_id=instance_id))

    pages, token = [], None
    for _ in range(4):
        answer = requests.get(webhook(host, "/instances"), params={"code": host.system_key, "top": "2",
                                                                   "instanceIdPrefix": prefix},
                              headers={"x-ms-continuation-token": token} if token else {}, timeout=10)
        assert answer.status_code == 200
        pages.append([item["instanceId"] for item in answer.json()])
        token = answer.headers["x-ms-continuation-token"]
        if not token:
            break
    assert pages == [ids[0:2], ids[2:4], ids[4:5]]
    without_input = requests.get(webhook(host, "/instances"), params={
        "code": host.system_key, "instanceIdPrefix": prefix, "top": "nonsense", "showInput": "false"}, timeout=10)
    assert [item["instanceId"] for item in without_input.json()] == ids  # an unreadable top: the default page
    assert {item["input"] for item in without_input.json()} == {None}
    assert without_input.headers["x-ms-continuation-token"] == ""

    forged = base64.urlsafe_b64encode(b"not ours").decode()
    refused = requests.get(webhook(host, "/instances"), params={"code": host.system_key},
                           headers={"x-ms-continuation-token": forged}, timeout=10)
    assert refused.status_code == 400 and "continuation token" in refused.json()["Message"]

    listed = manage(host, "all", "_").json()
    assert set(ids) <= set(listed)
    running = manage(host, "running", "_").json()
    assert not set(ids) & set(running)
