"""The local host against the Durable extension's documented behaviour (issue 13), on one host
for the module: the HTTP API as HttpApiHandler answers it (check-status codes and headers,
timestamps, purge by filter), trigger names, failure details, versions, and payloads over the
queue and table limits kept as DurableTask.AzureStorage keeps them."""
import datetime as dt
import gzip
import json
import re
import time
import uuid

import pytest
import requests
from azure.storage.blob import ContainerClient

from local_emulator.host.app_loader import FunctionEntry, FunctionIndex
from local_emulator.host.durable.engine import durable_names
from tests.conftest import wait_until
from tests.host.conftest import start, status, wait_done

WHOLE_SECONDS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def webhook(host, path: str = "") -> str:
    return f"{host.url}/runtime/webhooks/durabletask{path}"


def test_check_status_codes_follow_http_api_handler(shared_host):
    """202 (with Location and Retry-After: 5) while running; 200 once Completed, Failed or
    Terminated; 500 for Failed only with returnInternalServerErrorOnFailure=true."""
    host = shared_host
    running = start(host, "forever")
    answer = requests.get(running["statusQueryGetUri"], timeout=10)
    assert answer.status_code == 202 and answer.headers["Retry-After"] == "5"
    assert answer.headers["Location"] == running["statusQueryGetUri"]
    assert requests.post(running["terminatePostUri"].replace("{text}", "enough"), timeout=10).status_code == 202
    wait_done(running)
    terminated = requests.get(running["statusQueryGetUri"], timeout=10)
    assert (terminated.status_code, terminated.json()["runtimeStatus"]) == (200, "Terminated")
    assert "Location" not in terminated.headers and "Retry-After" not in terminated.headers

    failed = start(host, "broken")
    wait_done(failed)
    plain = requests.get(failed["statusQueryGetUri"], timeout=10)
    assert (plain.status_code, plain.json()["runtimeStatus"]) == (200, "Failed")
    strict = requests.get(failed["statusQueryGetUri"], params={"returnInternalServerErrorOnFailure": "true"},
                          timeout=10)
    assert (strict.status_code, strict.json()["runtimeStatus"]) == (500, "Failed")
    completed = wait_done(start(host, "fan_out", {"n": 1, "tag": "codes"}))
    assert requests.get(failed["statusQueryGetUri"].replace(failed["id"], completed["instanceId"]),
                        params={"returnInternalServerErrorOnFailure": "true"}, timeout=10).status_code == 200


def test_start_answers_202_with_retry_after_and_timestamps_have_no_fraction(shared_host):
    host = shared_host
    answer = requests.post(webhook(host, "/orchestrators/fan_out"), params={"code": host.system_key},
                           json={"n": 1, "tag": "stamps"}, timeout=10)
    assert answer.status_code == 202 and answer.headers["Retry-After"] == "10"
    assert answer.headers["Location"] == answer.json()["statusQueryGetUri"]
    done = wait_done(answer.json())
    assert WHOLE_SECONDS.match(done["createdTime"]) and WHOLE_SECONDS.match(done["lastUpdatedTime"])
    listing = requests.get(webhook(host, "/instances"), params={"code": host.system_key,
                                                                "instanceIdPrefix": done["instanceId"]},
                           timeout=10).json()
    assert [WHOLE_SECONDS.match(item["createdTime"]) is not None for item in listing] == [True]


def test_purge_by_filter_honours_the_created_window_and_runtime_status(shared_host):
    """DELETE /instances?createdTimeFrom=...: only instances created inside the window (and of a
    listed terminal status) go; a window in the future purges nothing (404); createdTimeFrom is
    required (400); a running instance is not purged by id (412)."""
    host = shared_host
    key = {"code": host.system_key}

    def now() -> str:
        return dt.datetime.now(dt.timezone.utc).isoformat().replace("+00:00", "Z")

    def purge(**params) -> requests.Response:
        return requests.delete(webhook(host, "/instances/"), params={**key, **params}, timeout=10)

    before = now()
    first = wait_done(start(host, "fan_out", {"n": 1, "tag": "purge"}))
    time.sleep(0.05)
    between = now()
    failed = wait_done(start(host, "broken"))
    second = wait_done(start(host, "fan_out", {"n": 1, "tag": "purge"}))

    def exists(instance: dict) -> bool:
        return requests.get(webhook(host, f"/instances/{instance['instanceId']}"), params=key,
                            timeout=10).status_code != 404

    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    assert purge(createdTimeFrom=future, createdTimeTo=future).status_code == 404
    assert purge().status_code == 400 and purge(createdTimeTo=now()).status_code == 400
    assert all(exists(i) for i in (first, failed, second))

    window = purge(createdTimeFrom=before, createdTimeTo=between, runtimeStatus="Completed")
    assert (window.status_code, window.json()) == (200, {"instancesDeleted": 1})
    assert (exists(first), exists(failed), exists(second)) == (False, True, True)
    only_completed = purge(createdTimeFrom=between, runtimeStatus="Completed,Running")
    assert only_completed.json() == {"instancesDeleted": 1}
    assert (exists(failed), exists(second)) == (True, False)

    running = start(host, "forever")
    wait_until(lambda: status(running)["runtimeStatus"] == "Running", 20, message="running")
    refused = requests.delete(webhook(host, f"/instances/{running['id']}"), params=key, timeout=10)
    assert refused.status_code == 412 and "Running" in refused.text
    requests.post(running["terminatePostUri"].replace("{text}", "done"), timeout=10)


def test_orchestration_and_activity_names_from_the_trigger_are_the_registered_names(shared_host):
    """`orchestration_trigger(orchestration="renamed_flow")` and `activity_trigger(activity=...)`
    register those names, as the extension does; the Python function's name is not one."""
    host = shared_host
    done = wait_done(start(host, "renamed_flow", 1))
    assert (done["runtimeStatus"], done["output"]["value"]) == ("Completed", 101)
    refused = requests.post(webhook(host, "/orchestrators/flow_under_another_name"),
                            params={"code": host.system_key}, json=1, timeout=10)
    assert refused.status_code == 400 and "flow_under_another_name" in refused.json()["ExceptionMessage"]


def test_two_functions_claiming_one_durable_name_are_refused_at_indexing():
    trigger = {"type": "activityTrigger", "name": "x", "activity": "step"}
    index = FunctionIndex([FunctionEntry("one", lambda x: x, trigger, [trigger]),
                           FunctionEntry("two", lambda x: x, {**trigger}, [trigger])])
    with pytest.raises(ValueError, match="functions one and two are both the activityTrigger named 'step'"):
        durable_names(index, "activityTrigger", "activity")


def test_a_failed_activity_reaches_the_orchestrator_with_its_message_and_stack(shared_host):
    """As the extension: `Reason` names the activity, the exception type and message on one
    line; `Details` is the serialized exception (JSON) with the message and the stack. The
    host log carries the full traceback."""
    host = shared_host
    key = uuid.uuid4().hex
    done = wait_done(start(host, "catch_failure", key))
    reason, details = done["output"].split(" \n ", 1)
    assert reason == "Activity function 'flaky' failed: RuntimeError: boom 1"
    exception = json.loads(details)
    assert exception["Message"] == "RuntimeError: boom 1"
    assert "in flaky" in exception["StackTraceString"] and "raise RuntimeError" in exception["StackTraceString"]
    history = requests.get(done_links(host, done), params={"showHistory": "true"}, timeout=10).json()
    failed = next(e for e in history["historyEvents"] if e["EventType"] == "TaskFailed")
    assert failed["FailureDetails"]["ErrorType"] == "RuntimeError"
    assert failed["FailureDetails"]["ErrorMessage"] == "boom 1"
    wait_until(lambda: "Executed 'flaky' (Failed)" in host.logs(), 10, message="failure logged")
    logged = host.logs().split("Executed 'flaky' (Failed)", 1)[1]
    assert "Traceback (most recent call last)" in logged and "RuntimeError: boom 1" in logged


def test_a_failed_orchestrator_records_failure_details_and_logs_its_traceback(shared_host):
    host = shared_host
    done = wait_done(start(host, "broken"))
    assert done["output"] == "Orchestrator function 'broken' failed: orchestrator gave up"
    history = requests.get(done_links(host, done), params={"showHistory": "true"}, timeout=10).json()
    completed = history["historyEvents"][-1]
    assert completed["EventType"] == "ExecutionCompleted"
    details = completed["FailureDetails"]
    assert (details["ErrorType"], details["ErrorMessage"]) == ("ValueError", "orchestrator gave up")
    assert "in broken" in details["StackTrace"]
    wait_until(lambda: "Executed 'broken' (Failed)" in host.logs(), 10, message="failure logged")
    logged = host.logs().split("Executed 'broken' (Failed)", 1)[1]
    assert "ValueError: orchestrator gave up" in logged and "$OutOfProcData$" not in logged.split("\n20")[0]


def test_an_http_function_that_raises_answers_a_bare_500_and_logs_the_traceback(shared_host):
    host = shared_host
    answer = requests.get(f"{host.url}/api/fails", params={"code": host.function_key, "key": "k1"}, timeout=10)
    assert (answer.status_code, answer.content) == (500, b"")
    wait_until(lambda: "Executed 'fails' (Failed)" in host.logs(), 10, message="failure logged")
    logged = host.logs().split("Executed 'fails' (Failed)", 1)[1]
    assert "Traceback (most recent call last)" in logged and "LookupError: nothing under k1" in logged


def done_links(host, done: dict) -> str:
    return webhook(host, f"/instances/{done['instanceId']}") + f"?code={host.system_key}"


def test_versions_come_from_start_new_or_host_json_default_version(shared_host):
    """`context.version` is the version the creator named (start_new(version=...), or the
    webhook's ?version=), else host.json's durableTask.defaultVersion."""
    host = shared_host
    by_default = wait_done(start(host, "renamed_flow", 1))
    named = requests.post(f"{host.url}/api/orchestrators/renamed_flow",
                          params={"code": host.function_key, "version": "2.1"}, json=2, timeout=10)
    assert named.status_code == 202
    by_webhook = requests.post(webhook(host, "/orchestrators/renamed_flow"),
                               params={"code": host.system_key, "version": "3.0"}, json=3, timeout=10)
    assert [by_default["output"]["version"], wait_done(named.json())["output"]["version"],
            wait_done(by_webhook.json())["output"]["version"]] == ["1.0", "2.1", "3.0"]


KB = 70


def test_70_kb_values_flow_through_queues_and_tables(shared_host, azurite):
    host = shared_host
    links = start(host, "large_payloads", {"kb": KB, "pad": "p" * (KB * 1024)})
    done = wait_done(links, timeout=60)
    assert done["runtimeStatus"] == "Completed"
    output = done["output"]
    assert (output["size"], output["input"], len(output["text"])) == (KB * 1024, KB * 1024, KB * 1024)

    container = ContainerClient.from_connection_string(azurite, f"{host.hub.lower()}-largemessages")
    names = [blob.name for blob in container.list_blobs(name_starts_with=links["id"] + "/")]
    messages = [name for name in names if "/message-" in name]
    properties = {name.split("/", 1)[1].split("-")[0] + ":" + name.split("-")[-2] for name in names
                  if "/message-" not in name}
    kinds = sorted(_kind(json.loads(gzip.decompress(container.download_blob(m).readall()))) for m in messages)
    assert kinds == ["activity input", "start"]  # an activity's result reaches its orchestration in process
    assert {"state:Input", "state:Output"} <= properties
    assert any(p.startswith("h") and p.endswith(":Events") for p in properties)  # the result, in the history
    assert sum("/state-Input-" in name for name in names) == 1  # uploaded once, not per episode

    history = requests.get(links["statusQueryGetUri"], params={"showHistory": "true", "showHistoryOutput": "true"},
                           timeout=10).json()
    completed = [e for e in history["historyEvents"] if e["EventType"] == "TaskCompleted"]
    assert len(completed) == 2 and len(completed[0]["Result"]) == KB * 1024

    assert requests.delete(links["purgeHistoryDeleteUri"], timeout=10).json() == {"instancesDeleted": 1}
    assert list(container.list_blobs(name_starts_with=links["id"] + "/")) == []


def _kind(message: dict) -> str:
    if "Items" in message:
        return "activity input"
    return "start" if message.get("Event", {}).get("EventType") == 0 else "activity result"
