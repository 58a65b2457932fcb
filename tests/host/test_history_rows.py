"""How the task hub commits an episode without an entity-group transaction (store.py): the
events stay in the state row's Tail while the instance runs, and move to a history row once
it ends; a history row counts only once the state row names it, so a row left by a host
that died between its two writes, or by a writer that lost the ETag race, is never read."""
import asyncio
import json
import secrets

import pytest
from azure.core.exceptions import ResourceModifiedError
from azure.data.tables import TableClient

from local_emulator.host.durable import history as h
from local_emulator.host.durable.engine import new_state
from local_emulator.host.durable.store import Instance, TaskHubStore


def _rows(connection: str, hub: str, instance_id: str) -> dict[str, dict]:
    table = TableClient.from_connection_string(connection, f"{hub}Instances")
    with table:
        return {row["RowKey"]: row for row in table.query_entities("PartitionKey eq @pk",
                                                                    parameters={"pk": instance_id})}


async def _with_store(connection: str, hub: str, scenario):
    store = TaskHubStore(connection, hub)
    await store.create()
    try:
        return await scenario(store)
    finally:
        await store.close()


async def _new_instance(store: TaskHubStore, instance_id: str) -> Instance:
    state = new_state("fan_out", "", "null", h.iso(h.utc_now()), h.new_key(), None)
    etag = await store.insert_new(instance_id, state)
    return Instance(instance_id, state, etag)


@pytest.fixture
def hub():
    return "t" + secrets.token_hex(5)


def test_a_running_instance_s_events_stay_in_its_state_row_and_move_out_when_it_ends(azurite, hub):
    started, scheduled = h.event(h.EXECUTION_STARTED, Name="fan_out"), h.event(h.TASK_SCHEDULED, 0, Name="work")
    completed = h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Completed", Result="1")

    async def scenario(store):
        instance = await _new_instance(store, "run-1")
        instance.state["RuntimeStatus"] = "Running"
        await store.commit(instance, [started, scheduled], reset_history=True)
        running = _rows(azurite, hub, "run-1")
        reloaded = await store.load("run-1")
        instance.state["RuntimeStatus"] = "Completed"
        await store.commit(instance, [completed], reset_history=False)
        return running, reloaded, await store.load("run-1")

    running, reloaded, finished = asyncio.run(_with_store(azurite, hub, scenario))
    assert list(running) == ["state"]  # one write per episode while it runs
    assert json.loads(running["state"]["Tail"]) == [started, scheduled]
    assert reloaded.history == [started, scheduled]
    rows = _rows(azurite, hub, "run-1")
    history_keys = [key for key in rows if key.startswith("h")]
    assert len(history_keys) == 1 and rows["state"]["Tail"] == ""  # the ended instance's row is lean again
    assert json.loads(rows["state"]["HistoryRows"]) == history_keys
    assert finished.history == [started, scheduled, completed]


def test_a_history_row_no_state_row_names_is_never_read(azurite, hub):
    """A host that died after writing a history row and before the state row update: the row
    is left over, its events were never committed, and the retried episode is read once."""
    started = h.event(h.EXECUTION_STARTED, Name="fan_out")

    async def scenario(store):
        instance = await _new_instance(store, "run-2")
        await store.commit(instance, [started], reset_history=True)
        leftover = {"PartitionKey": "run-2", "RowKey": f"h{instance.execution_id}-000002-deadbeef",
                    "Events": json.dumps([h.event(h.TASK_COMPLETED, TaskScheduledId=0, Result="\"never\"")])}
        await store.instances.upsert_entity(leftover)
        return await store.load("run-2")

    loaded = asyncio.run(_with_store(azurite, hub, scenario))
    assert loaded.history == [started]
    assert not any(event["EventType"] == h.TASK_COMPLETED for event in loaded.history)


def test_the_writer_that_loses_the_etag_race_leaves_nothing_that_is_read(azurite, hub):
    ours = h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Completed", Result="\"ours\"")
    theirs = h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Completed", Result="\"theirs\"")

    async def scenario(store):
        first = await _new_instance(store, "run-3")
        await store.commit(first, [h.event(h.EXECUTION_STARTED, Name="fan_out")], reset_history=True)
        second = await store.load("run-3")  # both now hold the same ETag
        first.state["RuntimeStatus"] = second.state["RuntimeStatus"] = "Completed"
        await store.commit(first, [ours], reset_history=False)
        with pytest.raises(ResourceModifiedError):
            await store.commit(second, [theirs], reset_history=False)
        return await store.load("run-3")

    loaded = asyncio.run(_with_store(azurite, hub, scenario))
    assert loaded.history[-1]["Result"] == "\"ours\""
    assert all(event.get("Result") != "\"theirs\"" for event in loaded.history)
    assert len([key for key in _rows(azurite, hub, "run-3") if key.startswith("h")]) == 2  # one is dead


def test_history_rows_written_before_the_state_row_named_them_are_still_read(azurite, hub):
    """An instance committed by an older host (no HistoryRows): its execution's rows count."""
    events = [h.event(h.EXECUTION_STARTED, Name="fan_out"), h.event(h.TASK_SCHEDULED, 0, Name="work")]

    async def scenario(store):
        instance = await _new_instance(store, "run-4")
        state_row = dict(await store.instances.get_entity("run-4", "state"))
        del state_row["HistoryRows"]
        await store.instances.upsert_entity(state_row, mode="replace")
        await store.instances.upsert_entity({"PartitionKey": "run-4", "RowKey": f"h{instance.execution_id}-000001",
                                             "Events": json.dumps(events)})
        return await store.load("run-4")

    assert asyncio.run(_with_store(azurite, hub, scenario)).history == events
