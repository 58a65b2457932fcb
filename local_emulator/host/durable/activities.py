"""Activity work items: run the activity and hand its outcome to the orchestration in
process; the work item is acknowledged only once the outcome is committed to the
orchestration's history, which is the outcome's record. A redelivered work item whose
outcome is recorded reports that outcome instead of running again, and one received while this
process still runs the same task waits for that run's outcome. Outcomes of one instance
share one orchestrator episode (one commit): those finishing together go at once, a
straggler waits at most `report_delay` for its siblings."""
from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

from azure.core.exceptions import ResourceNotFoundError
from azure.functions import meta

from local_emulator.host.app_loader import FunctionEntry
from local_emulator.host.durable import history as h
from local_emulator.host.durable.failures import activity_failed_fields
from local_emulator.host.durable.store import SendingWorkItem, TaskHubStore
from local_emulator.host.invoker import Invoker

log = logging.getLogger("local_emulator.host.durable")


class ActivityWorker:
    def __init__(self, store: TaskHubStore, activities: dict[str, FunctionEntry], invoker: Invoker,
                 lease_seconds: int, extra_inputs: Callable[[FunctionEntry], dict], spawn: Callable,
                 deliver: Callable[[str, str, list[dict], bool], Awaitable[None]],
                 recorded: Callable[[str, str, int], Awaitable[dict | None]]):
        self.store = store
        self.activities = activities
        self.invoker = invoker
        self.lease_seconds = lease_seconds
        self.extra_inputs = extra_inputs
        self._spawn = spawn
        self._deliver = deliver  # outcomes -> the orchestration, committed to its history
        self._recorded = recorded  # a task's outcome if its history already holds it
        self.report_delay = 0.05  # seconds a finished outcome waits for its siblings at most
        self._outbox: dict[tuple[str, str], list] = {}
        self._unreported: Counter = Counter()  # (instance, execution) -> items running or waiting
        self._receipts: dict[str, str] = {}  # work-item id -> pop receipt after a lease renewal
        self._running: dict[tuple, asyncio.Future] = {}  # task -> its outcome, from run until committed

    async def run(self, message) -> None:
        """One work-item message: the activities one orchestrator episode scheduled. It is
        deleted only once every outcome is in its orchestration's history. One this process
        is still putting (SendingWorkItem) starts its activities at once; their outcomes are
        reported only once it is stored (if the put fails, its episode fails and sends it again)."""
        try:
            body = message.body if isinstance(message, SendingWorkItem) else await self.store.body(message)
            items = body["Items"]
            keys = [(item["InstanceId"], item["ExecutionId"], int(item["TaskId"])) for item in items]
        except (ValueError, KeyError, TypeError, ResourceNotFoundError):
            log.warning("work-item queue: dropping a malformed message")
            await self.store.workitems.delete_message(message)
            return
        renewal = asyncio.create_task(self._keep_leased(message))
        # a first delivery of a message sent once cannot have recorded outcomes yet; a message
        # its sender ran itself (dequeue count 0) is received only once that sender has died
        check = (message.dequeue_count > 1 or body.get("MayRepeat", False)
                 or (body.get("SentLeased", False) and message.dequeue_count > 0))
        self._unreported.update((instance_id, execution_id) for instance_id, execution_id, _ in keys)
        try:
            await asyncio.gather(*(self._run_item(item, key, check, message) for item, key in zip(items, keys)))
            renewal.cancel()
            message = await _stored(message)
            await self.store.ack_workitem(message.id, self._receipts.pop(message.id, message.pop_receipt))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("activity dispatch failed; the work item will be delivered again")
        finally:
            renewal.cancel()
            self._receipts.pop(message.id, None)

    async def _run_item(self, item: dict, key: tuple[str, str, int], check: bool, message) -> None:
        instance_id, execution_id, _ = key
        runner = None
        try:
            try:
                outcome, runner = await self._outcome(item, key, check)
                await _stored(message)  # no outcome of a message that was never stored
            except BaseException:
                self._uncount((instance_id, execution_id), 1)  # no outcome of this item will come
                raise
            await self._report(instance_id, execution_id, outcome, f"{item['Key']}:done", check)
        finally:
            if runner is not None and self._running.get(key) is runner:
                del self._running[key]  # its outcome is committed now, or its message comes again

    async def _outcome(self, item: dict, key: tuple[str, str, int], check: bool) -> tuple[dict, asyncio.Future | None]:
        """The task's recorded outcome, the outcome of the run of it this process has under way
        (a message sent again after a crash, received while the first still runs), else a run's
        outcome; with the future that marks the run when this call ran it."""
        outcome = await self._recorded(*key) if check else None
        while outcome is None:
            running = self._running.get(key)
            if running is None:
                break
            outcome = await asyncio.shield(running)  # None: that run ended without one (and left)
        if outcome is not None:
            return outcome, None
        runner = self._running[key] = asyncio.get_running_loop().create_future()
        try:
            outcome = await self._execute_activity(item)
        finally:
            runner.set_result(outcome)
            if outcome is None:
                del self._running[key]
        return outcome, runner

    async def _report(self, instance_id: str, execution_id: str, outcome: dict, key: str, may_repeat: bool) -> None:
        """Hand the outcome to its orchestration and wait until it is committed. Outcomes of one
        instance share one episode: they go together as soon as none of that instance is still
        running, else after `report_delay`."""
        batch_key = (instance_id, execution_id)
        pending = self._outbox.get(batch_key)
        if pending is None:
            pending = self._outbox[batch_key] = []
            asyncio.get_running_loop().call_later(self.report_delay, self._spawn_flush, batch_key, pending)
        done = asyncio.get_running_loop().create_future()
        pending.append((outcome, key, may_repeat, done))
        if len(pending) >= self._unreported[batch_key]:
            self._spawn_flush(batch_key, pending)
        await done

    def _spawn_flush(self, batch_key, pending: list) -> None:
        if self._outbox.get(batch_key) is pending:  # not flushed yet
            del self._outbox[batch_key]
            self._uncount(batch_key, len(pending))
            self._spawn(self._flush(batch_key, pending))

    def _uncount(self, batch_key, count: int) -> None:
        self._unreported[batch_key] -= count
        if self._unreported[batch_key] <= 0:
            del self._unreported[batch_key]

    async def _flush(self, batch_key, pending: list) -> None:
        instance_id, execution_id = batch_key
        try:
            events = [{"Key": key, "Event": outcome} for outcome, key, _, _ in pending]
            await self._deliver(instance_id, execution_id, events, any(repeat for *_, repeat, _ in pending))
        except BaseException as failure:
            for *_, done in pending:
                if not done.done():
                    done.set_exception(failure if isinstance(failure, Exception) else RuntimeError("stopped"))
            if not isinstance(failure, Exception):
                raise
            return
        for *_, done in pending:
            if not done.done():
                done.set_result(None)

    async def _keep_leased(self, message) -> None:
        """Extend the work item's invisibility while a long activity runs."""
        message = await _stored(message)
        receipt = message.pop_receipt
        while True:
            await asyncio.sleep(max(1.0, self.lease_seconds / 3))
            updated = await self.store.workitems.update_message(
                message.id, receipt, visibility_timeout=self.lease_seconds)
            receipt = updated.pop_receipt
            self._receipts[message.id] = receipt

    async def _execute_activity(self, item: dict) -> dict:
        task_id = item["TaskId"]
        entry = self.activities.get(item["Name"])
        if entry is None:
            return h.event(h.TASK_FAILED, TaskScheduledId=task_id,
                           Reason=f"The activity function '{item['Name']}' doesn't exist.", Details="")
        converter = meta.get_binding_registry().get("activityTrigger")
        raw = item.get("Input")
        argument = None if raw is None else converter.decode(meta.Datum(raw, "json"), trigger_metadata={})
        kwargs = {entry.trigger["name"]: argument, **self.extra_inputs(entry)}
        try:
            result = await self.invoker.invoke(entry, kwargs)
        except Exception as failure:
            return h.event(h.TASK_FAILED, TaskScheduledId=task_id, **activity_failed_fields(item["Name"], failure))
        encoded = converter.encode(result, expected_type=None)
        return h.event(h.TASK_COMPLETED, TaskScheduledId=task_id, Result=encoded.value)


async def _stored(message):
    """The queue's record of a work-item message (waiting for the put of one still being sent)."""
    return await message.persisted() if isinstance(message, SendingWorkItem) else message
