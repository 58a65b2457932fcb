"""Durable entities as the Durable extension runs them for an out-of-process (Python) app.

An entity is addressed by its instance id `@<name lowercased>@<key>`. Requests travel on the
task hub's control queue, as DTF's entity messages do, and the engine's dispatcher hands every
message for an `@` id here. Each entity runs one batch at a time, in arrival order: the
entity function receives the SDK's batch request (`self`, `exists`, `state`, `batch` of
`name`/`signal`/`input`) and returns its batch result (`entityExists`, `entityState`,
`results` with one `isError`/`result` per operation, `signals`). As in the extension's
out-of-process path, the state kept is the one the SDK returns for the whole batch: an
operation that raised is reported failed to its caller and its neighbours' changes stand;
the SDK does not undo a change the failed operation itself made before raising. A batch whose
function call fails as a whole (or returns no valid result) changes nothing and fails every
operation in it.

From orchestrators: CallEntity (action 7) and SignalEntity (9) each take a task id and are
recorded as EventSent (the request, whose `id` the SDK then waits on); a call's answer comes
back as EventRaised named after that id, carrying the ResponseMessage (`result`, plus
`exceptionType` when the operation failed). Request ids derive from instance, execution and
task id, so an episode replayed after a crash sends the same request again.

Exactly once (see entity_store.py): a batch commits the new state, the keys of the messages
it applied and its outgoing messages in one ETag-guarded row write; the messages leave the
queue only after that, and the outgoing ones are (re)sent by whoever finds them unsent."""
from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import defaultdict

from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.functions import meta

from local_emulator.host.app_loader import FunctionEntry, FunctionIndex
from local_emulator.host.durable import history as h
from local_emulator.host.durable.entity_store import EntityRecord, EntityStore, entity_instance_id, split_instance_id
from local_emulator.host.durable.store import Instance, TaskHubStore, storable_id
from local_emulator.host.invoker import Invoker
from shared import fault_points

log = logging.getLogger("local_emulator.host.durable")
OPERATION_EVENT = "op"  # the name DTF gives an entity request sent as an event
DEDUP_KEEP = 200  # the newest applied-message keys kept whatever their age
REQUEST_IDS = uuid.UUID("5c1e4d1e-7a39-4c0b-9d7e-0e2f3c6a9b11")  # namespace of deterministic request ids


class UnknownEntity(Exception):
    """No entity function of that name in the app."""


class InvalidEntityKey(Exception):
    """The key is empty or cannot be stored."""


def entity_functions(index: FunctionIndex) -> dict[str, FunctionEntry]:
    """Entity functions by the lowercased name the extension registers them under: the
    trigger's `entityName` (the decorator's entity_name) or else the function's name."""
    named: dict[str, FunctionEntry] = {}
    for entry in index.by_trigger("entityTrigger"):
        name = (entry.trigger.get("entityName") or entry.name).lower()
        if name in named:
            raise ValueError(f"functions {named[name].name} and {entry.name} are both the entity named {name!r}")
        named[name] = entry
    return named


def missing_function(name: str) -> str:
    return f"The function '{name}' doesn't exist, is disabled, or is not an entity function."


KEY_RULES = "Entity keys must be non-empty and must not contain /, \\, #, ? or control characters."


class EntityWorker:
    def __init__(self, store: TaskHubStore, index: FunctionIndex, invoker: Invoker, lease_seconds: int = 30):
        self.store = store
        self.records = EntityStore(store)
        self.functions = entity_functions(index)
        self.invoker = invoker
        self.dedup_seconds = max(600.0, 20.0 * lease_seconds)  # far longer than any redelivery
        self.locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._flushed: dict[str, str] = {}  # entity id -> ETag of the row whose outbox this process sent
        # records as this process last wrote them (the ETag still guards each write); a batch
        # takes its record out and puts it back only once committed, so a failed one reloads
        self.cache: dict[str, EntityRecord] = {}
        self.cache_size = 5000

    # requests in -----------------------------------------------------------------------
    def entity_id(self, name: str, key: str) -> str:
        """The instance id of an entity the app defines; refuses unknown names and bad keys."""
        if name.lower() not in self.functions:
            raise UnknownEntity(missing_function(name))
        instance_id = entity_instance_id(name, key)
        if not key or not storable_id(instance_id):
            raise InvalidEntityKey(KEY_RULES)
        return instance_id

    async def signal(self, name: str, key: str, operation: str, input_json: str | None) -> None:
        """A client's one-way request; accepted once it is in the queue."""
        instance_id = self.entity_id(name, key)
        request = {"id": str(uuid.uuid4()), "op": operation, "signal": True, "input": input_json,
                   "parent": None, "parentExecution": None, "timestamp": h.iso(h.utc_now())}
        await self.store.send_control({"InstanceId": instance_id, "Key": h.new_key(), "Request": request})

    def schedule(self, instance: Instance, action: dict, task_id: int, outbound: list) -> dict:
        """An orchestrator's CallEntity / SignalEntity: the EventSent to record, and its message."""
        signal = action["actionType"] == h.SIGNAL_ENTITY
        target = action["instanceId"]
        request_id = str(uuid.uuid5(REQUEST_IDS, f"{instance.instance_id}:{instance.execution_id}:{task_id}"))
        # the SDK serialized the input once; the extension stores that text as a JSON string
        request = {"id": request_id, "op": action.get("operation") or "", "signal": signal,
                   "input": json.dumps(action.get("input")), "parent": instance.instance_id,
                   "parentExecution": None if signal else instance.execution_id,
                   "timestamp": h.iso(h.utc_now())}
        message = {"InstanceId": target, "Request": request,
                   "Key": f"{instance.instance_id}:{instance.execution_id}:{task_id}:entity"}
        outbound.append(lambda: self.store.send_control(message))
        return h.event(h.EVENT_SENT, task_id, InstanceId=target, Name=OPERATION_EVENT, Input=json.dumps(request))

    # batches ---------------------------------------------------------------------------
    async def process(self, instance_id: str, group: list) -> None:
        """Run the requests of one entity that arrived together, then take them off the queue."""
        lock = self.locks[instance_id]
        async with lock:
            try:
                await self._run_batch(instance_id, [body for _, body in group])
            except (ResourceExistsError, ResourceModifiedError):
                log.warning("entity batch lost a race for its row; its messages will be delivered again")
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("entity dispatch failed; its messages will be delivered again")
                return
            for message, _ in group:
                try:
                    await self.store.ack_control(message)
                except ResourceNotFoundError:
                    pass  # its lease ran out and another delivery took it; that one finds it applied
        if not lock.locked() and not getattr(lock, "_waiters", None):
            self.locks.pop(instance_id, None)

    async def _run_batch(self, instance_id: str, bodies: list[dict]) -> None:
        try:
            name, key = split_instance_id(instance_id)
        except ValueError:  # no entity can have that id, and nobody waits for an answer from it
            log.warning("control queue: dropping messages for a malformed entity id")
            return
        entry = self.functions.get(name)
        if entry is None or not key or not storable_id(instance_id):
            # nothing to keep: answer the callers (they drop a repeated answer), write no row
            log.warning("entity requests for %r refused: %s", name, "no such entity function" if entry is None
                        else "unusable key")
            requests = [body["Request"] for body in bodies if "Request" in body]
            refusal = missing_function(name) if entry is None else KEY_RULES
            await self._send(self._outgoing(EntityRecord(instance_id), requests, _failed_batch(requests, refusal)))
            return
        record = self.cache.pop(instance_id, None) or await self.records.load(instance_id)
        await self._flush(record)
        requests, keys = [], []
        for body in bodies:
            if "Request" not in body or body["Key"] in record.processed or body["Key"] in keys:
                continue
            requests.append(body["Request"])
            keys.append(body["Key"])
        if not requests:
            self._remember(record)
            return
        result = await self._invoke(entry, record, name, key, requests)
        record.exists, record.state = bool(result["entityExists"]), result.get("entityState")
        if not record.exists:
            record.state = None
        now = h.iso(h.utc_now())
        record.forget_older_than(self.dedup_seconds, keep=DEDUP_KEEP)
        record.processed.update({k: now for k in keys})
        record.last_operation_time = now
        record.outbox = self._outgoing(record, requests, result)
        fault_points.reached("durable.entity.before_commit")
        await self.records.save(record)
        fault_points.reached("durable.entity.after_commit")
        await self._flush(record)
        self._remember(record)

    def _remember(self, record: EntityRecord) -> None:
        self.cache[record.instance_id] = record
        while len(self.cache) > self.cache_size:
            self.cache.pop(next(iter(self.cache)))

    async def _invoke(self, entry: FunctionEntry, record: EntityRecord, name: str, key: str,
                      requests: list[dict]) -> dict:
        """The SDK's batch result, or, when the call fails as a whole, the unchanged state with
        every operation failed."""
        context = {"self": {"name": name, "key": key}, "exists": record.exists, "state": record.state,
                   "batch": [{"name": r["op"], "signal": r["signal"], "input": r["input"]} for r in requests]}
        converter = meta.get_binding_registry().get("entityTrigger")
        argument = converter.decode(meta.Datum(json.dumps(context), "string"), trigger_metadata={})
        try:
            raw = await self.invoker.invoke(entry, {entry.trigger["name"]: argument}, quiet=True)
            result = json.loads(raw)
            if not isinstance(result, dict) or len(result.get("results") or []) != len(requests):
                raise ValueError("the entity function returned no result for some operations")
        except Exception as error:
            log.error("entity %s: batch of %d operations failed as a whole (%s)", name, len(requests),
                      type(error).__name__)
            message = f"Entity function '{name}' failed: {type(error).__name__}: {error}"
            return {"entityExists": record.exists, "entityState": record.state,
                    **_failed_batch(requests, message)}
        failed = sum(1 for r in result["results"] if r.get("isError"))
        log.info("entity %s: batch of %d operations, %d failed", name, len(requests), failed)
        return result

    def _outgoing(self, record: EntityRecord, requests: list[dict], result: dict) -> list[dict]:
        """The batch's messages: a response per call (never per signal), then its signals."""
        messages = []
        for request, outcome in zip(requests, result["results"]):
            if request.get("signal") or not request.get("parent"):
                continue
            response = {"result": outcome.get("result")}
            if outcome.get("isError"):
                response["exceptionType"] = "Error"
            raised = h.event(h.EVENT_RAISED, Name=request["id"], Input=json.dumps(response))
            messages.append({"InstanceId": request["parent"], "ExecutionId": request.get("parentExecution"),
                             "Event": raised, "Key": f"{record.instance_id}:{request['id']}:response"})
        for signal in result.get("signals") or []:
            target = entity_instance_id(signal["target"]["name"], signal["target"]["key"])
            request = {"id": str(uuid.uuid4()), "op": signal.get("name") or "", "signal": True,
                       "input": signal.get("input"), "parent": record.instance_id, "parentExecution": None,
                       "timestamp": h.iso(h.utc_now())}
            messages.append({"InstanceId": target, "Request": request, "Key": h.new_key()})
        return messages

    async def _flush(self, record: EntityRecord) -> None:
        """Send the committed outbox unless this process already sent that version of it."""
        if record.outbox and self._flushed.get(record.instance_id) != record.etag:
            await self._send(record.outbox)
        if record.etag:
            self._flushed[record.instance_id] = record.etag
        while len(self._flushed) > 10000:
            self._flushed.pop(next(iter(self._flushed)))

    async def _send(self, messages: list[dict]) -> None:
        for message in messages:
            await self.store.send_control(message)

    # reads -----------------------------------------------------------------------------
    async def read(self, name: str, key: str) -> EntityRecord | None:
        """The entity's record if it exists (was written and not deleted)."""
        record = await self.records.load(self.entity_id(name, key))
        return record if record.exists else None

    async def list(self, name: str) -> list[EntityRecord]:
        if name.lower() not in self.functions:
            raise UnknownEntity(missing_function(name))
        return [record for record in await self.records.list(name) if record.exists]


def _failed_batch(requests: list[dict], message: str) -> dict:
    return {"results": [{"isError": True, "duration": 0, "result": json.dumps(message)} for _ in requests],
            "signals": []}
