"""The instance listing's table query (every status query, purge by filter, the bench's polls)
and the read of one instance's rows (a status with its history):
the same requests, page after page, the table client's query_entities sends, signed and
sent by shared_key.py on that client's session, each row read by the SDK's own entity
converter, but without the
generated layer's model deserializer around it. That layer was half of a listing's CPU on the
host's single event loop (measured against Azurite: 20 ms -> 10 ms for 260 state rows).
Errors are the client's: ResourceNotFoundError for a missing table, else HttpResponseError."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import quote

from azure.data.tables import TableEntity
from azure.data.tables._deserialize import (
    _convert_to_entity,  # the SDK's converter: the same entities
)
from azure.data.tables._serialize import (
    _parameter_filter_substitution,  # the SDK's @name substitution
)
from azure.data.tables.aio import TableClient

from local_emulator.host.durable import shared_key

_FORMAT = "application/json;odata=minimalmetadata"
_NEXT = (("NextPartitionKey", "x-ms-continuation-NextPartitionKey"), ("NextRowKey", "x-ms-continuation-NextRowKey"))


async def query(table: TableClient, query_filter: str, parameters: dict, select: list[str] | None,
                page_size: int | None = None) -> AsyncIterator[TableEntity]:
    """The entities matching the filter (its `@name`s replaced as the client does), with the
    selected properties only (one a row lacks: absent or None, as the service answers) or,
    when `select` is None, all of them and their ETags, following continuations."""
    params = {"$format": _FORMAT, "$filter": _parameter_filter_substitution(parameters, query_filter),
              **({"$select": ",".join(select)} if select is not None else {}),
              **({"$top": str(page_size)} if page_size else {})}
    headers = {"Accept": _FORMAT, "DataServiceVersion": "3.0"}
    while True:
        response = await shared_key.send(table, "GET", f"/{quote(table.table_name, safe='')}()", params, headers)
        if response.status_code != 200:
            raise shared_key.failure(response, f"query {table.table_name}")
        for entry in json.loads(response.content)["value"]:
            yield _convert_to_entity(entry)
        following = {name: response.headers.get(header) for name, header in _NEXT}
        if not following["NextPartitionKey"]:
            return
        params.update({name: value for name, value in following.items() if value})
        if not following["NextRowKey"]:
            params.pop("NextRowKey", None)
