"""Event Grid-source blob triggers (`source=EventGrid`, the only kind Flex Consumption runs), as
the storage extension serves them: Event Grid posts to
`POST /runtime/webhooks/blobs?functionName=Host.Functions.<name>&code=<blobs_extension key>`.

- `code=` (or `x-functions-key`) must be the host's `blobs_extension` system key: 401 otherwise.
- `aeg-event-type: SubscriptionValidation`: answered 200 `{"validationResponse": <code>}` (an
  Event Grid schema array, or one CloudEvent whose data may be a JSON string).
- `aeg-event-type: Notification`: each event (a JSON array, or one object) becomes a message on
  the host's blob-trigger queue `azure-webjobs-blobtrigger-<host id>` in the host's storage and
  the answer is 202 Accepted; the function runs from that queue, not inside the request. The
  container and blob name come from `data.url` (path-style URLs such as Azurite's carry the
  account name first), the ETag from `data.eTag`, quoted as the host quotes it.
- `Unsubscribe` is answered 202, any other event type header 400.
- The queue listener reads the blob through the trigger's own connection setting: a blob gone
  meanwhile is dropped, a failed invocation is retried (at least once, like every queue), and
  after 5 dequeues the message goes to `webjobs-blobtrigger-poison` on the data account.

Stricter than Azure, on purpose (the twin accepts nothing Azure would act on): a functionName
that is not an EventGrid-source blob trigger of this app is refused 404 (Azure accepts the
event and drops it later, so a mis-addressed subscription fails its handshake here instead of
losing events silently), and an event for a blob outside the function's path (other
container, or a name the path pattern does not match) is acknowledged and never invokes it.
"""
from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
from urllib.parse import unquote, urlsplit

from aiohttp import web
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions import meta
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from local_emulator.host.app_loader import FunctionEntry, FunctionIndex, supports_deferred_binding
from local_emulator.host.blob_trigger import (MAX_ATTEMPTS, POISON_QUEUE, BlobTriggers, blob_reference,
                                              compile_blob_path, path_values)
from local_emulator.host.invoker import Invoker
from local_emulator.host.keys import key_matches, unauthorized

log = logging.getLogger("local_emulator.host.blobs")
PATH = "/runtime/webhooks/blobs"
FUNCTION_PREFIX = "Host.Functions."
EVENT_GRID_SOURCE = "EventGrid"


def is_event_grid_source(entry: FunctionEntry) -> bool:
    return str(entry.trigger.get("source") or "").lower() == EVENT_GRID_SOURCE.lower()


def trigger_queue_name(host_id: str) -> str:
    """The host's blob-trigger queue (host ids are at most 32 characters, lowercase)."""
    return f"azure-webjobs-blobtrigger-{host_id.lower()[:32]}"


def blob_from_url(url: str) -> tuple[str, str]:
    """(container, blob name) of a blob URL, read as BlobUriBuilder reads it: on an IP-style
    host (an IP address or localhost, e.g. Azurite) the first path segment is the account."""
    parts = urlsplit(url)
    segments = parts.path.lstrip("/").split("/")
    host = parts.hostname or ""
    try:
        ip_style = host == "localhost" or bool(ipaddress.ip_address(host))
    except ValueError:
        ip_style = False
    if ip_style:
        segments = segments[1:]
    if len(segments) < 2 or not segments[0] or not segments[1]:
        raise ValueError("the event's data.url names no container and blob")
    return unquote(segments[0]), unquote("/".join(segments[1:]))


class BlobWebhookTriggers:
    """The blobs extension's webhook and its queue listener for one app."""

    def __init__(self, index: FunctionIndex, invoker: Invoker, system_key: str, host_connection: str, host_id: str,
                 extra_inputs, lease_seconds: float = 30.0, poll_seconds: float = 1.0):
        self._connections: dict[str, str] = {}
        for entry in index.by_trigger("blobTrigger"):
            if is_event_grid_source(entry) and self._connection(entry):
                self._connections[entry.name] = self._connection(entry)
        self.functions = {name: index.entries[name] for name in self._connections}
        self.invoker, self.system_key, self.extra_inputs = invoker, system_key, extra_inputs
        self.lease_seconds, self.poll_seconds = lease_seconds, poll_seconds
        self.queue = QueueClient.from_connection_string(host_connection, trigger_queue_name(host_id),
                                                        message_encode_policy=TextBase64EncodePolicy(),
                                                        message_decode_policy=TextBase64DecodePolicy())
        self._clients: dict[str, BlobServiceClient] = {}
        self._poison: dict[str, QueueClient] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task | None = None

    @staticmethod
    def _connection(entry: FunctionEntry) -> str | None:
        """The trigger's connection string. Indexing already left out a function whose setting
        is undefined; one defined only identity-based (`<name>__...`) the local host cannot
        reach, so it is left out too, logged, never pointed at another account."""
        setting = entry.trigger.get("connection") or "AzureWebJobsStorage"
        value = os.environ.get(setting)
        if not value:
            log.error("function %s: blob trigger connection %r has no connection string; the local host "
                      "serves no identity-based storage, so the function is not indexed", entry.name, setting)
        return value

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(PATH, self.handle)

    async def start(self) -> None:
        if not self.functions:
            return
        try:
            await self.queue.create_queue()
        except ResourceExistsError:
            pass
        self._task = asyncio.create_task(self._listen())

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Let invocations in flight finish (their messages are then deleted), then stop."""
        self._stopping.set()
        self._wake.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, grace_seconds)
            except asyncio.TimeoutError:
                log.warning("blob webhook: an invocation outlived the %.0f s shutdown grace", grace_seconds)
        for client in [*self._clients.values(), *self._poison.values(), self.queue]:
            await client.close()

    # --- the webhook --------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.Response:
        if not key_matches(request, self.system_key):
            return unauthorized()
        function_id = request.query.get("functionName", "")
        entry = self.functions.get(function_id[len(FUNCTION_PREFIX):]) if function_id.startswith(FUNCTION_PREFIX) else None
        if entry is None:
            return web.json_response({"error": "no EventGrid-source blob trigger with that functionName "
                                               "(expected Host.Functions.<name>)"}, status=404)
        kind = request.headers.get("aeg-event-type", "").lower()
        if kind == "unsubscribe":
            return web.Response(status=202)
        if kind not in ("subscriptionvalidation", "notification"):
            return web.json_response({"error": "aeg-event-type must be SubscriptionValidation or Notification"},
                                     status=400)
        try:
            body = json.loads(await request.read())
            if kind == "subscriptionvalidation":
                return web.json_response({"validationResponse": _validation_code(body)})
            events = body if isinstance(body, list) else [body]
            messages = [self._message(entry, event) for event in events]
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            return web.json_response({"error": "not an Event Grid blob event"}, status=400)
        for message in messages:
            if message is not None:
                await self.queue.send_message(json.dumps(message))
        self._wake.set()
        return web.Response(status=202)

    def _message(self, entry: FunctionEntry, event: dict) -> dict | None:
        """The BlobTriggerMessage for one event, or None for a blob outside the function's path."""
        data = event["data"]
        container, name = blob_from_url(data["url"])
        watched, _, pattern = compile_blob_path(entry.trigger["path"])
        if container != watched or not pattern.match(name):
            log.info("blob webhook %s: event for a blob outside %s ignored", entry.name, entry.trigger["path"])
            return None
        etag = str(data["eTag"]).strip('"')
        return {"Type": "BlobTrigger", "FunctionId": FUNCTION_PREFIX + entry.name,
                "BlobType": str(data["blobType"]), "ContainerName": container, "BlobName": name,
                "ETag": f'"{etag}"'}

    # --- the queue listener -------------------------------------------------------------

    async def _listen(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                batch = [m async for m in self.queue.receive_messages(max_messages=16,
                                                                       visibility_timeout=int(self.lease_seconds))]
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("blob webhook: reading the trigger queue failed")
                batch = []
            if batch:
                outcomes = await asyncio.gather(*(self._execute(message) for message in batch), return_exceptions=True)
                for outcome in outcomes:   # storage trouble: the message stays and comes back after its lease
                    if isinstance(outcome, Exception):
                        log.warning("blob webhook: handling a trigger message failed (%s)", type(outcome).__name__)
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            except asyncio.TimeoutError:
                pass

    def _service(self, entry: FunctionEntry) -> BlobServiceClient:
        connection = self._connections[entry.name]
        if connection not in self._clients:
            self._clients[connection] = BlobServiceClient.from_connection_string(connection)
        return self._clients[connection]

    async def _execute(self, message) -> None:
        try:
            body = json.loads(message.content)
            entry = self.functions.get(str(body["FunctionId"]).removeprefix(FUNCTION_PREFIX))
        except (ValueError, KeyError):
            entry = None
        if entry is None:  # unreadable, or a function this app no longer has: dropped, as the host does
            await self.queue.delete_message(message)
            return
        container = self._service(entry).get_container_client(body["ContainerName"])
        try:
            properties = await container.get_blob_client(body["BlobName"]).get_blob_properties()
        except ResourceNotFoundError:
            await self.queue.delete_message(message)  # deleted since the event: nothing to run
            return
        try:
            if supports_deferred_binding(entry.trigger):
                datum = blob_reference(entry.trigger.get("connection") or "AzureWebJobsStorage",
                                       container.container_name, properties.name)
            else:
                datum = meta.Datum(await (await container.download_blob(properties.name)).readall(), "bytes")
            argument = entry.decode_trigger(datum, BlobTriggers._metadata(container, properties))
            await self.invoker.invoke(entry, {entry.trigger["name"]: argument, **self.extra_inputs(entry)},
                                      binding_data=path_values(entry, container.container_name, properties.name))
        except Exception:
            if message.dequeue_count >= MAX_ATTEMPTS:
                await self._send_poison(entry, message.content)
                await self.queue.delete_message(message)
                log.warning("blob webhook %s: blob moved to %s after %d failures", entry.name, POISON_QUEUE,
                            MAX_ATTEMPTS)
            else:
                await self.queue.update_message(message, visibility_timeout=0)
            return
        await self.queue.delete_message(message)

    async def _send_poison(self, entry: FunctionEntry, content: str) -> None:
        connection = self._connections[entry.name]
        if connection not in self._poison:
            self._poison[connection] = QueueClient.from_connection_string(
                connection, POISON_QUEUE, message_encode_policy=TextBase64EncodePolicy())
            try:
                await self._poison[connection].create_queue()
            except ResourceExistsError:
                pass
        await self._poison[connection].send_message(content)


def _validation_code(body) -> str:
    """The validation code of a SubscriptionValidation request (Event Grid schema or CloudEvent)."""
    if isinstance(body, list):
        return str(body[0]["data"]["validationCode"])
    data = body["data"]
    if isinstance(data, str):   # a CloudEvent's data arrives double-encoded
        data = json.loads(data)
    return str(data["validationCode"])
