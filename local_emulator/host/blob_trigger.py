"""Polling blob triggers (the default source, LogsAndContainerScan; `source=EventGrid` ones are
served by blob_webhook.py) on Azurite containers, with the real host's semantics: each new blob (or new
version: new ETag) fires once; receipts live in a table so a restarted host does not fire
again; after 5 failed attempts a message goes to the `webjobs-blobtrigger-poison` queue (same
JSON fields as Azure, base64 like the host's queue messages) and the blob is not retried.
A function whose trigger parameter has an SDK type (deferred binding) gets a reference to the
blob, the worker protocol's ModelBindingData, and never its content: a dataset of many GB is
not read just to say that it arrived."""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.data.tables.aio import TableClient
from azure.functions import meta
from azure.storage.blob.aio import BlobServiceClient
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from local_emulator.host.app_loader import FunctionEntry, FunctionIndex, supports_deferred_binding
from local_emulator.host.invoker import Invoker

log = logging.getLogger("local_emulator.host.blobs")
POISON_QUEUE = "webjobs-blobtrigger-poison"
MAX_ATTEMPTS = 5


def compile_blob_path(path: str) -> tuple[str, str, re.Pattern]:
    """'container/prefix/{name}.csv' -> (container, literal prefix, regex with named groups)."""
    container, _, pattern = path.partition("/")
    prefix = pattern.split("{", 1)[0]
    regex = ""
    for literal, name in re.findall(r"([^{]*)(?:\{([A-Za-z_][A-Za-z0-9_]*)\})?", pattern):
        regex += re.escape(literal) + (f"(?P<{name}>.+?)" if name else "")
    return container, prefix, re.compile("^" + regex + "$")


def path_values(entry: FunctionEntry, container_name: str, blob_name: str) -> dict[str, str]:
    """The trigger's binding data for other bindings' paths: the names its path pattern
    captures (`{name}`, ...) and `BlobTrigger` (container/blob)."""
    _, _, pattern = compile_blob_path(entry.trigger["path"])
    found = pattern.match(blob_name)
    return {**(found.groupdict() if found else {}), "BlobTrigger": f"{container_name}/{blob_name}"}


@dataclass(frozen=True)
class ModelBindingData:
    """The worker protocol's ModelBindingData message, as the storage extension fills it."""
    content: bytes
    version: str = "1.0"
    source: str = "AzureStorageBlobs"
    content_type: str = "application/json"


def blob_reference(connection_setting: str, container_name: str, blob_name: str) -> meta.Datum:
    """What the host sends for a deferred blob binding: the setting's *name* (the worker reads
    the connection from its own environment), the container and the blob name; no content."""
    content = json.dumps({"Connection": connection_setting, "ContainerName": container_name,
                          "BlobName": blob_name}).encode()
    return meta.Datum(ModelBindingData(content), "model_binding_data")


def _without_query(url: str) -> str:
    """A SAS connection string puts its token in every client URL; the function must not get it."""
    return url.split("?", 1)[0]


class BlobTriggers:
    def __init__(self, index: FunctionIndex, invoker: Invoker, default_connection: str, hub: str,
                 extra_inputs, poll_seconds: float = 1.0):
        # polling serves the default source (LogsAndContainerScan); source=EventGrid is blob_webhook.py's
        self.functions = [e for e in index.by_trigger("blobTrigger")
                          if str(e.trigger.get("source") or "").lower() != "eventgrid"]
        self.invoker = invoker
        self.default_connection = default_connection
        self.extra_inputs = extra_inputs
        self.poll_seconds = poll_seconds
        self.receipts = TableClient.from_connection_string(default_connection, f"{hub}BlobReceipts")
        self.poison = QueueClient.from_connection_string(default_connection, POISON_QUEUE,
                                                         message_encode_policy=TextBase64EncodePolicy())
        self.done: set[str] = set()  # receipt keys known to be final (fired or poisoned)
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._clients: dict[str, BlobServiceClient] = {}

    async def start(self) -> None:
        if not self.functions:
            return
        for create in (self.receipts.create_table, self.poison.create_queue):
            try:
                await create()
            except ResourceExistsError:
                pass
        self._task = asyncio.create_task(self._poll_forever())

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Let an invocation in flight finish and write its receipt (a cancelled receipt write
        would fire that blob version again after the restart), then stop polling."""
        self._stopping.set()
        if self._task:
            try:
                await asyncio.wait_for(self._task, grace_seconds)
            except asyncio.TimeoutError:
                log.warning("blob triggers: an invocation outlived the %.0f s shutdown grace", grace_seconds)
        for client in list(self._clients.values()):
            await client.close()
        await self.receipts.close()
        await self.poison.close()

    @staticmethod
    def _connection_setting(entry: FunctionEntry) -> str:
        return entry.trigger.get("connection") or "AzureWebJobsStorage"

    def _service(self, entry: FunctionEntry) -> BlobServiceClient:
        connection = os.environ.get(self._connection_setting(entry)) or self.default_connection
        if connection not in self._clients:
            self._clients[connection] = BlobServiceClient.from_connection_string(connection)
        return self._clients[connection]

    async def _poll_forever(self) -> None:
        while not self._stopping.is_set():
            for entry in self.functions:
                try:
                    await self.poll(entry)
                except asyncio.CancelledError:
                    raise
                except ResourceNotFoundError:
                    pass  # container not created yet
                except Exception:
                    log.exception("blob trigger %s: polling failed", entry.name)
            try:
                await asyncio.wait_for(self._stopping.wait(), self.poll_seconds)
            except asyncio.TimeoutError:
                pass

    async def poll(self, entry: FunctionEntry) -> None:
        container_name, prefix, pattern = compile_blob_path(entry.trigger["path"])
        container = self._service(entry).get_container_client(container_name)
        async for blob in container.list_blobs(name_starts_with=prefix or None):
            if not pattern.match(blob.name):
                continue
            key = hashlib.sha256(f"{container_name}/{blob.name}|{blob.etag}".encode()).hexdigest()
            if self._stopping.is_set():
                return
            if key in self.done:
                continue
            await self._fire(entry, container, blob, key)

    async def _fire(self, entry: FunctionEntry, container, blob, key: str) -> None:
        try:
            receipt = await self.receipts.get_entity(entry.name, key)
        except ResourceNotFoundError:
            receipt = {"PartitionKey": entry.name, "RowKey": key, "Blob": f"{container.container_name}/{blob.name}",
                       "ETag": blob.etag, "Attempts": 0, "Status": "pending"}
        if receipt["Status"] in ("fired", "poisoned"):
            self.done.add(key)
            return
        try:
            datum = await self._trigger_datum(entry, container, blob)
        except ResourceNotFoundError:
            return  # deleted meanwhile
        try:  # a binding the worker cannot build (e.g. an unknown connection setting) fails the attempt too
            argument = entry.decode_trigger(datum, self._metadata(container, blob))
            await self.invoker.invoke(entry, {entry.trigger["name"]: argument, **self.extra_inputs(entry)},
                                      binding_data=path_values(entry, container.container_name, blob.name))
            receipt["Status"] = "fired"
        except Exception:
            receipt["Attempts"] += 1
            if receipt["Attempts"] >= MAX_ATTEMPTS:
                await self.poison.send_message(json.dumps({
                    "Type": "BlobTrigger", "FunctionId": f"Host.Functions.{entry.name}", "BlobType": "BlockBlob",
                    "ContainerName": container.container_name, "BlobName": blob.name, "ETag": blob.etag}))
                receipt["Status"] = "poisoned"
                log.warning("blob trigger %s: blob moved to %s after %d failures", entry.name, POISON_QUEUE,
                            MAX_ATTEMPTS)
        await self.receipts.upsert_entity(receipt)
        if receipt["Status"] != "pending":
            self.done.add(key)

    async def _trigger_datum(self, entry: FunctionEntry, container, blob) -> meta.Datum:
        """A reference when the binding supports deferred binding (after checking, as the host
        does, that the blob is still there), else the whole content, as for `InputStream`."""
        if supports_deferred_binding(entry.trigger):
            await container.get_blob_client(blob.name).get_blob_properties()
            return blob_reference(self._connection_setting(entry), container.container_name, blob.name)
        return meta.Datum(await (await container.download_blob(blob.name)).readall(), "bytes")

    @staticmethod
    def _metadata(container, blob) -> dict:
        properties = {"ContentLength": blob.size, "ETag": blob.etag,
                      "ContentType": blob.content_settings.content_type if blob.content_settings else None}
        return {"BlobTrigger": meta.Datum(f"{container.container_name}/{blob.name}", "string"),
                "Uri": meta.Datum(f"{_without_query(container.url)}/{blob.name}", "string"),
                "Properties": meta.Datum(json.dumps(properties), "json"),
                "Metadata": meta.Datum(json.dumps(blob.metadata or {}), "json")}
