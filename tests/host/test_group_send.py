"""Queue messages in group commit (local_emulator/host/durable/group_send.py): a lone message
goes at once and unchanged; messages that become ready while a put is in flight share the
next put; every caller returns only after a put holding its payload succeeded, and learns of
a put that failed."""
import asyncio

import pytest

from local_emulator.host.durable import group_send
from local_emulator.host.durable.group_send import GroupSender


class Queue:
    """A put that can be held open, to let payloads gather behind it, or made to fail."""

    def __init__(self):
        self.puts: list[dict] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail_next = False

    async def put(self, message: dict) -> None:
        await self.gate.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("storage unreachable")
        self.puts.append(message)


async def _gathered(sender: GroupSender, queue: Queue, payloads: list[dict]) -> None:
    """Hold the first payload's put open until the others are waiting, then release it."""
    queue.gate.clear()
    first = asyncio.create_task(sender.send(payloads[0]))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(sender.send(payload)) for payload in payloads[1:]]
    await asyncio.sleep(0)
    queue.gate.set()
    await asyncio.gather(first, *rest)


def test_a_lone_message_is_sent_at_once_as_given():
    async def scenario():
        queue = Queue()
        sender = GroupSender(queue.put, group_send.merge_control)
        body = {"InstanceId": "a", "Key": "k", "Event": {"EventType": 0}}
        await asyncio.wait_for(sender.send(body), 1)  # no timer to wait for
        assert queue.puts == [body]
    asyncio.run(scenario())


def test_control_bodies_ready_during_a_put_share_the_next_message():
    async def scenario():
        queue = Queue()
        sender = GroupSender(queue.put, group_send.merge_control)
        bodies = [{"InstanceId": f"i{n}", "Key": f"k{n}"} for n in range(5)]
        await _gathered(sender, queue, bodies)
        assert queue.puts == [bodies[0], {"Messages": bodies[1:]}]
        assert group_send.split_control(queue.puts[1]) == bodies[1:]
        assert group_send.split_control(bodies[0]) == [bodies[0]]
    asyncio.run(scenario())


def test_work_items_merge_into_one_list_that_may_repeat_if_any_part_may():
    async def scenario():
        queue = Queue()
        sender = GroupSender(queue.put, group_send.merge_work_items, group_send.work_item_count,
                             group_send.MAX_ITEMS)
        messages = [{"Items": [{"InstanceId": f"i{n}", "TaskId": t} for t in range(3)], "MayRepeat": n == 2}
                    for n in range(4)]
        await _gathered(sender, queue, messages)
        assert queue.puts[0] == messages[0]
        assert queue.puts[1]["Items"] == [item for message in messages[1:] for item in message["Items"]]
        assert queue.puts[1]["MayRepeat"] is True
    asyncio.run(scenario())


def test_a_merged_message_stays_under_the_item_and_size_limits():
    async def scenario():
        queue = Queue()
        sender = GroupSender(queue.put, group_send.merge_work_items, group_send.work_item_count, max_count=10)
        small = [{"Items": [{"TaskId": n} for n in range(4)]} for _ in range(5)]
        big = [{"Items": [{"Input": "x" * (group_send.MAX_BATCH_BYTES // 2)}]} for _ in range(3)]
        await _gathered(sender, queue, [{"Items": [{"TaskId": -1}]}] + small + big)
        assert all(len(put["Items"]) <= 10 for put in queue.puts)
        assert sum(len(put["Items"]) for put in queue.puts) == 1 + 20 + 3  # nothing lost
        assert all(len(str(put)) < group_send.MAX_BATCH_BYTES * 1.1 for put in queue.puts if len(put["Items"]) > 1)
    asyncio.run(scenario())


def test_a_failed_put_fails_every_caller_it_carried_and_the_next_put_still_goes():
    async def scenario():
        queue = Queue()
        sender = GroupSender(queue.put, group_send.merge_control)
        queue.fail_next = True
        with pytest.raises(ConnectionError):
            await sender.send({"InstanceId": "lost"})
        assert queue.puts == []  # the caller knows: it must not commit what this message carried
        await sender.send({"InstanceId": "next"})
        assert queue.puts == [{"InstanceId": "next"}]
    asyncio.run(scenario())


def test_stopping_fails_the_callers_still_waiting():
    async def scenario():
        queue = Queue()
        sender = GroupSender(queue.put, group_send.merge_control)
        queue.gate.clear()
        waiting = [asyncio.create_task(sender.send({"InstanceId": f"i{n}"})) for n in range(3)]
        await asyncio.sleep(0)
        await sender.stop()
        results = await asyncio.gather(*waiting, return_exceptions=True)
        assert all(isinstance(result, RuntimeError) for result in results)
        assert queue.puts == []
    asyncio.run(scenario())


def test_an_episode_s_activities_are_cut_into_messages_that_fit():
    items = [{"TaskId": n, "Input": "y" * 1000} for n in range(120)]
    chunks = group_send.chunks(items)
    assert [item for chunk in chunks for item in chunk] == items
    assert all(len(chunk) <= group_send.MAX_ITEMS for chunk in chunks)
    assert all(len(str(chunk)) <= group_send.MAX_BATCH_BYTES * 1.1 for chunk in chunks)
