"""kill -9 the host while a fan-out's activities are in flight, start it again: the
orchestration completes once with the right output, and no activity whose result was
already recorded runs again. kill -9 at each named point of creating an instance: a restart
ends with exactly one started instance."""
import json

import pytest
import requests
from azure.data.tables import TableClient

from tests.conftest import wait_until
from tests.host.conftest import APP_DIR, manage, records, start, wait_done

N = 8


def recorded_task_ids(connection: str, hub: str, instance_id: str) -> set[int]:
    """Task ids whose outcome is committed to the instance's history (the outcome's record)."""
    table = TableClient.from_connection_string(connection, f"{hub}Instances")
    rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": instance_id})
    events = [event for row in rows for event in json.loads(
        row["Events"] if row["RowKey"].startswith("h") else row.get("Tail") or "[]")]
    return {event["TaskScheduledId"] for event in events if event["EventType"] == 5}  # TaskCompleted


def test_kill_9_during_fan_out_loses_nothing_and_repeats_nothing_recorded(host, record_dir, azurite):
    links = start(host, "fan_out", {"n": N, "sleep": 0.4, "stagger": True, "tag": "crash"})
    wait_until(lambda: len(records(record_dir, "work", "crash")) >= 3, 30, 0.05, "first activities done")
    host.kill()
    recorded = recorded_task_ids(azurite, host.hub, links["id"])
    assert 0 < len(recorded) < N, "the kill should land while activities are in flight"

    host.start()  # same task hub, same storage
    done = wait_done(links, timeout=60)
    assert done["runtimeStatus"] == "Completed"
    assert done["output"] == sum(i * 10 for i in range(N))

    runs = records(record_dir, "work", "crash")
    for task_id in range(N):  # fan_out's activity i has task id i
        count = runs.count(f"crash:{task_id}")
        assert count >= 1
        if task_id in recorded:
            assert count == 1, f"activity {task_id} ran again although its result was recorded"
    history = manage(host, "status", links["id"]).json()["history"]
    assert history.count("ExecutionCompleted") == 1
    assert history.count("TaskCompleted") == N and history.count("TaskScheduled") == 0


# before_message last: the client's retry of that start must not meet another armed point
START_POINTS = ["durable.start.after_message", "durable.start.after_state", "durable.start.before_message"]


def test_kill_9_at_each_instance_creation_point_leaves_one_started_instance(function_host, record_dir):
    """The host dies at each named point of creating an instance (CCR_FAULT_POINT): before
    the start message, between it and the instance row, after both. After a restart the
    instance either does not exist (the client's retry starts it) or runs to completion,
    exactly once; never a Pending instance that nothing starts."""
    host = function_host(APP_DIR, env={"CCR_TEST_RECORD_DIR": str(record_dir),
                                       "CCR_FAULT_POINT": START_POINTS[0]})
    webhook = f"{host.url}/runtime/webhooks/durabletask"
    key = {"code": host.system_key}

    def create(point: str) -> requests.Response:
        return requests.post(f"{webhook}/orchestrators/fan_out/at-{point}", params=key,
                             json={"n": 2, "tag": point}, timeout=30)

    def finished(point: str) -> dict | None:
        """The instance once it has ended (404 until a start message left behind is adopted)."""
        body = requests.get(f"{webhook}/instances/at-{point}", params=key, timeout=10).json()
        return body if body and body["runtimeStatus"] not in ("Pending", "Running") else None

    for index, point in enumerate(START_POINTS):
        with pytest.raises(requests.ConnectionError):
            create(point)
        host.kill()  # reaped, and its output read to the end
        assert f"fault point {point} reached" in host.logs()
        host.env["CCR_FAULT_POINT"] = START_POINTS[index + 1] if index + 1 < len(START_POINTS) else ""
        host.start()
        if point == "durable.start.before_message":  # nothing was created: the client's retry starts it
            assert requests.get(f"{webhook}/instances/at-{point}", params=key, timeout=10).status_code == 404
            assert create(point).status_code == 202
        # finished before the next kill, so that kill cannot interrupt this instance's activities
        done = wait_until(lambda point=point: finished(point), 30, 0.2, f"instance at-{point} ended")
        assert (done["runtimeStatus"], done["output"]) == ("Completed", 10), point
        assert sorted(records(record_dir, "work", point)) == [f"{point}:0", f"{point}:1"], point
    assert "adopting a start message" in host.logs()
