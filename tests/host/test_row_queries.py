"""The instance listing's query (local_emulator/host/durable/row_queries.py) against Azurite:
the same entities, page after page, as the table client's own query_entities, with the
filter's parameters substituted as the client does (a quote in a value cannot widen it)."""
import asyncio
import secrets

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.data.tables.aio import TableClient

from local_emulator.host.durable import row_queries

FILTER = "RowKey eq @rk and ( RuntimeStatus eq @s0 or RuntimeStatus eq @s1 ) and PartitionKey ge @low"
PARAMETERS = {"rk": "state", "s0": "Completed", "s1": "it's failed", "low": "b"}
SELECT = ["PartitionKey", "Name", "RuntimeStatus", "Count", "Absent"]


def _scenario(connection: str, body) -> None:
    async def run():
        table = TableClient.from_connection_string(connection, "rowqueries" + secrets.token_hex(4))
        await table.create_table()
        try:
            rows = [("a1", "state", "Completed"), ("b1", "state", "Completed"), ("b2", "state", "it's failed"),
                    ("b3", "state", "Running"), ("b4", "h-1", "Completed"), ("c'1", "state", "Completed"),
                    ("c2", "state", "' or RowKey ne '")]
            for n, (partition, row, status) in enumerate(rows):
                await table.create_entity({"PartitionKey": partition, "RowKey": row, "RuntimeStatus": status,
                                           "Name": f"orch{n}", "Count": n, "Unselected": "x"})
            await body(table)
        finally:
            await table.delete_table()
            await table.close()
    asyncio.run(run())


def test_a_query_returns_what_the_clients_own_query_returns_page_after_page(azurite):
    async def body(table):
        theirs = [dict(row) async for row in table.query_entities(FILTER, parameters=PARAMETERS, select=SELECT)]
        ours = [dict(row) async for row in row_queries.query(table, FILTER, PARAMETERS, SELECT)]
        paged = [dict(row) async for row in row_queries.query(table, FILTER, PARAMETERS, SELECT, page_size=1)]
        assert ours == paged == theirs
        assert [row["PartitionKey"] for row in ours] == ["b1", "b2", "c'1"]
        assert {key: value for key, value in ours[0].items() if value is not None} == {
            "PartitionKey": "b1", "Name": "orch1", "RuntimeStatus": "Completed", "Count": 1}  # not Unselected
    _scenario(azurite, body)


def test_a_query_without_select_returns_whole_rows_with_their_etags(azurite):
    async def body(table):
        theirs = [row async for row in table.query_entities("PartitionKey eq @pk", parameters={"pk": "c'1"})]
        ours = [row async for row in row_queries.query(table, "PartitionKey eq @pk", {"pk": "c'1"}, None)]
        assert [dict(row) for row in ours] == [dict(row) for row in theirs] and ours[0]["Unselected"] == "x"
        assert ours[0].metadata["etag"] == theirs[0].metadata["etag"] == (await table.get_entity("c'1", "state")).metadata["etag"]
    _scenario(azurite, body)


def test_a_quote_in_a_parameter_stays_inside_its_value(azurite):
    async def body(table):
        hostile = {**PARAMETERS, "s0": "' or RowKey ne '", "s1": "none"}
        found = [row["PartitionKey"] async for row in row_queries.query(table, FILTER, hostile, SELECT)]
        assert found == ["c2"]  # only the row whose status is that very text
    _scenario(azurite, body)


def test_a_query_of_a_missing_table_is_a_clear_error(azurite):
    async def body(table):
        gone = TableClient.from_connection_string(azurite, "nosuchtable" + secrets.token_hex(4))
        try:
            with pytest.raises(ResourceNotFoundError):
                [row async for row in row_queries.query(gone, "RowKey eq @rk", {"rk": "state"}, ["PartitionKey"])]
        finally:
            await gone.close()
    _scenario(azurite, body)
