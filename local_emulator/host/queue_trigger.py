"""Queue triggers (`@app.queue_trigger`) on Azure Storage queues (Azurite), as the storage
extension's queue listener runs them, with host.json `extensions.queues`:
- messages are read through the trigger's own connection setting, `batchSize` (16) at a time,
  the next batch as soon as the messages in flight drop to `newBatchThreshold` (half the batch),
  polled with a back-off from 100 ms up to `maxPollingInterval` (1 minute) while idle;
- `messageEncoding` base64 (the default) or none; a message that is not valid base64 goes
  straight to the poison queue, as the extension's decoding-failure handler sends it;
- a message being processed is invisible for a 10-minute lease, renewed every half lease while
  its function runs (the extension's visibility-update command), so a long run is never
  handed to a second invocation;
- success deletes the message; a failure makes it visible again after `visibilityTimeout`
  (0); once a failed message has been dequeued `maxDequeueCount` (5) times, its text goes to
  `<queue>-poison` (same account) and it is deleted. A message found already dequeued more
  often than that (its host died mid-run) is moved without running it again;
- the function gets a QueueMessage (id, body, dequeue count, times, pop receipt) and its blob
  bindings may name `{queueTrigger}`, the message's JSON properties and its metadata."""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import re

from azure.core.exceptions import ResourceExistsError
from azure.functions import meta
from azure.storage.queue.aio import QueueClient

from local_emulator.host.app_loader import FunctionEntry, FunctionIndex
from local_emulator.host.app_settings import connection_string
from local_emulator.host.blob_bindings import BindingExpressionError, resolve_settings
from local_emulator.host.invoker import Invoker

log = logging.getLogger("local_emulator.host.queues")
DEFAULTS = {"batchSize": 16, "maxDequeueCount": 5, "visibilityTimeout": "00:00:00", "maxPollingInterval": "00:01:00",
            "messageEncoding": "base64"}
MIN_POLL_SECONDS = 0.1
LEASE_SECONDS = 600  # how long a message being processed stays invisible; renewed at half of it
LEASE_SETTING = "CCR_HOST_QUEUE_LEASE_SECONDS"  # the local host's own knob, for tests of renewal only


def seconds(value) -> float:
    """A host.json duration: "hh:mm:ss[.fff]" or a number of milliseconds (maxPollingInterval's old form)."""
    if isinstance(value, (int, float)):
        return float(value) / 1000.0
    found = re.fullmatch(r"(?:(\d+)\.)?(\d+):(\d+):(\d+(?:\.\d+)?)", str(value).strip())
    if not found:
        raise ValueError(f"host.json queues: {value!r} is not a duration (hh:mm:ss)")
    days, hours, minutes, secs = found.groups()
    return int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + float(secs)


def queue_options(index: FunctionIndex) -> dict:
    options = {**DEFAULTS, **index.extension_options("queues")}
    for key in ("visibilityTimeout", "maxPollingInterval"):
        options[key] = seconds(options[key])
    if not 1 <= int(options["batchSize"]) <= 32:
        raise ValueError("host.json queues: batchSize must be within 1 and 32")
    options.setdefault("newBatchThreshold", int(options["batchSize"]) // 2)
    if str(options["messageEncoding"]).lower() not in ("base64", "none"):
        raise ValueError("host.json queues: messageEncoding must be base64 or none")
    return options


class QueueTriggers:
    def __init__(self, index: FunctionIndex, invoker: Invoker, extra_inputs):
        self.functions = index.by_trigger("queueTrigger")
        self.options = queue_options(index)
        self.invoker = invoker
        self.extra_inputs = extra_inputs
        self._tasks: list[asyncio.Task] = []
        self._clients: list[QueueClient] = []
        self._stopping = asyncio.Event()
        self.lease_seconds = int(os.environ.get(LEASE_SETTING, LEASE_SECONDS))

    async def start(self) -> None:
        for entry in self.functions:
            try:
                connection = connection_string(entry.trigger.get("connection") or "AzureWebJobsStorage")
                queue_name = resolve_settings(entry.trigger["queueName"])
            except (ValueError, BindingExpressionError) as unresolved:  # this function alone does not run, as on Azure
                log.error("Error indexing method 'Functions.%s'. %s", entry.name, unresolved)
                continue
            queue = QueueClient.from_connection_string(connection, queue_name)
            poison = QueueClient.from_connection_string(connection, f"{queue_name}-poison")
            self._clients += [queue, poison]
            for client in (queue, poison):  # the listener creates its queues, as the extension does
                try:
                    await client.create_queue()
                except ResourceExistsError:
                    pass
            self._tasks.append(asyncio.create_task(self._listen(entry, queue, poison)))

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Let invocations in flight finish (their message is then deleted or released)."""
        self._stopping.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_seconds)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for client in self._clients:
            await client.close()

    async def _listen(self, entry: FunctionEntry, queue: QueueClient, poison: QueueClient) -> None:
        """Fetch a batch whenever the messages in flight drop to `newBatchThreshold`, so a long
        run never stops the queue (at most batchSize + newBatchThreshold run at once)."""
        batch, threshold = int(self.options["batchSize"]), int(self.options["newBatchThreshold"])
        in_flight: set[asyncio.Task] = set()
        idle = MIN_POLL_SECONDS
        while not self._stopping.is_set():
            if len(in_flight) > threshold:
                await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                continue
            try:
                messages = [m async for m in queue.receive_messages(
                    messages_per_page=batch, max_messages=batch, visibility_timeout=self.lease_seconds)]
            except Exception:  # keep listening; storage may come back
                log.exception("queue trigger %s: receiving failed", entry.name)
                messages = []
            for message in messages:
                task = asyncio.create_task(self._process(entry, queue, poison, message))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            if messages:
                idle = MIN_POLL_SECONDS
                continue
            try:
                await asyncio.wait_for(self._stopping.wait(), idle)
            except TimeoutError:
                idle = min(idle * 2, self.options["maxPollingInterval"])
        if in_flight:
            await asyncio.wait(in_flight)

    async def _process(self, entry: FunctionEntry, queue: QueueClient, poison: QueueClient, message) -> None:
        max_dequeue = int(self.options["maxDequeueCount"])
        try:
            body = self._decode(message.content)
        except ValueError:
            log.error("queue trigger %s: message %s is not valid base64; moved to %s", entry.name, message.id,
                      poison.queue_name)
            await self._to_poison(queue, poison, message)
            return
        if message.dequeue_count > max_dequeue:
            await self._to_poison(queue, poison, message)
            return
        done = asyncio.Event()
        renewal = asyncio.create_task(self._renew(entry, queue, message, done))
        try:
            await self._invoke(entry, message, body)
            failed = False
        except Exception:  # noqa: BLE001 - any failure of the function counts as a failed dequeue
            failed = True
        finally:
            done.set()
            await renewal  # an update in flight finishes first: its pop receipt is the one to use
        if not failed:
            await queue.delete_message(message)
        elif message.dequeue_count >= max_dequeue:
            log.warning("queue trigger %s: message %s failed %d times; moved to %s", entry.name, message.id,
                        message.dequeue_count, poison.queue_name)
            await self._to_poison(queue, poison, message)
        else:
            await queue.update_message(message, visibility_timeout=int(self.options["visibilityTimeout"]))

    async def _renew(self, entry: FunctionEntry, queue: QueueClient, message, done: asyncio.Event) -> None:
        """Keep `message` invisible until `done`: every half lease, another full lease. Each update
        gives a new pop receipt, kept on `message` for the final delete or release; a failed
        update is retried at the next turn (half the lease is still left)."""
        while True:
            try:
                await asyncio.wait_for(done.wait(), self.lease_seconds / 2)
                return
            except TimeoutError:
                pass
            try:
                renewed = await queue.update_message(message, visibility_timeout=self.lease_seconds)
            except Exception:  # noqa: BLE001 - storage may come back before the lease ends
                log.warning("queue trigger %s: renewing the lease of message %s failed", entry.name, message.id)
                continue
            message.pop_receipt, message.next_visible_on = renewed.pop_receipt, renewed.next_visible_on

    def _decode(self, content: str) -> bytes:
        if str(self.options["messageEncoding"]).lower() == "none":
            return content.encode("utf-8")
        try:
            return base64.b64decode(content.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise ValueError("not base64") from None

    @staticmethod
    async def _to_poison(queue: QueueClient, poison: QueueClient, message) -> None:
        await poison.send_message(message.content, time_to_live=-1)
        await queue.delete_message(message)

    async def _invoke(self, entry: FunctionEntry, message, body: bytes) -> None:
        try:
            text = body.decode("utf-8")
            datum = meta.Datum(text, "string")
        except UnicodeDecodeError:
            text, datum = None, meta.Datum(body, "bytes")
        metadata = {"Id": message.id, "DequeueCount": message.dequeue_count, "PopReceipt": message.pop_receipt,
                    "InsertionTime": _iso(message.inserted_on), "ExpirationTime": _iso(message.expires_on),
                    "NextVisibleTime": _iso(message.next_visible_on)}
        trigger_metadata = {key: meta.Datum(value, "int" if isinstance(value, int) else "string")
                            for key, value in metadata.items() if value is not None}
        argument = entry.decode_trigger(datum, trigger_metadata)
        binding_data = {**metadata, "queueTrigger": text}
        if text is not None:
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict):
                binding_data = {**parsed, **binding_data}
        await self.invoker.invoke(entry, {entry.trigger["name"]: argument, **self.extra_inputs(entry)},
                                  binding_data=binding_data)


def _iso(moment) -> str | None:
    return moment.isoformat() if moment is not None else None
