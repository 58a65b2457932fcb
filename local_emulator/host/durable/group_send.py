"""Queue messages in group commit: messages that become ready while one is being sent travel
together in the next one (work items: one list of activities; control messages: a list of
bodies, each for its own instance).

Why: a queue message put is Azurite's dearest operation (its queue service appends every
message to one extent file, one at a time, and flushes it to disk), and under load the puts
queue up behind each other. Every caller still returns only once a message holding its
payload is in the queue, so what it does next (commit an episode, write an instance row)
happens after its message is durable, as before. Nothing waits on a timer: on an idle host a
message goes at once; under load, the send in flight is what gathers the next one. A lone
payload is sent exactly as it was given."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

MAX_BATCH_BYTES = 40 * 1024  # below the 45 KB at which a message would go to a blob
MAX_ITEMS = 100  # activities one work-item message may hold (one lease and one delete for all)
MAX_MESSAGES = 32  # control bodies one message may hold (a receive takes 32 messages)


def chunks(items: list[dict], limit: int = MAX_BATCH_BYTES) -> list[list[dict]]:
    """One episode's activities in as few lists as fit a message each."""
    result, current, size = [], [], 0
    for item in items:
        item_size = len(json.dumps(item))
        if current and (size + item_size > limit or len(current) >= MAX_ITEMS):
            result.append(current)
            current, size = [], 0
        current.append(item)
        size += item_size
    if current:
        result.append(current)
    return result


def merge_work_items(payloads: list[dict]) -> dict:
    return {"Items": [item for payload in payloads for item in payload["Items"]],
            "MayRepeat": any(payload.get("MayRepeat", False) for payload in payloads)}


def work_item_count(payload: dict) -> int:
    return len(payload["Items"])


def merge_control(payloads: list[dict]) -> dict:
    return {"Messages": payloads}


def split_control(body: dict) -> list[dict]:
    """The instance bodies a received control message carries."""
    return body.get("Messages", [body])


class GroupSender:
    def __init__(self, send: Callable[[dict], Awaitable[None]], merge: Callable[[list[dict]], dict],
                 count: Callable[[dict], int] = lambda payload: 1, max_count: int = MAX_MESSAGES):
        self._send = send  # puts one message
        self._merge = merge
        self._count = count
        self._max_count = max_count
        self._waiting: list[tuple[dict, int, asyncio.Future]] = []
        self._drainer: asyncio.Task | None = None

    async def send(self, payload: dict) -> None:
        """Return once `payload` is in the queue, alone or merged with others."""
        done = asyncio.get_running_loop().create_future()
        self._waiting.append((payload, len(json.dumps(payload)), done))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        batch: list = []
        try:
            while self._waiting:
                batch, size, count = [], 0, 0
                while self._waiting:
                    payload, payload_size, _ = self._waiting[0]
                    payload_count = self._count(payload)
                    if batch and (size + payload_size > MAX_BATCH_BYTES or count + payload_count > self._max_count):
                        break
                    batch.append(self._waiting.pop(0))
                    size, count = size + payload_size, count + payload_count
                payloads = [payload for payload, _, _ in batch]
                try:
                    await self._send(payloads[0] if len(payloads) == 1 else self._merge(payloads))
                except Exception as failure:
                    _settle(batch, failure)
                else:
                    _settle(batch, None)
        except BaseException:  # stopped: nobody may wait for a send that will not come
            _settle(batch + self._waiting, RuntimeError("queue sender stopped"))
            self._waiting = []
            raise

    async def stop(self) -> None:
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.gather(self._drainer, return_exceptions=True)
        _settle(self._waiting, RuntimeError("queue sender stopped"))  # a drainer cancelled unstarted
        self._waiting = []


def _settle(batch: list, failure: BaseException | None) -> None:
    for *_, done in batch:
        if done.done():
            continue
        if failure is None:
            done.set_result(None)
        else:
            done.set_exception(failure)
