"""Each Durable feature end to end: the test app's orchestrators run under the local host,
driven by the azure-functions-durable SDK, with task-hub state in Azurite."""
import uuid

import pytest
import requests

from tests.conftest import wait_until
from tests.host.conftest import manage, records, start, status, wait_done


@pytest.fixture
def host(shared_host):
    return shared_host


@pytest.fixture
def record_dir(shared_records):
    return shared_records


def test_fan_out_runs_every_activity_once(host, record_dir):
    links = start(host, "fan_out", {"n": 6, "tag": "fan"})
    done = wait_done(links)
    assert done["runtimeStatus"] == "Completed"
    assert done["output"] == sum(i * 10 for i in range(6))
    assert sorted(records(record_dir, "work", "fan")) == sorted(f"fan:{i}" for i in range(6))
    history = manage(host, "status", links["id"]).json()["history"]
    assert history.count("TaskCompleted") == 6 and history.count("TaskScheduled") == 0  # folded in, as Azure
    assert history[0] == "ExecutionStarted" and history[-1] == "ExecutionCompleted"


def test_scheduled_activities_are_recorded_while_they_run_though_their_commit_waits_for_outcomes(host, record_dir):
    """The episode that schedules activities holds its commit for their outcomes only a
    moment (deferred_commits.py): while slow activities run, the status already shows the
    instance Running with its tasks scheduled."""
    links = start(host, "fan_out", {"n": 2, "sleep": 2.0, "tag": "slow"})

    def scheduled():
        body = status(links, showHistory="true")
        kinds = [event["EventType"] for event in body.get("historyEvents") or []]
        return body if kinds.count("TaskScheduled") == 2 else None
    running = wait_until(scheduled, 1.5, 0.05, "scheduled tasks in the status")
    assert running["runtimeStatus"] == "Running" and records(record_dir, "work", "slow") == []
    assert wait_done(links)["output"] == 10


def test_activity_retry_is_owned_by_the_host(host, record_dir):
    key = uuid.uuid4().hex
    links = start(host, "with_retry", {"key": key, "fail": 2})
    done = wait_done(links)
    assert (done["runtimeStatus"], done["output"]) == ("Completed", "ok after 3")
    assert len(records(record_dir, "flaky-" + key)) == 3
    history = manage(host, "status", links["id"]).json()["history"]
    assert history.count("TaskFailed") == 2 and history.count("TimerFired") == 2
    assert history.count("TaskCompleted") == 1  # three attempts, each its TaskScheduled folded in


def test_exhausted_retries_reach_the_orchestrator_as_an_exception(host, record_dir):
    key = uuid.uuid4().hex
    links = start(host, "retry_exhausted", key)
    done = wait_done(links)
    assert done["runtimeStatus"] == "Completed"
    assert done["output"] == {"failed": True, "after": 70}
    assert len(records(record_dir, "flaky-" + key)) == 2
    assert records(record_dir, "work", "after") == ["after:7"]


def test_durable_timer_fires_after_its_time(host):
    done = wait_done(start(host, "timer"))
    assert done["runtimeStatus"] == "Completed"
    assert done["output"] >= 1.5


def test_external_event_wins_over_timeout_and_custom_status_is_visible(host):
    links = start(host, "approval", {"timeout": 60})
    wait_until(lambda: status(links)["customStatus"] == {"stage": "waiting"}, 20, message="custom status")
    assert manage(host, "raise", links["id"], {"event": "approve", "data": {"by": "tdc"}}).status_code == 202
    done = wait_done(links)
    assert done["output"] == {"approved": {"by": "tdc"}}
    assert done["customStatus"] == {"stage": "approved"}


def test_timeout_wins_when_no_event_comes(host):
    done = wait_done(start(host, "approval", {"timeout": 1}))
    assert done["output"] == {"approved": None}
    assert done["customStatus"] == {"stage": "timed out"}


def test_raise_event_via_public_webhook_and_unknown_instance(host):
    links = start(host, "approval", {"timeout": 60})
    wait_until(lambda: status(links)["runtimeStatus"] == "Running", 20, message="running")
    url = links["sendEventPostUri"].replace("{eventName}", "approve")
    assert requests.post(url, json="yes", timeout=10).status_code == 202
    assert wait_done(links)["output"] == {"approved": "yes"}
    assert requests.post(url, json="again", timeout=10).status_code == 410
    missing = links["sendEventPostUri"].replace(links["id"], "no-such-instance").replace("{eventName}", "x")
    assert requests.post(missing, json=1, timeout=10).status_code == 404


def test_sub_orchestrations(host):
    links = start(host, "parent", 5)
    done = wait_done(links)
    assert (done["runtimeStatus"], done["output"]) == ("Completed", [11, 23])
    child = status({"statusQueryGetUri": links["statusQueryGetUri"].replace(links["id"], "fixed-child-" + links["id"])})
    assert (child["name"], child["runtimeStatus"], child["output"]) == ("child", "Completed", 23)


def test_continue_as_new_restarts_with_new_input_and_fresh_history(host):
    links = start(host, "counter", {"n": 0, "seen": []})
    done = wait_done(links)
    assert (done["runtimeStatus"], done["output"]) == ("Completed", [0, 2, 4, 6])
    history = manage(host, "status", links["id"]).json()["history"]
    assert history.count("ExecutionStarted") == 1 and history.count("TaskCompleted") == 1


def test_orchestrator_exception_fails_the_instance(host):
    done = wait_done(start(host, "broken"))
    assert done["runtimeStatus"] == "Failed"
    assert "orchestrator gave up" in done["output"]


def test_terminate_and_purge_through_the_sdk_client(host):
    links = start(host, "forever")
    wait_until(lambda: status(links)["runtimeStatus"] == "Running", 20, message="running")
    assert links["id"] in manage(host, "running", "-").json()
    assert manage(host, "purge", links["id"]).status_code == 500  # running instances are not purged
    assert manage(host, "terminate", links["id"], {"reason": "operator"}).status_code == 202
    done = wait_done(links)
    assert (done["runtimeStatus"], done["output"]) == ("Terminated", "operator")
    assert manage(host, "purge", links["id"]).json() == {"deleted": 1}
    assert requests.get(links["statusQueryGetUri"], timeout=10).status_code == 404


def test_starting_a_running_instance_id_does_not_start_a_second_run(host, record_dir):
    only_once = "only-once-" + uuid.uuid4().hex
    links = start(host, "forever", instance_id=only_once)
    wait_until(lambda: status(links)["runtimeStatus"] == "Running", 20, message="running")
    refused = manage(host, "start", only_once, {"name": "fan_out", "input": {"n": 2, "tag": "first"}})
    assert refused.status_code == 409 and "already exists" in refused.json()["refused"]
    assert status(links)["name"] == "forever" and records(record_dir, "work", "first") == []
    manage(host, "terminate", only_once)
    wait_done(links)
    again = start(host, "fan_out", {"n": 2, "tag": "second"}, instance_id=only_once)
    assert wait_done(again)["output"] == 10  # a finished id may be started again
    assert sorted(records(record_dir, "work", "second")) == ["second:0", "second:1"]


def instance_ids(host) -> set[str]:
    listing = requests.get(f"{host.url}/runtime/webhooks/durabletask/instances",
                           params={"code": host.system_key}, timeout=10).json()
    return {item["instanceId"] for item in listing}


def test_unknown_orchestrator_or_bad_input_is_a_clear_error_and_starts_nothing(host):
    before = instance_ids(host)
    base = f"{host.url}/runtime/webhooks/durabletask/orchestrators"
    response = requests.post(f"{base}/nope/id-nope", params={"code": host.system_key}, json=1, timeout=10)
    assert response.status_code == 400 and "nope" in response.json()["ExceptionMessage"]
    garbled = requests.post(f"{base}/fan_out/id-garbled", params={"code": host.system_key}, data=b"{not json",
                            timeout=10)
    assert garbled.status_code == 400 and "not JSON" in garbled.text
    for bad_id in ("id%23hash", "id%3Fquery", "id%5Cback", "id%01ctl"):  # not storable as a table key
        refused = requests.post(f"{base}/fan_out/{bad_id}", params={"code": host.system_key}, json=1, timeout=10)
        assert refused.status_code == 400 and "must not contain" in refused.json()["ExceptionMessage"]
    instances = f"{host.url}/runtime/webhooks/durabletask/instances/id%23hash"
    key = {"code": host.system_key}
    assert requests.get(instances, params=key, timeout=10).status_code == 404
    assert requests.post(f"{instances}/terminate", params=key, timeout=10).status_code == 404
    assert requests.post(f"{instances}/raiseEvent/x", params=key, json=1, timeout=10).status_code == 404
    unauthenticated = requests.post(f"{base}/fan_out/id-nokey", json={"n": 1}, timeout=10)
    assert unauthenticated.status_code == 401
    assert instance_ids(host) == before


def test_malformed_queue_messages_are_dropped_without_stopping_the_hub(host, record_dir, azurite):
    from azure.storage.queue import QueueClient
    for queue in ("control", "workitems"):
        QueueClient.from_connection_string(azurite, f"{host.hub.lower()}-{queue}").send_message("{not json")
    done = wait_done(start(host, "fan_out", {"n": 2, "tag": "after-garbage"}))
    assert (done["runtimeStatus"], done["output"]) == ("Completed", 10)
    wait_until(lambda: host.logs().count("dropping a malformed message") == 2, 20, message="both dropped")


def test_instance_query_filters(host):
    tag = "query-" + uuid.uuid4().hex[:8]
    wait_done(start(host, "fan_out", {"n": 1, "tag": tag}, instance_id=tag + "-a"))
    url, key = f"{host.url}/runtime/webhooks/durabletask/instances", {"code": host.system_key}

    def ids(**params) -> set[str]:
        response = requests.get(url, params={**key, "instanceIdPrefix": tag, **params}, timeout=10)
        assert response.status_code == 200, response.text
        return {item["instanceId"] for item in response.json()}
    assert ids() == ids(runtimeStatus="Completed") == ids(createdTimeFrom="2000-01-01T00:00:00Z") == {tag + "-a"}
    assert ids(runtimeStatus="Running,Failed") == ids(createdTimeTo="2000-01-01T00:00:00Z") == set()
    bad = requests.get(url, params={**key, "createdTimeFrom": "yesterday"}, timeout=10)
    assert bad.status_code == 400
