"""Drives orchestrators through the azure-functions-durable SDK's own replay: for each batch of
new events the host appends them to the history, calls the function the DFApp registered
(its `handle`) with the JSON context, records the actions it returns as history and sends
their work (activities, timers, sub-orchestrations) as queue messages.

Crash safety: outbound messages are sent before the history is committed and carry
deterministic keys, so a batch replayed after a crash sends the same messages again and the
receiver drops the duplicates; queue messages are deleted only after the commit (which an
episode that only scheduled this host's activities holds a moment for their outcomes, to make
one write of both: deferred_commits.py). Activity
outcomes reach their orchestration in process (deliver_outcomes) and the work item is
acknowledged only once they are committed to its history, which is their record: a
redelivered work item reports the recorded outcome instead of running again. Each instance
is processed by one task at a time.

Suspension (suspension.py): while suspended, events are held and no orchestrator code runs;
the suspend and resume markers are history the SDK's replay never sees.

Retries belong to the host (as DTF's RetryInterceptor): TaskFailed, then a back-off timer,
then a new TaskScheduled. Such retry events are replayed one per episode so the task ids the
host allocates match the SDK's counter."""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import uuid
from collections import defaultdict
from typing import Awaitable, Callable

from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableTransactionError
from azure.functions import meta

from local_emulator.host.app_loader import FunctionEntry, FunctionIndex
from local_emulator.host.durable import group_send
from local_emulator.host.durable import history as h
from local_emulator.host.durable import rewind as rewinding
from local_emulator.host.durable.activities import ActivityWorker
from local_emulator.host.durable.deferred_commits import DeferredCommits, Held, settle
from local_emulator.host.durable.entities import EntityWorker
from local_emulator.host.durable.failures import (
    OUT_OF_PROC,
    failure_details,
    user_exception,
)
from local_emulator.host.durable.store import (
    ACTIVE,
    HISTORY_ROWS,
    TERMINAL,
    Instance,
    TaskHubStore,
    is_redelivery,
    storable_id,
)
from local_emulator.host.durable.suspension import apply_suspension
from local_emulator.host.invoker import Invoker
from shared import fault_points

log = logging.getLogger("local_emulator.host.durable")


class OrchestratorError(str):
    """The SDK's error text for a failed orchestrator, with the failure details of the
    exception the user's code raised."""

    def __new__(cls, text: str, error: BaseException):
        value = super().__new__(cls, text)
        value.details = failure_details(error)
        return value


class InstanceExists(Exception):
    """An instance with this id is pending or running: starting it again would run it twice."""


class WrongState(Exception):
    """Suspend of a suspended instance, resume of one that is not (the extension's
    InvalidOperationException, which its HTTP API answers with a 500)."""


class UnknownOrchestrator(Exception):
    """No orchestrator function of that name in the app."""


class InvalidInstanceId(Exception):
    """The id cannot be stored (a clear 400 rather than a storage error)."""


def durable_names(index: FunctionIndex, trigger_type: str, name_property: str) -> dict[str, FunctionEntry]:
    """Orchestrators or activities by the name the Durable extension registers them under: the
    trigger's `orchestration` / `activity` property when set (the decorator's name argument),
    else the function's name. Two functions claiming one name are refused at indexing."""
    named: dict[str, FunctionEntry] = {}
    for entry in index.by_trigger(trigger_type):
        name = entry.trigger.get(name_property) or entry.name
        if name in named:
            raise ValueError(f"functions {named[name].name} and {entry.name} are both the {trigger_type} "
                             f"named {name!r}")
        named[name] = entry
    return named


ADOPT_AFTER_SECONDS = 2.0  # a start message whose row is still missing after this: its starter died


def new_state(name: str, version: str, input_json, created: str, execution_id: str, parent: dict | None) -> dict:
    return {"Name": name, "Version": version, "RuntimeStatus": "Pending", "Input": input_json, "Output": None,
            "CustomStatus": None, "CreatedTime": created, "LastUpdatedTime": created,
            "ExecutionId": execution_id, "ActionCount": 0, "NextId": 0, "Episodes": 0, HISTORY_ROWS: "[]",
            **(parent or {})}


class DurableEngine:
    def __init__(self, store: TaskHubStore, index: FunctionIndex, invoker: Invoker,
                 lease_seconds: int = 30, concurrency: int = 32, max_poll_seconds: float = 0.25,
                 extra_inputs: Callable[[FunctionEntry], dict] = lambda entry: {}):
        self.store = store
        self.invoker = invoker
        # the version an instance gets unless its creator names one (host.json, as the extension)
        self.default_version = str(index.extension_options("durableTask").get("defaultVersion") or "")
        self.orchestrators = durable_names(index, "orchestrationTrigger", "orchestration")
        self.activities = durable_names(index, "activityTrigger", "activity")
        self.lease_seconds = lease_seconds
        self.max_poll_seconds = max_poll_seconds
        self.slots = asyncio.Semaphore(concurrency)
        self.locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._loops: list[asyncio.Task] = []
        self._work: set[asyncio.Task] = set()
        self.activity_worker = ActivityWorker(store, self.activities, invoker, lease_seconds, extra_inputs,
                                              self._spawn, self.deliver_outcomes, self.recorded_outcome)
        self.entities = EntityWorker(store, index, invoker, lease_seconds)
        self.cache: dict[str, Instance] = {}
        self._starting: dict[str, asyncio.Future] = {}  # execution id -> its row written (this process)
        self.cache_size = 5000
        self.deferred = DeferredCommits(0.25, lambda instance_id, held: self._spawn(self._commit_held(instance_id, held)))

    async def start(self) -> None:
        await self.store.create()
        # activities this host schedules start without a queue receive (the idle hop)
        self.store.take_sent_workitems(self.lease_seconds,
                                       lambda message: self._spawn(self.activity_worker.run(message)))
        # so do the control messages it sends to be seen now (starts, events, sub-orchestration outcomes)
        self.store.take_sent_control(self.lease_seconds,
                                     lambda message: self._spawn(self._orchestration_batch([message])))
        self._loops = [asyncio.create_task(self._dispatch(self.store.control, self._orchestration_batch)),
                       asyncio.create_task(self._dispatch(self.store.workitems, self._activity_batch))]

    async def stop(self) -> None:
        # held episodes are committed, not left for a redelivery once their messages' leases end
        await asyncio.gather(*(self._commit_held(instance_id, held) for instance_id, held in self.deferred.all_held()),
                             return_exceptions=True)
        for task in self._loops + list(self._work):
            task.cancel()
        await asyncio.gather(*self._loops, *self._work, return_exceptions=True)
        await self.store.close()

    # client operations ---------------------------------------------------------------
    async def start_instance(self, name: str, instance_id: str | None, input_json: str | None,
                             parent: dict | None = None, version: str | None = None) -> str:
        if name not in self.orchestrators:
            raise UnknownOrchestrator(f"The function '{name}' doesn't exist, is disabled, or is not "
                                      f"an orchestrator function.")
        instance_id = instance_id or uuid.uuid4().hex
        if not storable_id(instance_id):
            raise InvalidInstanceId("Instance ids must not contain /, \\, #, ? or control characters.")
        if instance_id.startswith("@"):  # the entities' namespace, as the extension reserves it
            raise InvalidInstanceId("Orchestration instance ids must not start with @.")
        now = h.iso(h.utc_now())
        execution_id = h.new_key()
        version = self.default_version if version is None else version
        state = new_state(name, version, input_json, now, execution_id, parent)
        started = h.event(h.EXECUTION_STARTED, Name=name, Input=input_json, Version=version,
                          OrchestrationInstance={"InstanceId": instance_id, "ExecutionId": execution_id})
        # As DurableTask.AzureStorage: the start message first, then the instance row. A host that
        # dies between the two leaves a message the dispatcher adopts (_adoptable_start), never a
        # Pending row that nothing will ever start. A refused start's message names an execution
        # the row does not have, so the dispatcher drops it.
        # registered before the message goes: a dispatcher that receives it first waits for the row
        written = self._starting[execution_id] = asyncio.get_running_loop().create_future()
        try:
            fault_points.reached("durable.start.before_message")
            await self.store.send_control({"InstanceId": instance_id, "ExecutionId": execution_id,
                                           "Event": started, "Key": f"{instance_id}:{execution_id}:start",
                                           **({"Parent": parent} if parent else {})})
            fault_points.reached("durable.start.after_message")
            await self._write_new_state(instance_id, state)
        finally:
            written.set_result(None)
            del self._starting[execution_id]
        fault_points.reached("durable.start.after_state")
        return instance_id

    async def _write_new_state(self, instance_id: str, state: dict) -> None:
        """The new execution's row: created, or replacing a finished instance's; refused while
        another execution of this id is pending or running. A row this process created is
        remembered, so its first episode needs no read (its ETag still guards the commit)."""
        etag = await self.store.insert_new(instance_id, state)
        if etag is not None:
            self._remember(Instance(instance_id, state, etag))
            return
        existing = await self.store.load_state(instance_id)
        if existing is None:
            raise InstanceExists(f"An orchestration instance with id {instance_id} is being purged.")
        if existing.execution_id == state["ExecutionId"]:
            return  # the dispatcher adopted our start message first
        if existing.status in ACTIVE:
            raise InstanceExists(f"An orchestration instance with the status {existing.status} "
                                 f"already exists.")
        existing.state = state
        self.cache.pop(instance_id, None)
        try:
            await self.store.replace_state(existing)
        except ResourceModifiedError:
            raise InstanceExists(f"An orchestration instance with id {instance_id} already exists.")

    async def raise_event(self, instance_id: str, name: str, input_json: str | None) -> int:
        """202 accepted, 404 no such instance, 410 instance already finished."""
        return await self._send_to_running(instance_id, h.event(h.EVENT_RAISED, Name=name, Input=input_json))

    async def terminate(self, instance_id: str, reason: str) -> int:
        """Status codes as raise_event."""
        return await self._send_to_running(instance_id, h.event(h.EXECUTION_TERMINATED, Input=json.dumps(reason)))

    async def rewind(self, instance_id: str, reason: str) -> int:
        """202 once the request is queued (rewind.py); 404 unknown, 410 Completed or Terminated;
        WrongState (the extension's InvalidOperationException) unless Failed."""
        instance = await self.store.load_state(instance_id)
        if instance is None:
            return 404
        if instance.status in ("Completed", "Terminated"):
            return 410
        if instance.status != "Failed":
            raise WrongState("The rewind operation is only supported on failed orchestration instances.")
        await self.store.send_control(rewinding.request(instance_id, instance.execution_id, reason, h.new_key()))
        return 202

    async def suspend(self, instance_id: str, reason: str | None) -> int:
        """202 accepted, 404 no such instance, 410 finished; NotSuspendable if already suspended."""
        return await self._send_to_running(instance_id, h.event(h.EXECUTION_SUSPENDED, Reason=reason),
                                           refuse="Suspended", verb="suspend")

    async def resume(self, instance_id: str, reason: str | None) -> int:
        """As suspend; NotSuspendable unless the instance is suspended."""
        return await self._send_to_running(instance_id, h.event(h.EXECUTION_RESUMED, Reason=reason),
                                           refuse=("Pending", "Running"), verb="resume")

    async def _send_to_running(self, instance_id: str, event: dict, refuse=(), verb: str = "") -> int:
        instance = await self.store.load_state(instance_id)
        if instance is None:
            return 404
        if instance.status in TERMINAL:
            return 410
        if instance.status in refuse:
            raise WrongState(f"Cannot {verb} the orchestration instance {instance_id} because instance is in "
                             f"the {instance.status} state.")
        await self.store.send_control({"InstanceId": instance_id, "Key": h.new_key(), "Event": event})
        return 202

    # dispatch loops --------------------------------------------------------------------
    async def _dispatch(self, queue, handle_batch: Callable[[list], Awaitable[None]]) -> None:
        idle = 0.02
        while True:
            try:
                messages = await self.store.receive(queue, 32, self.lease_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("queue %s: receive failed", queue.queue_name)
                messages = []
            if not messages:
                sent = self.store.sent[queue.queue_name]
                try:
                    await asyncio.wait_for(sent.wait(), idle)
                except asyncio.TimeoutError:
                    idle = min(idle * 2, self.max_poll_seconds)
                sent.clear()
                continue
            idle = 0.02
            try:
                await handle_batch(messages)
            except asyncio.CancelledError:
                raise
            except Exception:  # keep dispatching; the messages become visible again
                log.exception("queue %s: dispatch failed", queue.queue_name)

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._work.add(task)
        task.add_done_callback(self._work.discard)

    async def _guarded(self, coroutine) -> None:
        try:
            await coroutine
        finally:
            self.slots.release()

    async def _orchestration_batch(self, messages: list) -> None:
        groups: dict[str, list] = defaultdict(list)
        for message in messages:
            try:
                for handle, body in await self.store.control_bodies(message):
                    groups[body["InstanceId"]].append((handle, body))
            except (ValueError, KeyError, TypeError, ResourceNotFoundError):
                log.warning("control queue: dropping a malformed message")
                await self.store.control.delete_message(message)
        for instance_id, group in groups.items():
            await self.slots.acquire()
            handler = self.entities.process if instance_id.startswith("@") else self._process_instance
            self._spawn(self._guarded(handler(instance_id, group)))

    async def _activity_batch(self, messages: list) -> None:
        for message in messages:
            await self.slots.acquire()
            self._spawn(self._guarded(self.activity_worker.run(message)))

    # orchestrations --------------------------------------------------------------------
    async def _process_instance(self, instance_id: str, group: list) -> None:
        bodies = [body for _, body in group]
        redelivered = any(is_redelivery(message) for message, _ in group)
        async with self._instance_lock(instance_id):
            if not await self._applied(instance_id, bodies, redelivered):
                return
            held = self.deferred.waiter(instance_id)
        if await self._committed(held):
            await asyncio.gather(*(self.store.ack_control(message) for message, _ in group))

    async def deliver_outcomes(self, instance_id: str, execution_id: str, events: list[dict],
                               may_repeat: bool) -> None:
        """Activity outcomes handed over in process instead of through the control queue:
        committed to the instance's history (the outcomes' record) before this returns, so
        the work item may then be acknowledged. Raises when they could not be; the work item
        is then delivered again and reports what the history holds."""
        body = {"InstanceId": instance_id, "ExecutionId": execution_id, "Events": events, "Key": events[0]["Key"]}
        async with self._instance_lock(instance_id):
            applied = await self._applied(instance_id, [body], may_repeat)
            held = self.deferred.waiter(instance_id)
        if not applied or not await self._committed(held):
            raise RuntimeError(f"activity outcomes for instance {instance_id} were not committed")

    @staticmethod
    async def _committed(held: asyncio.Future | None) -> bool:
        """Wait for episodes held uncommitted (deferred_commits.py); False, logged, if they failed."""
        if held is None:
            return True
        try:
            await asyncio.shield(held)
        except Exception:
            log.warning("held episodes were not committed; their messages will be delivered again")
            return False
        return True

    async def _commit_held(self, instance_id: str, held: Held) -> None:
        """Commit the episodes held for an instance that nobody met meanwhile."""
        async with self._instance_lock(instance_id):
            if self.deferred.waiter(instance_id) is not held.committed:
                return  # committed with a later episode already
            self.deferred.take(instance_id)
            instance = self.cache.get(instance_id)
            try:
                if instance is None:
                    raise RuntimeError(f"instance {instance_id} left the cache with uncommitted episodes")
                await self.store.commit(instance, held.events, reset_history=held.reset)
            except Exception as failure:
                self._forget(instance_id)
                settle(held, failure)
                log.exception("committing held episodes failed; their messages will be delivered again")
                return
            except BaseException:
                self._forget(instance_id)
                settle(held, RuntimeError("stopped"))
                raise
            settle(held)
            self._remember(instance)

    def _forget(self, instance_id: str) -> None:
        """Drop the instance's in-memory state (and any episodes it held uncommitted)."""
        self.cache.pop(instance_id, None)
        self.deferred.drop(instance_id)

    async def recorded_outcome(self, instance_id: str, execution_id: str, task_id: int) -> dict | None:
        """The outcome of a task the instance's history already holds (or holds back while
        suspended): a redelivered work item reports it instead of running the activity again."""
        async with self._instance_lock(instance_id):
            instance = self.cache.get(instance_id) or await self.store.load(instance_id)
            if instance is None or instance.execution_id != execution_id:
                return None
            self._remember(instance)
        for event in instance.history + instance.buffered:
            if event["EventType"] in (h.TASK_COMPLETED, h.TASK_FAILED) and event.get("TaskScheduledId") == task_id:
                return event
        return None

    @contextlib.asynccontextmanager
    async def _instance_lock(self, instance_id: str):
        """One task at a time per instance; the lock is dropped once nobody holds or awaits it."""
        lock = self.locks[instance_id]
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not getattr(lock, "_waiters", None):
                self.locks.pop(instance_id, None)

    async def _applied(self, instance_id: str, bodies: list[dict], redelivered: bool) -> bool:
        """Apply and commit the events (the caller holds the instance's lock); False, logged,
        when that failed and the events must come again."""
        try:
            try:
                await self._apply(instance_id, bodies, redelivered)
            except (TableTransactionError, ResourceModifiedError):
                self._forget(instance_id)  # changed elsewhere: reload and go again
                await self._apply(instance_id, bodies, redelivered)
        except asyncio.CancelledError:
            self._forget(instance_id)
            raise
        except Exception:
            self._forget(instance_id)
            log.exception("orchestration dispatch failed; its messages will be delivered again")
            return False
        return True

    def _new_events(self, instance: Instance, bodies: list[dict]) -> list[dict]:
        """Events not yet in the history, for this execution, ExecutionStarted first."""
        known = instance.history + instance.buffered
        seen = {e.get("MessageKey") for e in known}
        completed = {h.completion_id(e) for e in known if h.completion_id(e) is not None}
        events = []
        for body, key, event in _events_of(bodies):
            event = dict(event)
            if body.get("ExecutionId") not in (None, instance.execution_id) or key in seen:
                continue
            kind = event["EventType"]
            if kind == h.EXECUTION_STARTED and instance.history:
                continue
            task_id = h.completion_id(event)
            if task_id is not None:
                if task_id in completed:
                    continue
                completed.add(task_id)
            seen.add(key)
            event["MessageKey"] = key
            events.append(event)
        events.sort(key=lambda e: e["EventType"] != h.EXECUTION_STARTED)
        return events

    async def _apply(self, instance_id: str, bodies: list[dict], redelivered: bool = False) -> None:
        for body in bodies:  # a start this process is still recording: its row first
            writing = self._starting.get(body.get("ExecutionId"))
            if writing is not None:
                await writing
        instance = self.cache.get(instance_id) or await self.store.load(instance_id)
        orphan = _adoptable_start(instance, bodies)
        if orphan is not None:
            body, started = orphan
            if (h.utc_now() - h.parse_iso(started["Timestamp"])).total_seconds() < ADOPT_AFTER_SECONDS:
                for item in bodies:  # its starter may still be writing the row: look again shortly
                    await self.store.send_control(item, delay_seconds=1)
                return
            instance = self._adopt(instance_id, instance, body, started)
        if instance is None:
            return  # purged or never created
        instance.redelivered = redelivered
        events = self._new_events(instance, bodies)
        rewind = next((e for e in events if e["EventType"] == rewinding.REWIND_REQUESTED), None)
        if rewind is not None:
            if instance.status == "Failed":   # else applied already (a redelivered request)
                await self._rewind(instance, rewind)
            return
        if instance.status == "Failed":
            await self._hold_for_rewind(instance, events)
            return
        if not events or instance.status in TERMINAL:
            return
        if not instance.history and events[0]["EventType"] != h.EXECUTION_STARTED:
            for body in bodies:  # arrived before the start message: look again shortly
                await self.store.send_control(body, delay_seconds=1)
            return
        held = self.deferred.take(instance_id)  # episodes held uncommitted: they go with this commit
        try:
            committed = await self._run_and_commit(instance, events, held)
        except BaseException as failure:
            settle(held, failure if isinstance(failure, Exception) else RuntimeError("stopped"))
            raise
        if committed:
            settle(held)

    async def _run_and_commit(self, instance: Instance, events: list[dict], held: Held | None) -> bool:
        """Replay the new events, send what they scheduled, then commit (True), or hold the
        commit a moment when only activities of this host were scheduled (deferred_commits.py)."""
        outbound: list[Callable[[], Awaitable[None]]] = []
        new_history: list[dict] = list(held.events) if held else []  # continue-as-new clears them
        first_episode = instance.state.get("Episodes", 0) == 0
        terminate = next((e for e in events if e["EventType"] == h.EXECUTION_TERMINATED), None)
        if terminate is not None:
            self._finish(instance, "Terminated", json.loads(terminate.get("Input") or "null"),
                         new_history, outbound, terminate)
        else:
            events = apply_suspension(instance, events, new_history)
            for batch in self._batches(instance.history, events):
                if await self._episode(instance, batch, new_history, outbound):
                    break
        # only activities this host runs itself, whose outcomes will follow in a moment
        only_activities = bool(instance.work_items) and not outbound
        for items in group_send.chunks(instance.work_items):
            message = {"Items": items, "MayRepeat": instance.redelivered}
            outbound.append(lambda message=message: self.store.send_workitem(message))
        instance.work_items = []
        for send in outbound:
            await send()
        reset = first_episode or instance.state.get("Episodes", 0) == 0 or (held is not None and held.reset)
        if (only_activities and instance.status == "Running" and not instance.redelivered
                and not instance.new_buffered and not instance.release_buffer):
            self.deferred.hold(instance.instance_id, new_history, reset, held)
            self._remember(instance)
            return False
        await self.store.commit(instance, new_history, reset_history=reset)
        self._remember(instance)
        return True

    async def _hold_for_rewind(self, instance: Instance, events: list[dict]) -> None:
        """A Failed instance keeps the task outcomes that reach it (rewind.py): stored in its
        buffer rows, where a redelivered work item finds its outcome and a rewind takes them."""
        held = [event for event in events if h.completion_id(event) is not None]
        if held:
            instance.new_buffered.extend(held)
            await self.store.commit(instance, [], reset_history=False)

    async def _rewind(self, instance: Instance, request: dict) -> None:
        """Rewind a Failed execution (rewind.py): its final failures leave the history, failed
        activities run again under their task ids, failed sub-orchestrations are rewound, and
        the orchestrator replays with the outcomes the instance held since it failed. All of it
        in one commit, the sends first (keys fixed by the rewind's number, so a repeat after a
        crash is dropped by the receivers)."""
        state, instance_id, execution_id = instance.state, instance.instance_id, instance.execution_id
        plan = rewinding.plan(instance.history, instance.buffered)
        number = state.get("Rewinds", 0) + 1
        state.update(Rewinds=number, RuntimeStatus="Running", Output=None, NextId=plan.next_id,
                     LastUpdatedTime=h.iso(h.utc_now()))
        instance.history = list(plan.history)
        new_history = list(plan.history)
        instance.release_buffer = True   # the held outcomes are this replay's events: their rows go
        outbound: list[Callable[[], Awaitable[None]]] = []
        for scheduled in plan.activities:
            task_id = scheduled["EventId"]
            instance.work_items.append({"InstanceId": instance_id, "ExecutionId": execution_id, "TaskId": task_id,
                                        "Name": scheduled["Name"], "Input": scheduled.get("Input"),
                                        "Key": f"{instance_id}:{execution_id}:{task_id}:r{number}"})
        for child in plan.children:
            message = rewinding.request(child, None, request.get("Reason") or "",
                                        f"{instance_id}:{execution_id}:rewind{number}:{child}")
            # a second later: the child's outcome must find this instance Running (committed below)
            outbound.append(lambda message=message: self.store.send_control(message, delay_seconds=1))
        log.info("orchestration %s instance=%s: rewinding %d activities and %d sub-orchestrations, %d outcomes "
                 "held since the failure", state["Name"], instance_id, len(plan.activities), len(plan.children),
                 len(plan.answers))
        for batch in self._batches(instance.history, plan.answers) or [[]]:
            if await self._episode(instance, batch, new_history, outbound):
                break
        # a repeat after a crash sends these again: the worker looks for a recorded outcome first
        for items in group_send.chunks(instance.work_items):
            message = {"Items": items, "MayRepeat": True}
            outbound.append(lambda message=message: self.store.send_workitem(message))
        instance.work_items = []
        for send in outbound:
            await send()
        fault_points.reached("durable.rewind.before_commit")
        await self.store.commit(instance, new_history, reset_history=True)
        fault_points.reached("durable.rewind.after_commit")
        self._remember(instance)

    def _adopt(self, instance_id: str, instance: Instance | None, body: dict, started: dict) -> Instance:
        """The row a start message's starter died before writing, rebuilt from the message."""
        log.info("orchestration %s instance=%s: adopting a start message whose starter did not record it",
                 started["Name"], instance_id)
        self.cache.pop(instance_id, None)
        state = new_state(started["Name"], started.get("Version") or "", started.get("Input"),
                          started["Timestamp"], body["ExecutionId"], body.get("Parent"))
        if instance is None:
            return Instance(instance_id, state)
        instance.state, instance.history = state, []
        return instance

    def _remember(self, instance: Instance) -> None:
        """Keep a running instance's state and history in memory (the commit's ETag guards
        against anyone else having changed it meanwhile), saving a query per episode."""
        if instance.status in TERMINAL:
            self.cache.pop(instance.instance_id, None)
            return
        self.cache[instance.instance_id] = instance
        while len(self.cache) > self.cache_size:  # never one holding uncommitted episodes
            oldest = next((key for key in self.cache if key not in self.deferred), None)
            if oldest is None:
                break
            self.cache.pop(oldest)

    @classmethod
    def _batches(cls, history: list[dict], events: list[dict]) -> list[list[dict]]:
        """One episode for the ordinary events, then one for each retry event (its bookkeeping
        needs an episode of its own)."""
        ordinary = [e for e in events if not cls._is_retry_event(history, e)]
        return ([ordinary] if ordinary else []) + [[e] for e in events if e not in ordinary]

    @staticmethod
    def _is_retry_event(history: list[dict], event: dict) -> bool:
        kind = event["EventType"]
        if kind == h.TASK_FAILED:
            scheduled = h.find_event(history, h.TASK_SCHEDULED, event["TaskScheduledId"])
        elif kind == h.SUB_FAILED:
            scheduled = h.find_event(history, h.SUB_CREATED, event["TaskScheduledId"])
        elif kind == h.TIMER_FIRED:
            timer = h.find_event(history, h.TIMER_CREATED, event["TimerId"])
            return bool(timer and "RetryFor" in timer)
        else:
            return False
        return bool(scheduled and scheduled.get("RetryOptions"))

    async def _episode(self, instance: Instance, batch: list[dict], new_history: list[dict],
                       outbound: list) -> bool:
        """Replay with `batch` as the new events; True when the execution ended."""
        state = instance.state
        instance_id = instance.instance_id
        retry_events = self._retry_bookkeeping(instance, batch[0], outbound) \
            if len(batch) == 1 and self._is_retry_event(instance.history, batch[0]) else []
        episode = [h.event(h.ORCHESTRATOR_STARTED)] + batch
        played = [dict(e, IsPlayed=True) for e in instance.history if e["EventType"] not in h.SUSPENSION_MARKERS]
        context = {"history": played + episode,
                   "input": state.get("Input"), "instanceId": instance_id, "isReplaying": False,
                   "parentInstanceId": state.get("ParentInstanceId"), "upperSchemaVersion": 2,
                   "maximumShortTimerDuration": "6.00:00:00",
                   "longRunningTimerIntervalDuration": "3.00:00:00"}
        entry = self.orchestrators.get(state["Name"])
        result, error = await self._call_orchestrator(entry, context)
        instance.history.extend(episode + retry_events)
        new_history.extend(episode + retry_events)
        scheduled: list[dict] = []
        continue_as_new = None
        actions = h.flatten_actions(result.get("actions"))
        for action in actions[state["ActionCount"]:]:
            kind = action.get("actionType")
            if kind == h.CONTINUE_AS_NEW_ACTION:
                continue_as_new = action
            elif kind == h.WAIT_FOR_EVENT:
                continue
            elif kind in h.TAKES_TASK_ID:
                task_id = state["NextId"]
                state["NextId"] += 1
                scheduled.append(self._schedule(instance, action, task_id, outbound))
            elif error is None:
                error = f"action type {kind} is not supported by the local host"
        state["ActionCount"] = len(actions)
        instance.history.extend(scheduled)
        new_history.extend(scheduled)
        state["CustomStatus"] = result.get("customStatus")
        state["LastUpdatedTime"] = h.iso(h.utc_now())
        if state["RuntimeStatus"] == "Pending":
            state["RuntimeStatus"] = "Running"
        if error is not None:
            output = f"Orchestrator function '{state['Name']}' failed: {error}"
            details = error.details if isinstance(error, OrchestratorError) else {
                "ErrorType": "NotSupportedException", "ErrorMessage": str(error), "StackTrace": "",
                "InnerFailure": None, "IsNonRetriable": True}
            self._finish(instance, "Failed", output, new_history, outbound, failure=details)
            return True
        if result.get("isDone"):
            if continue_as_new is not None:
                self._continue_as_new(instance, continue_as_new, new_history, outbound)
            else:
                self._finish(instance, "Completed", result.get("output"), new_history, outbound)
            return True
        completed = h.event(h.ORCHESTRATOR_COMPLETED)
        instance.history.append(completed)
        new_history.append(completed)
        return False

    async def _call_orchestrator(self, entry: FunctionEntry | None, context: dict):
        if entry is None:
            return {}, "orchestrator function is not registered in this app"
        converter = meta.get_binding_registry().get("orchestrationTrigger")
        argument = converter.decode(meta.Datum(json.dumps(context), "string"), trigger_metadata={})
        try:
            raw = await self.invoker.invoke(entry, {entry.trigger["name"]: argument}, quiet=True)
            return json.loads(raw), None
        except Exception as failure:
            message = str(failure)
            if OUT_OF_PROC in message:
                text, state = message.split(OUT_OF_PROC, 1)
                return json.loads(state), OrchestratorError(text.strip(), user_exception(failure))
            return {}, OrchestratorError(message, failure)

    def _schedule(self, instance: Instance, action: dict, task_id: int, outbound: list,
                  attempt: int = 1) -> dict:
        """History event for a newly scheduled task, and the message that does its work."""
        kind = action["actionType"]
        if kind in (h.CALL_ENTITY, h.SIGNAL_ENTITY):
            return self.entities.schedule(instance, action, task_id, outbound)
        instance_id, execution_id = instance.instance_id, instance.execution_id
        retry = action.get("retryOptions")
        if kind in (h.CALL_ACTIVITY, h.CALL_ACTIVITY_WITH_RETRY):
            instance.work_items.append({"InstanceId": instance_id, "ExecutionId": execution_id, "TaskId": task_id,
                                        "Name": action["functionName"], "Input": action.get("input"),
                                        "Key": f"{instance_id}:{execution_id}:{task_id}"})
            return h.event(h.TASK_SCHEDULED, task_id, Name=action["functionName"], Input=action.get("input"),
                           RetryOptions=retry, Action=action, Attempt=attempt)
        if kind in (h.CALL_SUB, h.CALL_SUB_WITH_RETRY):
            child = action.get("instanceId") or f"{instance_id}:{task_id:04d}"
            parent = {"ParentInstanceId": instance_id, "ParentExecutionId": execution_id,
                      "ParentTaskId": task_id}
            version = action.get("version")
            outbound.append(lambda: self._start_child(action["functionName"], child, action.get("input"), parent,
                                                      version))
            return h.event(h.SUB_CREATED, task_id, Name=action["functionName"], Input=action.get("input"),
                           InstanceId=child, RetryOptions=retry, Action=action, Attempt=attempt)
        fire_at = h.parse_iso(action["fireAt"])
        self._send_timer(instance, task_id, fire_at, outbound)
        return h.event(h.TIMER_CREATED, task_id, FireAt=h.iso(fire_at))

    def _send_timer(self, instance: Instance, timer_id: int, fire_at: dt.datetime, outbound: list) -> None:
        fired = h.event(h.TIMER_FIRED, TimerId=timer_id, FireAt=h.iso(fire_at))
        message = {"InstanceId": instance.instance_id, "ExecutionId": instance.execution_id, "Event": fired,
                   "Key": f"{instance.instance_id}:{instance.execution_id}:{timer_id}:timer"}
        delay = max(0.0, (fire_at - h.utc_now()).total_seconds())
        outbound.append(lambda: self.store.send_control(message, delay_seconds=int(delay + 0.999)))

    def _retry_bookkeeping(self, instance: Instance, event: dict, outbound: list) -> list[dict]:
        """Host-owned retries: a back-off timer after a failure, a new attempt after the timer."""
        state = instance.state
        if event["EventType"] in (h.TASK_FAILED, h.SUB_FAILED):
            kind = h.TASK_SCHEDULED if event["EventType"] == h.TASK_FAILED else h.SUB_CREATED
            failed = h.find_event(instance.history, kind, event["TaskScheduledId"])
            options = failed["RetryOptions"]
            last = failed["Attempt"] >= options.get("maxNumberOfAttempts", 1)
            delay_ms = 0 if last else h.retry_delay_ms(options, failed["Attempt"])
            fire_at = h.utc_now() + dt.timedelta(milliseconds=delay_ms)
            timer_id = state["NextId"]
            state["NextId"] += 1
            self._send_timer(instance, timer_id, fire_at, outbound)
            return [h.event(h.TIMER_CREATED, timer_id, FireAt=h.iso(fire_at),
                            RetryFor={"EventType": kind, "EventId": failed["EventId"]})]
        timer = h.find_event(instance.history, h.TIMER_CREATED, event["TimerId"])
        failed = h.find_event(instance.history, timer["RetryFor"]["EventType"], timer["RetryFor"]["EventId"])
        if failed["Attempt"] >= failed["RetryOptions"].get("maxNumberOfAttempts", 1):
            return []  # the SDK now reports the failure to the orchestrator
        task_id = state["NextId"]
        state["NextId"] += 1
        return [self._schedule(instance, failed["Action"], task_id, outbound, failed["Attempt"] + 1)]

    async def _start_child(self, name: str, child_id: str, input_json, parent: dict,
                           version: str | None = None) -> None:
        existing = await self.store.load_state(child_id)
        if existing and all(existing.state.get(k) == v for k, v in parent.items()):
            return  # started by an earlier attempt of this same batch
        try:
            await self.start_instance(name, child_id, input_json, parent, version)
        except (InstanceExists, UnknownOrchestrator, InvalidInstanceId) as refused:
            failed = h.event(h.SUB_FAILED, TaskScheduledId=parent["ParentTaskId"],
                             Reason=str(refused), Details=type(refused).__name__)
            await self.store.send_control({"InstanceId": parent["ParentInstanceId"],
                                           "ExecutionId": parent["ParentExecutionId"], "Event": failed,
                                           "Key": f"{child_id}:refused:{parent['ParentTaskId']}"})

    def _finish(self, instance: Instance, status: str, output, new_history: list[dict], outbound: list,
                terminate_event: dict | None = None, failure: dict | None = None) -> None:
        state = instance.state
        state.update(RuntimeStatus=status, Output=output, LastUpdatedTime=h.iso(h.utc_now()))
        if terminate_event is not None:
            new_history.append(terminate_event)
        result_json = json.dumps(output)
        completed = h.event(h.EXECUTION_COMPLETED, OrchestrationStatus=status, Result=result_json)
        if failure is not None:
            completed["FailureDetails"] = failure
        new_history.append(completed)
        log.info("orchestration %s instance=%s outcome=%s", state["Name"], instance.instance_id, status.lower())
        parent_id = state.get("ParentInstanceId")
        if not parent_id:
            return
        if status == "Completed":
            reply = h.event(h.SUB_COMPLETED, TaskScheduledId=state["ParentTaskId"], Result=result_json)
        else:
            reply = h.event(h.SUB_FAILED, TaskScheduledId=state["ParentTaskId"],
                            Reason=f"Sub-orchestration '{state['Name']}' {status.lower()}",
                            Details=output if isinstance(output, str) else result_json)
            if failure is not None:
                reply["FailureDetails"] = failure
        message = {"InstanceId": parent_id, "ExecutionId": state["ParentExecutionId"], "Event": reply,
                   "Key": f"{instance.instance_id}:{instance.execution_id}:result"}
        outbound.append(lambda: self.store.send_control(message))

    def _continue_as_new(self, instance: Instance, action: dict, new_history: list[dict], outbound: list) -> None:
        """A fresh execution: new id, the action's input, history of the old one dropped."""
        state = instance.state
        new_history.clear()
        old_execution = instance.execution_id
        execution_id = h.new_key()
        state.update(ExecutionId=execution_id, Input=action.get("input"), ActionCount=0, NextId=0,
                     Episodes=0, RuntimeStatus="Running", LastUpdatedTime=h.iso(h.utc_now()))
        instance.history = []
        started = h.event(h.EXECUTION_STARTED, Name=state["Name"], Input=action.get("input"),
                          Version=state.get("Version") or "",
                          OrchestrationInstance={"InstanceId": instance.instance_id, "ExecutionId": execution_id})
        message = {"InstanceId": instance.instance_id, "ExecutionId": execution_id, "Event": started,
                   "Key": f"{instance.instance_id}:{old_execution}:continued"}
        outbound.append(lambda: self.store.send_control(message))


def _events_of(bodies: list[dict]):
    """(message, dedup key, event) for single-event and batched control messages."""
    for body in bodies:
        if "Events" in body:
            for item in body["Events"]:
                yield body, item["Key"], item["Event"]
        else:
            yield body, body["Key"], body["Event"]


def _adoptable_start(instance: Instance | None, bodies: list[dict]):
    """(message, ExecutionStarted) of a start whose instance row was never written: no row at
    all, or a finished row older than the start (a new execution of a reused id)."""
    for body in bodies:
        started = body.get("Event")
        if not started or started.get("EventType") != h.EXECUTION_STARTED or "ExecutionId" not in body:
            continue
        if instance is None:
            return body, started
        if (instance.status in TERMINAL and body["ExecutionId"] != instance.execution_id
                and h.parse_iso(started["Timestamp"]) > h.parse_iso(instance.state["LastUpdatedTime"])):
            return body, started
    return None
