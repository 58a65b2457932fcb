"""Task-hub state in Azurite, so a killed host loses nothing:
- table <hub>Instances: per instance (PartitionKey = instance id) one row `state`, one row
  per orchestration episode (`h<execution>-<n>`, its history events as JSON) and, while the
  instance is suspended, one row per batch of events it buffers (`b<execution>-<n>`), written
  in one entity-group transaction guarded by the state row's ETag (an activity's outcome is
  recorded there, in its orchestration's history, before its work item is deleted);
- queues <hub>-control (orchestrator events, timers as invisible messages) and
  <hub>-workitems (activity executions);
- container <hub>-largemessages: messages and properties too large for a queue or a table,
  compressed, as DurableTask.AzureStorage keeps them (large_payloads.py)."""
from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from local_emulator.host.durable.large_payloads import BLOB_SUFFIX, LargePayloads
from local_emulator.host.durable.transport import direct_transport

STATE_ROW = "state"
TERMINAL = ("Completed", "Failed", "Terminated")
ACTIVE = ("Pending", "Running", "Suspended")
_NOT_IN_KEYS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")  # what a table PartitionKey refuses


def storable_id(instance_id: str) -> bool:
    """Whether an instance id can be a PartitionKey (no such instance can exist otherwise)."""
    return not _NOT_IN_KEYS.search(instance_id)


@dataclass
class Instance:
    instance_id: str
    state: dict
    etag: str | None = None
    history: list[dict] = field(default_factory=list)
    history_rows: list[str] = field(default_factory=list)
    redelivered: bool = False  # being rebuilt from messages a previous attempt may have handled
    work_items: list[dict] = field(default_factory=list)  # activities scheduled, not yet sent
    buffered: list[dict] = field(default_factory=list)  # events held while suspended (stored)
    buffer_rows: list[str] = field(default_factory=list)
    new_buffered: list[dict] = field(default_factory=list)  # to store with the next commit
    release_buffer: bool = False  # delete the buffer rows with the next commit (resumed)

    @property
    def status(self) -> str:
        return self.state["RuntimeStatus"]

    @property
    def execution_id(self) -> str:
        return self.state["ExecutionId"]


class TaskHubStore:
    def __init__(self, connection_string: str, hub: str):
        self.hub = hub
        self.instances = TableClient.from_connection_string(connection_string, f"{hub}Instances",
                                                            transport=direct_transport())
        self.control = QueueClient.from_connection_string(connection_string, f"{hub.lower()}-control",
                                                          transport=direct_transport())
        self.workitems = QueueClient.from_connection_string(connection_string, f"{hub.lower()}-workitems",
                                                            transport=direct_transport())
        self.large = LargePayloads(connection_string, hub)
        # set when this process sends to a queue, so its idle dispatcher looks at once
        self.sent = {self.control.queue_name: asyncio.Event(), self.workitems.queue_name: asyncio.Event()}

    async def create(self) -> None:
        try:
            await self.instances.create_table()
        except ResourceExistsError:
            pass
        for queue in (self.control, self.workitems):
            try:
                await queue.create_queue()
            except ResourceExistsError:
                pass
        await self.large.create()

    async def close(self) -> None:
        for client in (self.instances, self.control, self.workitems, self.large):
            await client.close()

    # instances -------------------------------------------------------------------------
    async def load_state(self, instance_id: str) -> Instance | None:
        if not storable_id(instance_id):
            return None
        try:
            row = await self.instances.get_entity(instance_id, STATE_ROW)
        except ResourceNotFoundError:
            return None
        return Instance(instance_id, _unpack_state(await self._inflate(row)), row.metadata["etag"])

    async def load(self, instance_id: str) -> Instance | None:
        """State and the current execution's history, in order."""
        if not storable_id(instance_id):
            return None
        rows = [row async for row in self.instances.query_entities(
            "PartitionKey eq @pk", parameters={"pk": instance_id})]
        state_rows = [row for row in rows if row["RowKey"] == STATE_ROW]
        if not state_rows:
            return None
        instance = Instance(instance_id, _unpack_state(await self._inflate(state_rows[0])),
                            state_rows[0].metadata["etag"])
        episodes = sorted((row for row in rows if row["RowKey"].startswith("h")), key=lambda r: r["RowKey"])
        for row in episodes:
            instance.history_rows.append(row["RowKey"])
            if row["RowKey"].startswith(f"h{instance.execution_id}-"):
                instance.history.extend(json.loads((await self._inflate(row))["Events"]))
        buffers = sorted((row for row in rows if row["RowKey"].startswith("b")), key=lambda r: r["RowKey"])
        for row in buffers:
            instance.buffer_rows.append(row["RowKey"])
            if row["RowKey"].startswith(f"b{instance.execution_id}-"):
                instance.buffered.extend(json.loads((await self._inflate(row))["Events"]))
        return instance

    async def insert_new(self, instance_id: str, state: dict) -> str | None:
        """Create the state row and return its ETag; None if the instance already exists."""
        try:
            metadata = await self.instances.create_entity(await self.large.offload(_pack_state(instance_id, state)))
            return metadata["etag"]
        except ResourceExistsError:
            return None

    async def commit(self, instance: Instance, new_events: list[dict], reset_history: bool) -> None:
        """Append one episode (or start a fresh history) and update the state row atomically."""
        ops = []
        if reset_history:
            ops += [("delete", {"PartitionKey": instance.instance_id, "RowKey": rk})
                    for rk in instance.history_rows]
            instance.history_rows = []
        ops += await self._buffer_operations(instance, release=reset_history or instance.release_buffer)
        state_entity = _pack_state(instance.instance_id, instance.state)
        if new_events:
            state_entity["Episodes"] = instance.state.get("Episodes", 0) + 1
        await self.large.offload(state_entity)
        if instance.etag:
            ops.append(("update", state_entity, {"mode": "replace", "etag": instance.etag,
                                                 "match_condition": MatchConditions.IfNotModified}))
        else:
            ops.append(("upsert", state_entity, {"mode": "replace"}))
        if new_events:
            episode = instance.state["Episodes"] = instance.state.get("Episodes", 0) + 1
            row_key = f"h{instance.execution_id}-{episode:06d}"
            ops.append(("upsert", await self.large.offload({"PartitionKey": instance.instance_id, "RowKey": row_key,
                                                            "Events": json.dumps(new_events)}), {"mode": "replace"}))
            instance.history_rows.append(row_key)
        state_at = len(ops) - (2 if new_events else 1)
        for start in range(0, len(ops), 99):  # entity-group transactions hold at most 100
            results = await self.instances.submit_transaction(ops[start:start + 99])
            if start <= state_at < start + 99:
                instance.etag = results[state_at - start]["etag"]

    async def _buffer_operations(self, instance: Instance, release: bool) -> list:
        """Rows of the events a suspended instance holds: the released ones deleted, newly
        held ones added (numbered on from a counter in the state, never reusing a key)."""
        ops = []
        if release:
            ops += [("delete", {"PartitionKey": instance.instance_id, "RowKey": rk}) for rk in instance.buffer_rows]
            instance.buffer_rows, instance.buffered = [], []
        if instance.new_buffered:
            number = instance.state["BufferRows"] = instance.state.get("BufferRows", 0) + 1
            row_key = f"b{instance.execution_id}-{number:06d}"
            ops.append(("upsert", await self.large.offload({"PartitionKey": instance.instance_id, "RowKey": row_key,
                                                            "Events": json.dumps(instance.new_buffered)}),
                        {"mode": "replace"}))
            instance.buffer_rows.append(row_key)
            instance.buffered.extend(instance.new_buffered)
        instance.new_buffered, instance.release_buffer = [], False
        return ops

    async def replace_state(self, instance: Instance) -> None:
        entity = await self.large.offload(_pack_state(instance.instance_id, instance.state))
        metadata = await self.instances.update_entity(
            entity, mode="replace", etag=instance.etag, match_condition=MatchConditions.IfNotModified)
        instance.etag = metadata["etag"]

    async def purge(self, instance_id: str) -> int:
        rows = [row async for row in self.instances.query_entities(
            "PartitionKey eq @pk", parameters={"pk": instance_id}, select=["PartitionKey", "RowKey"])]
        for row in rows:
            await self.instances.delete_entity(instance_id, row["RowKey"])
        await self.large.purge(instance_id)
        return 1 if any(row["RowKey"] == STATE_ROW for row in rows) else 0

    async def query_states_with_ids(self, statuses: set[str] | None = None,
                                    id_prefix: str = "") -> list[tuple[str, dict]]:
        """(instance id, state) of every instance, or of those with one of `statuses` and an id
        starting with `id_prefix` (filtered by the table service, not here)."""
        return [item async for item in self.iter_states(statuses, id_prefix)]

    async def iter_states(self, statuses: set[str] | None = None, id_prefix: str = "", after: str | None = None):
        """As query_states_with_ids, lazily, and only ids sorting after `after` (a page's last)."""
        clauses, parameters = ["RowKey eq @rk"], {"rk": STATE_ROW}
        if statuses:
            names = [f"s{i}" for i in range(len(statuses))]
            # the SDK substitutes `@name` only where a space follows it
            clauses.append("( " + " or ".join(f"RuntimeStatus eq @{name}" for name in names) + " )")
            parameters.update(zip(names, sorted(statuses)))
        if id_prefix:
            clauses.append("PartitionKey ge @low and PartitionKey lt @high")
            parameters.update(low=id_prefix, high=id_prefix + "\uffff")
        if after is not None:
            clauses.append("PartitionKey gt @after")
            parameters["after"] = after
        async for row in self.instances.query_entities(" and ".join(clauses), parameters=parameters):
            yield row["PartitionKey"], _unpack_state(await self._inflate(row))

    # queues -----------------------------------------------------------------------------
    async def send_control(self, message: dict, delay_seconds: int = 0) -> None:
        await self.control.send_message(await self.large.outgoing(message),
                                        visibility_timeout=max(0, int(delay_seconds)) or None, time_to_live=-1)
        if not delay_seconds:
            self.sent[self.control.queue_name].set()

    async def send_workitem(self, message: dict) -> None:
        await self.workitems.send_message(await self.large.outgoing(message), time_to_live=-1)
        self.sent[self.workitems.queue_name].set()

    async def body(self, message) -> dict:
        """A received message's JSON body, read back from its blob if it was offloaded."""
        return await self.large.incoming(message.content)

    async def _inflate(self, row) -> dict:
        """A row with its offloaded properties read back (no request when it has none)."""
        if not any(key.endswith(BLOB_SUFFIX) for key in row):
            return row
        return await self.large.inflate(row)

    @staticmethod
    async def receive(queue: QueueClient, max_messages: int, lease_seconds: int) -> list:
        pager = queue.receive_messages(messages_per_page=max_messages, max_messages=max_messages,
                                       visibility_timeout=lease_seconds)
        return [message async for message in pager]


_JSON_FIELDS = ("Input", "Output", "CustomStatus")


def _pack_state(instance_id: str, state: dict) -> dict:
    entity = {"PartitionKey": instance_id, "RowKey": STATE_ROW}
    for key, value in state.items():
        entity[key] = json.dumps(value) if key in _JSON_FIELDS else value
    return entity


def _unpack_state(row) -> dict:
    state = {k: v for k, v in row.items() if k not in ("PartitionKey", "RowKey")}
    for key in _JSON_FIELDS:
        if key in state and isinstance(state[key], str):
            state[key] = json.loads(state[key])
    return state
