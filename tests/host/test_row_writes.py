"""The task hub's hot table writes (local_emulator/host/durable/row_writes.py) against Azurite:
what they store reads back exactly as what the table client's own create_entity stores, and
they refuse as the client does - an existing row, a stale ETag, a row gone - changing nothing."""
import asyncio
import secrets

import pytest
from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables.aio import TableClient

from local_emulator.host.durable import row_writes

ENTITY = {"Name": "hello", "Version": "", "RuntimeStatus": "Pending", "ActionCount": 0, "NextId": 7,
          "Input": '["x", "it\'s"]', "Flag": True, "Ratio": 0.5, "Missing": None}


def _scenario(connection: str, body) -> None:
    async def run():
        table = TableClient.from_connection_string(connection, "rowwrites" + secrets.token_hex(4))
        await table.create_table()
        try:
            await body(table)
        finally:
            await table.delete_table()
            await table.close()
    asyncio.run(run())


def _stored(entity) -> dict:
    return {key: value for key, value in entity.items() if key not in ("PartitionKey", "RowKey")}


def test_an_inserted_row_reads_back_as_the_sdk_would_have_stored_it(azurite):
    async def body(table):
        key = "it's a ü key + more"  # a quote, a space, non-ASCII and a plus in the URL's key
        etag = await row_writes.insert(table, {"PartitionKey": key, "RowKey": "state", **ENTITY})
        await table.create_entity({"PartitionKey": "by-the-sdk", "RowKey": "state", **ENTITY})
        ours, theirs = await table.get_entity(key, "state"), await table.get_entity("by-the-sdk", "state")
        assert ours.metadata["etag"] == etag
        assert _stored(ours) == _stored(theirs) == {k: v for k, v in ENTITY.items() if v is not None}
        assert type(ours["NextId"]) is int and type(ours["Flag"]) is bool
    _scenario(azurite, body)


def test_inserting_an_existing_row_is_refused_and_changes_nothing(azurite):
    async def body(table):
        first = await row_writes.insert(table, {"PartitionKey": "p", "RowKey": "state", **ENTITY})
        with pytest.raises(ResourceExistsError):
            await row_writes.insert(table, {"PartitionKey": "p", "RowKey": "state", **ENTITY, "Name": "other"})
        row = await table.get_entity("p", "state")
        assert (row["Name"], row.metadata["etag"]) == ("hello", first)
    _scenario(azurite, body)


def test_a_replace_needs_the_current_etag_and_a_stale_one_changes_nothing(azurite):
    async def body(table):
        first = await row_writes.insert(table, {"PartitionKey": "p", "RowKey": "state", **ENTITY})
        second = await row_writes.replace(table, {"PartitionKey": "p", "RowKey": "state", "Name": "two"}, first)
        assert second != first
        with pytest.raises(ResourceModifiedError):
            await row_writes.replace(table, {"PartitionKey": "p", "RowKey": "state", "Name": "three"}, first)
        row = await table.get_entity("p", "state")
        assert (_stored(row), row.metadata["etag"]) == ({"Name": "two"}, second)  # replaced whole, once
        # the client's own update accepts the ETag ours returned: the same ETag
        await table.update_entity({"PartitionKey": "p", "RowKey": "state", "Name": "four"}, etag=second,
                                  match_condition=MatchConditions.IfNotModified)
    _scenario(azurite, body)


def test_a_replace_of_a_row_that_is_gone_is_refused_and_creates_nothing(azurite):
    async def body(table):
        etag = await row_writes.insert(table, {"PartitionKey": "p", "RowKey": "state", **ENTITY})
        await table.delete_entity("p", "state")
        with pytest.raises(ResourceNotFoundError):
            await row_writes.replace(table, {"PartitionKey": "p", "RowKey": "state", **ENTITY}, etag)
        assert [row async for row in table.list_entities()] == []
    _scenario(azurite, body)


def test_a_replace_without_etag_creates_or_overwrites(azurite):
    async def body(table):
        await row_writes.replace(table, {"PartitionKey": "p", "RowKey": "h1", "Events": "[1]"})
        await row_writes.replace(table, {"PartitionKey": "p", "RowKey": "h1", "Events": "[2]"})
        assert [row["Events"] async for row in table.list_entities()] == ["[2]"]
    _scenario(azurite, body)
