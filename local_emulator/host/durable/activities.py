"""Activity work items: run the activity, record its outcome in the task hub before the
work item is acknowledged, and report it to the orchestrator. A redelivered work item whose
outcome is recorded reports that outcome instead of running again. Outcomes of one instance
finishing within `report_delay` share one table transaction and one control message."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

from azure.core.exceptions import ResourceNotFoundError
from azure.functions import meta

from local_emulator.host.app_loader import FunctionEntry
from local_emulator.host.durable import history as h
from local_emulator.host.durable.failures import activity_failed_fields
from local_emulator.host.durable.store import TaskHubStore
from local_emulator.host.invoker import Invoker

log = logging.getLogger("local_emulator.host.durable")


class ActivityWorker:
    def __init__(self, store: TaskHubStore, activities: dict[str, FunctionEntry], invoker: Invoker,
                 lease_seconds: int, extra_inputs: Callable[[FunctionEntry], dict], spawn: Callable):
        self.store = store
        self.activities = activities
        self.invoker = invoker
        self.lease_seconds = lease_seconds
        self.extra_inputs = extra_inputs
        self._spawn = spawn
        self.report_delay = 0.05  # seconds
        self._outbox: dict[tuple[str, str], list] = {}
        self._receipts: dict[str, str] = {}  # work-item id -> pop receipt after a lease renewal

    async def run(self, message) -> None:
        """One work-item message: the activities one orchestrator episode scheduled."""
        try:
            body = await self.store.body(message)
            items = body["Items"]
            keys = [(item["InstanceId"], item["ExecutionId"], int(item["TaskId"])) for item in items]
        except (ValueError, KeyError, TypeError, ResourceNotFoundError):
            log.warning("work-item queue: dropping a malformed message")
            await self.store.workitems.delete_message(message)
            return
        renewal = asyncio.create_task(self._keep_leased(message))
        try:
            # a first delivery of a message sent once cannot have recorded outcomes yet
            check = message.dequeue_count > 1 or body.get("MayRepeat", False)
            await asyncio.gather(*(self._run_item(item, key, check) for item, key in zip(items, keys)))
            renewal.cancel()
            await self.store.workitems.delete_message(message.id, self._receipts.pop(message.id, message.pop_receipt))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("activity dispatch failed; the work item will be delivered again")
        finally:
            renewal.cancel()
            self._receipts.pop(message.id, None)

    async def _run_item(self, item: dict, key: tuple[str, str, int], check: bool) -> None:
        instance_id, execution_id, task_id = key
        record_key = f"{execution_id}-{task_id:06d}"
        if item.get("Rewind"):   # a rewound task runs again: its failed outcome is recorded under the plain key
            record_key += f"-r{int(item['Rewind'])}"
        outcome = await self.store.completed_activity(instance_id, record_key) if check else None
        fresh = outcome is None
        if fresh:
            outcome = await self._execute_activity(item)
        await self._report(instance_id, execution_id, record_key, outcome, f"{item['Key']}:done", fresh)

    async def _report(self, instance_id: str, execution_id: str, record_key: str, outcome: dict, key: str,
                      fresh: bool) -> None:
        """Record the outcome, then tell the orchestrator. Outcomes of one instance finishing
        within a few milliseconds share one table transaction and one control message."""
        batch_key = (instance_id, execution_id)
        pending = self._outbox.get(batch_key)
        if pending is None:
            pending = self._outbox[batch_key] = []
            asyncio.get_running_loop().call_later(self.report_delay, self._spawn_flush, batch_key)
        done = asyncio.get_running_loop().create_future()
        pending.append((record_key, outcome, key, fresh, done))
        await done

    def _spawn_flush(self, batch_key) -> None:
        self._spawn(self._flush(batch_key))

    async def _flush(self, batch_key) -> None:
        instance_id, execution_id = batch_key
        pending = self._outbox.pop(batch_key, [])
        try:
            recorded = await self.store.record_activities(
                instance_id, [(record_key, outcome) for record_key, outcome, _, fresh, _ in pending if fresh])
            events = [{"Key": key, "Event": recorded.get(record_key, outcome)}
                      for record_key, outcome, key, _, _ in pending]
            await self.store.send_control({"InstanceId": instance_id, "ExecutionId": execution_id,
                                           "Events": events, "Key": events[0]["Key"]})
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
