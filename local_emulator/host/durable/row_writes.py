"""The task hub's hot table writes (an instance's state row, created at its start and replaced
after every episode; a history row): the same requests the table client's create_entity /
update_entity / upsert_entity send, signed and sent by shared_key.py on that client's session,
the entity encoded by the SDK's own entity encoder, but without the generated operation
layer's generic serializer and response deserializer nor the pipeline around them (measured
against Azurite: 2.0-2.4 ms CPU a write through the client's methods, 1.4 ms through its
pipeline without that layer); these writes are the most frequent requests the engine makes.
Errors are the client's: ResourceExistsError, ResourceModifiedError, ResourceNotFoundError,
else HttpResponseError."""
from __future__ import annotations

import json
from urllib.parse import quote

from azure.core.exceptions import (
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables._serialize import (
    _add_entity_properties,  # the SDK's encoder: the same body it sends
)
from azure.data.tables.aio import TableClient

from local_emulator.host.durable import shared_key

_HEADERS = {"DataServiceVersion": "3.0", "Content-Type": "application/json;odata=nometadata",
            "Accept": "application/json;odata=minimalmetadata"}
_ERRORS = {409: ResourceExistsError, 412: ResourceModifiedError, 404: ResourceNotFoundError}


async def insert(table: TableClient, entity: dict) -> str:
    """Create the entity (ResourceExistsError if its row exists); its ETag."""
    return await _send(table, "POST", f"/{quote(table.table_name, safe='')}", entity, {"Prefer": "return-no-content"})


async def replace(table: TableClient, entity: dict, etag: str | None = None) -> str:
    """Replace the entity if its ETag is still `etag` (ResourceModifiedError if not,
    ResourceNotFoundError if the row is gone), or, without an ETag, insert or replace it; its new ETag."""
    keys = ",".join(f"{name}='{quote(entity[name].replace(chr(39), chr(39) * 2), safe='')}'"
                    for name in ("PartitionKey", "RowKey"))
    return await _send(table, "PUT", f"/{quote(table.table_name, safe='')}({keys})", entity,
                       {"If-Match": etag} if etag else {})


async def _send(table: TableClient, method: str, path: str, entity: dict, headers: dict) -> str:
    body = json.dumps(_add_entity_properties(entity)).encode()
    response = await shared_key.send(table, method, path, {}, {**_HEADERS, **headers}, body)
    if response.status_code in (201, 204):
        return response.headers["ETag"]
    raise shared_key.failure(response, f"{method} {table.table_name} entity", _ERRORS)
