"""Activities of a work item this host is still putting start at once (the idle hop no longer
waits for Azurite to store the message), but their outcomes reach the orchestration only once
the message is stored: an outcome of a message whose put failed is never reported (its episode
was not committed and will send it again), and a stored one is reported, then deleted."""
import asyncio
import json
import secrets

from local_emulator.host.app_loader import FunctionEntry
from local_emulator.host.durable.activities import ActivityWorker
from local_emulator.host.durable.store import SendingWorkItem, TaskHubStore, message_ops
from local_emulator.host.invoker import Invoker

BODY = {"Items": [{"InstanceId": "i1", "ExecutionId": "e1", "TaskId": 0, "Name": "shout", "Input": '"hi"',
                   "Key": "i1:e1:0"}], "MayRepeat": False, "SentLeased": True}


def _scenario(connection: str, body) -> None:
    async def run():
        store = TaskHubStore(connection, "early" + secrets.token_hex(4))
        await store.create()
        invoker = Invoker(max_workers=2)
        ran, delivered = [], []

        def shout(text: str) -> str:
            ran.append(text)
            return text.upper()

        async def deliver(instance_id, execution_id, events, may_repeat):
            delivered.append((instance_id, [event["Event"] for event in events]))

        async def recorded(*_):
            return None

        entry = FunctionEntry("shout", shout, {"type": "activityTrigger", "name": "text"})
        worker = ActivityWorker(store, {"shout": entry}, invoker, 30, lambda entry: {},
                                lambda coroutine: asyncio.ensure_future(coroutine), deliver, recorded)
        try:
            await body(store, worker, ran, delivered)
        finally:
            await invoker.close()
            await store.close()
    asyncio.run(run())


def test_an_outcome_of_a_work_item_whose_put_failed_is_never_reported(azurite):
    async def body(store, worker, ran, delivered):
        put = asyncio.get_running_loop().create_future()
        sending = SendingWorkItem(BODY, put)
        running = asyncio.ensure_future(worker.run(sending))
        while not ran:  # the activity starts before the put has an answer
            await asyncio.sleep(0.01)
        put.set_exception(RuntimeError("queue unavailable"))
        await running
        await asyncio.sleep(worker.report_delay * 2)  # a straggler's flush would have come by now
        assert ran == ["hi"] and delivered == []
        assert worker._running == {} and not worker._unreported  # nothing left waiting for it
    _scenario(azurite, body)


def test_a_stored_work_items_outcome_is_reported_then_the_message_deleted(azurite):
    async def body(store, worker, ran, delivered):
        put = asyncio.ensure_future(store._put_leased(BODY))
        await worker.run(SendingWorkItem(BODY, put))
        assert ran == ["hi"]
        assert [(instance, [json.loads(event["Result"]) for event in events]) for instance, events in delivered] \
            == [("i1", ["HI"])]
        assert (await store.workitems.get_queue_properties()).approximate_message_count == 0  # acknowledged
        assert await message_ops.receive(store.workitems, 32, 1) == []
    _scenario(azurite, body)
