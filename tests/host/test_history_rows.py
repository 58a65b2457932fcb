"""How the task hub commits an episode without an entity-group transaction (store.py): the
events stay in the state row's Tail while they are few, and move to a history row when they
grow; a history row counts only once the state row names it, so a row left by a host that
died between its two writes, or by a writer that lost the ETag race, is never read."""
import asyncio
import json
import secrets

import pytest
from azure.core.exceptions import ResourceModifiedError
from azure.data.tables import TableClient

from local_emulator.host.durable import history as h
from local_emulator.host.durable.engine import new_state
from local_emulator.host.durable.store import TAIL_CHARS, Instance, TaskHubStore


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


def test_a_short_history_stays_in_the_state_row_and_a_long_one_moves_to_a_history_row(azurite, hub):
    started, scheduled = h.event(h.EXECUTION_STARTED, Name="fan_out"), h.event(h.TASK_SCHEDULED, 0, Name="work")
    big = h.event(h.TASK_COMPLETED, TaskScheduledId=0, Result=json.dumps("r" * TAIL_CHARS))
    completed = h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Completed", Result="1")

    async def scenario(store):
        instance = await _new_instance(store, "run-1")
        instance.state["RuntimeStatus"] = "Running"
        await store.commit(instance, [started, scheduled], reset_history=True)
        short = _rows(azurite, hub, "run-1")
        reloaded = await store.load("run-1")
        await store.commit(instance, [big], reset_history=False)
        instance.state["RuntimeStatus"] = "Completed"
        await store.commit(instance, [completed], reset_history=False)
        listed = await store.query_states_with_ids({"Completed"})
        return short, reloaded, await store.load("run-1"), listed

    short, reloaded, finished, listed = asyncio.run(_with_store(azurite, hub, scenario))
    assert list(short) == ["state"]  # one write per episode while the history is short
    assert json.loads(short["state"]["Tail"]) == [started, scheduled]
    assert reloaded.history == [started, scheduled]
    rows = _rows(azurite, hub, "run-1")
    history_keys = [key for key in rows if key.startswith("h")]
    assert len(history_keys) == 1 and json.loads(rows["state"]["Tail"]) == [completed]
    assert json.loads(rows["state"]["HistoryRows"]) == history_keys
    assert finished.history == [started, scheduled, big, completed]
    (instance_id, state), = listed  # a listing reads the state, not the history it carries
    assert instance_id == "run-1" and state["RuntimeStatus"] == "Completed"
    assert "Tail" not in state and "HistoryRows" not in state and state["Name"] == "fan_out"


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
    # results too long for the state row's tail: each writer writes a history row first
    ours = h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Completed", Result=json.dumps("ours" * TAIL_CHARS))
    theirs = h.event(h.EXECUTION_COMPLETED, OrchestrationStatus="Completed", Result=json.dumps("theirs" * TAIL_CHARS))

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
    assert loaded.history[-1] == ours
    assert theirs not in loaded.history
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
