"""Task-hub state in Azurite, so a killed host loses nothing:
- table <hub>Instances: per instance (PartitionKey = instance id) one row `state` (holding
  the latest episodes' events in its `Tail` while they are few; listings do not read it), history
  rows (`h<execution>-<n>-<unique>`, events as JSON, written when the tail moves out, valid
  once the state row's `HistoryRows` names them) and, while the instance is suspended (or
  Failed, holding late outcomes for a rewind), one row per batch of events it buffers
  (`b<execution>-<n>`); every change is committed by the
  state row's update, guarded by its ETag (an activity's outcome is recorded there, in its
  orchestration's history, before its work item is deleted);
- queues <hub>-control (orchestrator events, timers as invisible messages) and
  <hub>-workitems (activity executions); messages ready together are sent as one
  (group_send.py), and those this process sends to be handled now go to its own dispatchers
  already leased (take_sent_workitems, take_sent_control), never received separately;
- the hottest requests (state-row writes, puts, receives and deletes of messages, instance
  listings) skip the SDK's generic (de)serializers (row_writes.py, message_ops.py, row_queries.py),
  the first three also its pipeline (shared_key.py);
- container <hub>-largemessages: messages and properties too large for a queue or a table,
  compressed, as DurableTask.AzureStorage keeps them (large_payloads.py)."""
from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from local_emulator.host.durable import group_send, message_ops, row_queries, row_writes
from local_emulator.host.durable.large_payloads import BLOB_SUFFIX, LargePayloads
from local_emulator.host.durable.transport import direct_transport

STATE_ROW = "state"
TAIL = "Tail"  # state-row property: the events of the latest episodes, as JSON
TAIL_CHARS = 16 * 1024  # a longer tail moves to a history row
HISTORY_ROWS = "HistoryRows"  # state-row property: the committed history rows' keys, as JSON
TERMINAL = ("Completed", "Failed", "Terminated")
ACTIVE = ("Pending", "Running", "Suspended")
_NOT_IN_KEYS = re.compile(r"[/\\#?\x00-\x1f\x7f-\x9f]")  # what a table PartitionKey refuses


def storable_id(instance_id: str) -> bool:
    """Whether an instance id can be a PartitionKey (no such instance can exist otherwise)."""
    return not _NOT_IN_KEYS.search(instance_id)


@dataclass
class MessageShare:
    """One instance's share of a control message that carries several bodies."""
    message: object
    shares: list[int]  # shares not yet acknowledged, counted down by every share

    @property
    def dequeue_count(self) -> int:
        return self.message.dequeue_count


class SendingWorkItem:
    """A work-item message this process is putting to its own queue, leased to itself: its
    body at once, the message as the queue stored it (id, pop receipt) once the put is done."""
    dequeue_count = 0  # never received: a first delivery

    def __init__(self, body: dict, put: asyncio.Future):
        self.body = body
        self._put = put

    async def persisted(self):
        """The stored message; raises what the put raised (then nothing may report for it)."""
        return await asyncio.shield(self._put)

    @property
    def id(self) -> str | None:
        """The stored message's id; None until (or unless) the put succeeded."""
        if self._put.done() and not self._put.cancelled() and self._put.exception() is None:
            return self._put.result().id
        return None


def is_redelivery(handle) -> bool:
    """Whether a control message may have been handled before: received more than once, or
    received at all after its sender ran it itself (take_sent_control)."""
    message = handle.message if isinstance(handle, MessageShare) else handle
    return message.dequeue_count > 1 or (getattr(message, "sent_leased", False) and message.dequeue_count > 0)


@dataclass
class Instance:
    instance_id: str
    state: dict
    etag: str | None = None
    history: list[dict] = field(default_factory=list)
    history_rows: list[str] = field(default_factory=list)
    tail: list[dict] = field(default_factory=list)  # the latest events, kept in the state row
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
        self._workitem_lease: int | None = None
        self._control_lease: int | None = None
        self._run_sent_control: Callable[[object], None] | None = None
        self._run_sent_workitem: Callable[[object], None] | None = None
        self._control_sender = group_send.GroupSender(self._put_control, group_send.merge_control)
        self._workitem_sender = group_send.GroupSender(self._put_workitem, group_send.merge_work_items,
                                                       group_send.work_item_count, group_send.MAX_ITEMS)
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
        await self._control_sender.stop()
        await self._workitem_sender.stop()
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
        rows = [row async for row in row_queries.query(self.instances, "PartitionKey eq @pk", {"pk": instance_id}, None)]
        state_rows = [row for row in rows if row["RowKey"] == STATE_ROW]
        if not state_rows:
            return None
        instance = Instance(instance_id, _unpack_state(await self._inflate(state_rows[0])),
                            state_rows[0].metadata["etag"])
        episodes = sorted((row for row in rows if row["RowKey"].startswith("h")), key=lambda r: r["RowKey"])
        if HISTORY_ROWS not in instance.state:  # written before the state row named its history rows
            instance.state[HISTORY_ROWS] = json.dumps(
                [row["RowKey"] for row in episodes if row["RowKey"].startswith(f"h{instance.execution_id}-")])
        committed = set(json.loads(instance.state[HISTORY_ROWS]))
        for row in episodes:
            instance.history_rows.append(row["RowKey"])
            if row["RowKey"] in committed:  # not a row whose state update never happened
                instance.history.extend(json.loads((await self._inflate(row))["Events"]))
        instance.tail = json.loads(state_rows[0].get(TAIL) or "[]")
        instance.history.extend(instance.tail)
        buffers = sorted((row for row in rows if row["RowKey"].startswith("b")), key=lambda r: r["RowKey"])
        for row in buffers:
            instance.buffer_rows.append(row["RowKey"])
            if row["RowKey"].startswith(f"b{instance.execution_id}-"):
                instance.buffered.extend(json.loads((await self._inflate(row))["Events"]))
        return instance

    async def insert_new(self, instance_id: str, state: dict) -> str | None:
        """Create the state row and return its ETag; None if the instance already exists."""
        try:
            return await row_writes.insert(self.instances, await self.large.offload(_pack_state(instance_id, state)))
        except ResourceExistsError:
            return None

    async def commit(self, instance: Instance, new_events: list[dict], reset_history: bool) -> None:
        """Append one episode (or start a fresh history), committed by the state row's update
        (guarded by its ETag): in the state row's tail alone while it is short (one entity
        write), else the tail and the episode move to a new history
        row written first, which counts once the state row names it (one transaction instead
        when rows are deleted or held back as well)."""
        ops = []
        if reset_history:
            ops += [("delete", {"PartitionKey": instance.instance_id, "RowKey": rk})
                    for rk in instance.history_rows]
            instance.history_rows, instance.tail = [], []
            instance.state[HISTORY_ROWS] = "[]"
        ops += await self._buffer_operations(instance, release=reset_history or instance.release_buffer)
        tail = instance.tail + new_events
        tail_json = json.dumps(tail) if tail else ""
        keep_tail = not ops and len(tail_json) <= TAIL_CHARS
        state_entity = _pack_state(instance.instance_id, instance.state)
        state_entity[TAIL] = tail_json if keep_tail else ""
        if new_events:
            state_entity["Episodes"] = instance.state.get("Episodes", 0) + 1
        await self.large.offload(state_entity)
        if keep_tail:
            await self._write_state_row(instance, state_entity)
            if new_events:
                instance.state["Episodes"] = state_entity["Episodes"]
            instance.tail = tail
            return
        # the tail and this episode move to a history row of their own (a unique key: a writer
        # that loses the race for the state row leaves only a row no state row names)
        history_row = None
        if tail:
            row_key = f"h{instance.execution_id}-{state_entity.get('Episodes', 0):06d}-{uuid.uuid4().hex[:8]}"
            history_row = await self.large.offload({"PartitionKey": instance.instance_id, "RowKey": row_key,
                                                    "Events": json.dumps(tail)})
            state_entity[HISTORY_ROWS] = json.dumps(json.loads(instance.state.get(HISTORY_ROWS) or "[]") + [row_key])
        if ops:  # rows to delete or hold back as well: all of it in one transaction
            if history_row is not None:
                ops.append(("upsert", history_row, {"mode": "replace"}))
            state_at = len(ops)
            if instance.etag:
                ops.append(("update", state_entity, {"mode": "replace", "etag": instance.etag,
                                                     "match_condition": MatchConditions.IfNotModified}))
            else:
                ops.append(("upsert", state_entity, {"mode": "replace"}))
            for start in range(0, len(ops), 99):  # entity-group transactions hold at most 100
                results = await self.instances.submit_transaction(ops[start:start + 99])
                if start <= state_at < start + 99:
                    instance.etag = results[state_at - start]["etag"]
        else:  # the history row, then the state row naming it: two plain writes, no transaction
            if history_row is not None:
                await row_writes.replace(self.instances, history_row)
            await self._write_state_row(instance, state_entity)
        instance.state["Episodes"] = state_entity.get("Episodes", 0)
        if history_row is not None:
            instance.state[HISTORY_ROWS] = state_entity[HISTORY_ROWS]
            instance.history_rows.append(history_row["RowKey"])
        instance.tail = []

    async def _write_state_row(self, instance: Instance, state_entity: dict) -> None:
        instance.etag = await row_writes.replace(self.instances, state_entity, instance.etag)

    async def _buffer_operations(self, instance: Instance, release: bool) -> list:
        """Rows of the events a suspended (or Failed) instance holds: the released ones deleted, newly
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
        instance.etag = await row_writes.replace(self.instances, entity, instance.etag)

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
        async for row in row_queries.query(self.instances, " and ".join(clauses), parameters, LISTED_COLUMNS):
            row = {key: value for key, value in row.items() if value is not None}  # absent from this row
            yield row["PartitionKey"], _unpack_state(await self._inflate(row))

    # queues -----------------------------------------------------------------------------
    async def send_control(self, message: dict, delay_seconds: int = 0) -> None:
        """Send now (merged with others being sent meanwhile), or visible after a delay."""
        if delay_seconds > 0:
            await self._put_control(message, delay_seconds)
        else:
            await self._control_sender.send(message)

    def take_sent_control(self, lease_seconds: int, run: Callable[[object], None]) -> None:
        """As take_sent_workitems, for control messages sent to be seen now (not timers nor
        other delayed ones): each goes to this process's own orchestration dispatcher with
        the put's pop receipt, never received and deleted separately. A message whose sender
        died before deleting it turns visible once the lease ends, and its receiver treats it
        as a redelivery (is_redelivery)."""
        self._control_lease, self._run_sent_control = lease_seconds, run

    async def _put_control(self, message: dict, delay_seconds: int = 0) -> None:
        delay = max(0, int(delay_seconds))
        leased = not delay and self._run_sent_control is not None
        if leased:
            message = {**message, "SentLeased": True}  # whoever receives it, its sender died first
        sent = await message_ops.put(self.control, await self.large.outgoing(message),
                                     self._control_lease if leased else delay or None)
        if leased:
            sent.dequeue_count = 0  # never received: a first delivery
            self._run_sent_control(sent)
        elif not delay:
            self.sent[self.control.queue_name].set()

    async def send_workitem(self, message: dict) -> None:
        """Send `{"Items": [...], "MayRepeat": ...}`, merged with others being sent meanwhile."""
        await self._workitem_sender.send(message)

    def take_sent_workitems(self, lease_seconds: int, run: Callable[[object], None]) -> None:
        """From now on a work-item message this process sends is already leased to it: sent
        invisible for `lease_seconds` and handed to `run` as a SendingWorkItem as soon as its
        put begins (its activities may start while Azurite stores it; their outcomes wait for
        the put, SendingWorkItem.persisted), no receive in between. If this process dies, the
        message turns visible when that lease ends and any host's dispatcher takes it, as a
        message whose receiver died; if it dies before the put completes, the episode that
        sent it was not committed and sends it again (an activity runs at least once)."""
        self._workitem_lease, self._run_sent_workitem = lease_seconds, run

    async def _put_workitem(self, message: dict) -> None:
        if self._run_sent_workitem is None:
            await message_ops.put(self.workitems, await self.large.outgoing(message))
            self.sent[self.workitems.queue_name].set()
            return
        message = {**message, "SentLeased": True}  # whoever receives it, its sender died first
        put = asyncio.ensure_future(self._put_leased(message))
        self._run_sent_workitem(SendingWorkItem(message, put))
        await put  # the sender's episode counts as sent only once the message is stored

    async def _put_leased(self, message: dict):
        sent = await message_ops.put(self.workitems, await self.large.outgoing(message), self._workitem_lease)
        sent.dequeue_count = 0  # never received: a first delivery
        return sent

    async def control_bodies(self, message) -> list[tuple[object, dict]]:
        """(handle to acknowledge, body) of each instance body a control message carries."""
        body = await self.body(message)
        message.sent_leased = bool(body.pop("SentLeased", False))
        bodies = group_send.split_control(body)
        if len(bodies) == 1 and bodies[0] is body:
            return [(message, body)]
        shares = [len(bodies)]
        return [(MessageShare(message, shares), part) for part in bodies]

    async def ack_control(self, handle) -> None:
        """Delete a control message, or count down a share of one (deleted with its last)."""
        if isinstance(handle, MessageShare):
            handle.shares[0] -= 1
            if handle.shares[0] > 0:
                return
            handle = handle.message
        await message_ops.delete(self.control, handle.id, handle.pop_receipt)

    async def ack_workitem(self, message_id: str, pop_receipt: str) -> None:
        await message_ops.delete(self.workitems, message_id, pop_receipt)

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
        return await message_ops.receive(queue, max_messages, lease_seconds)


_JSON_FIELDS = ("Input", "Output", "CustomStatus")
# what an instance listing reads of a state row: not its history (Tail, HistoryRows)
LISTED_COLUMNS = ["PartitionKey", "Name", "Version", "RuntimeStatus", "CreatedTime", "LastUpdatedTime",
                  "ExecutionId", "ParentInstanceId", *_JSON_FIELDS, *(field + BLOB_SUFFIX for field in _JSON_FIELDS)]


def _pack_state(instance_id: str, state: dict) -> dict:
    entity = {"PartitionKey": instance_id, "RowKey": STATE_ROW}
    for key, value in state.items():
        entity[key] = json.dumps(value) if key in _JSON_FIELDS else value
    return entity


def _unpack_state(row) -> dict:
    state = {k: v for k, v in row.items() if k not in ("PartitionKey", "RowKey", TAIL)}
    for key in _JSON_FIELDS:
        if key in state and isinstance(state[key], str):
            state[key] = json.loads(state[key])
    return state
