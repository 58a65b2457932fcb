"""kill -9 the host while a fan-out's activities are in flight, start it again: the
orchestration completes once with the right output, and no activity whose result was
already recorded runs again."""
from azure.data.tables import TableClient

from tests.conftest import wait_until
from tests.host.conftest import manage, records, start, wait_done

N = 8


def recorded_task_ids(connection: str, hub: str, instance_id: str) -> set[int]:
    table = TableClient.from_connection_string(connection, f"{hub}Activities")
    rows = table.query_entities("PartitionKey eq @pk", parameters={"pk": instance_id})
    return {int(row["RowKey"].rsplit("-", 1)[1]) for row in rows}


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
    assert history.count("TaskScheduled") == N and history.count("TaskCompleted") == N
