"""Payloads too large for a queue message or a table property, kept as DurableTask.AzureStorage
keeps them: gzip-compressed in blobs of the `<hub>-largemessages` container.

- A queue message over 45 KB is uploaded whole and the message sent is only
  `{"CompressedBlobName": "<instance>/message-<id>.json.gz"}`; the receiver reads it back.
- A table string property over 60 KB (UTF-16, as DTF measures; the service refuses 64 KB) is
  uploaded and the row keeps `<Property>BlobName` and an empty `<Property>`; reads inflate it.

Every blob is named under its instance id, uploaded before the message or row that names it is
written (a reader never finds a dangling name), and deleted with the instance's purge."""
from __future__ import annotations

import gzip
import hashlib
import json
import uuid

from azure.core.exceptions import ResourceExistsError
from azure.storage.blob.aio import BlobServiceClient

from local_emulator.host.durable.transport import direct_transport

MAX_MESSAGE_BYTES = 45 * 1024
MAX_PROPERTY_BYTES = 60 * 1024
BLOB_SUFFIX = "BlobName"


class LargePayloads:
    def __init__(self, connection_string: str, hub: str):
        self.service = BlobServiceClient.from_connection_string(connection_string, transport=direct_transport())
        self.container = self.service.get_container_client(f"{hub.lower()}-largemessages")
        self._uploaded: dict[tuple[str, str, str], tuple[str, str]] = {}  # property -> (sha256, blob)

    async def create(self) -> None:
        try:
            await self.container.create_container()
        except ResourceExistsError:
            pass

    async def close(self) -> None:
        await self.service.close()

    async def _upload(self, name: str, text: str) -> None:
        await self.container.upload_blob(name, gzip.compress(text.encode("utf-8")), overwrite=True)

    async def _download(self, name: str) -> str:
        stream = await self.container.download_blob(name)
        return gzip.decompress(await stream.readall()).decode("utf-8")

    # queue messages ----------------------------------------------------------------------
    async def outgoing(self, message: dict) -> str:
        """The text to enqueue: the message itself, or a reference to its compressed blob."""
        text = json.dumps(message)
        if len(text.encode("utf-8")) <= MAX_MESSAGE_BYTES:
            return text
        name = f"{_owner(message)}/message-{uuid.uuid4().hex}.json.gz"
        await self._upload(name, text)
        return json.dumps({"CompressedBlobName": name})

    async def incoming(self, content: str) -> dict:
        """A received message's body (read back from its blob when it was offloaded)."""
        body = json.loads(content)
        if isinstance(body, dict) and set(body) == {"CompressedBlobName"}:
            body = json.loads(await self._download(body["CompressedBlobName"]))
        return body

    # table properties --------------------------------------------------------------------
    async def offload(self, entity: dict) -> dict:
        """The entity with each oversized string property moved to a blob."""
        for key, value in list(entity.items()):
            if key in ("PartitionKey", "RowKey") or not isinstance(value, str):
                continue
            if len(value.encode("utf-16-le")) > MAX_PROPERTY_BYTES:
                entity[key] = ""
                entity[key + BLOB_SUFFIX] = await self._property_blob(entity["PartitionKey"], entity["RowKey"],
                                                                      key, value)
        return entity

    async def _property_blob(self, partition: str, row: str, key: str, value: str) -> str:
        """The blob holding this value: the one uploaded before for the same property and
        value (a state row is rewritten every episode, its input unchanged), else a new one."""
        digest = hashlib.sha256(value.encode("utf-8")).hexdigest()
        known = self._uploaded.get((partition, row, key))
        if known and known[0] == digest:
            return known[1]
        name = f"{partition}/{row}-{key}-{uuid.uuid4().hex}.json.gz"
        await self._upload(name, value)
        self._uploaded[(partition, row, key)] = (digest, name)
        while len(self._uploaded) > 10000:
            self._uploaded.pop(next(iter(self._uploaded)))
        return name

    async def inflate(self, row) -> dict:
        """A row read from a table with offloaded properties read back (and their names dropped)."""
        entity = dict(row)
        for key in [k for k in entity if k.endswith(BLOB_SUFFIX) and isinstance(entity[k], str)]:
            name = entity.pop(key)
            entity[key[:-len(BLOB_SUFFIX)]] = await self._download(name)
        return entity

    async def purge(self, instance_id: str) -> None:
        for known in [k for k in self._uploaded if k[0] == instance_id]:
            del self._uploaded[known]
        async for blob in self.container.list_blobs(name_starts_with=instance_id + "/"):
            await self.container.delete_blob(blob.name)


def _owner(message: dict) -> str:
    """The instance a message belongs to (a work-item message: its items' instance)."""
    if "InstanceId" in message:
        return message["InstanceId"]
    items = message.get("Items") or [{}]
    return items[0].get("InstanceId", "_")
