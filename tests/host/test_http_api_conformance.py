"""The Durable HTTP API as the extension's HttpApiHandler answers it (issue 13), on one host
for the module: check-status codes and headers, timestamps, purge by filter."""
import datetime as dt
import re
import time

import pytest
import requests

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
