"""Hot storage requests signed with the account key and sent without the SDK's pipeline
(local_emulator/host/durable/shared_key.py): Azurite accepts their signatures for keys that
need percent-encoding and for receives, refuses a wrong key with nothing stored, and a request
answered 503 is sent again (as the pipeline's retry policy would) until it succeeds; a client
holding a SAS instead of the key still writes, through its own pipeline."""
import asyncio
import secrets
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import HttpResponseError
from azure.data.tables import AccountSasPermissions, ResourceTypes, generate_account_sas
from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

from local_emulator.azurite import ACCOUNT_KEY
from local_emulator.host.durable import message_ops, row_writes, shared_key

HOSTILE_KEY = "it's 100% ü + more"  # a quote, a percent, spaces, non-ASCII and a plus in the URL
TEXT = '{"Key": "a<b>&c", "Input": "ü 𝄞"}'


def _table_scenario(connection: str, body) -> None:
    async def run():
        table = TableClient.from_connection_string(connection, "sharedkey" + secrets.token_hex(4))
        await table.create_table()
        try:
            await body(table, connection)
        finally:
            await table.delete_table()
            await table.close()
    asyncio.run(run())


def test_a_replace_of_a_row_whose_key_needs_encoding_is_signed_as_azurite_expects(azurite):
    async def body(table, _):
        assert shared_key.sender_for(table) is not None  # the direct path, not the pipeline
        first = await row_writes.replace(table, {"PartitionKey": HOSTILE_KEY, "RowKey": "state", "Name": "one"})
        second = await row_writes.replace(table, {"PartitionKey": HOSTILE_KEY, "RowKey": "state", "Name": "two"},
                                          first)
        stored = await table.get_entity(HOSTILE_KEY, "state")
        assert stored["Name"] == "two" and stored.metadata["etag"] == second != first
    _table_scenario(azurite, body)


def test_a_wrong_account_key_is_refused_and_nothing_is_stored(azurite):
    async def body(table, connection):
        forged_key = ACCOUNT_KEY[:-8] + "AAAAAAA="
        forger = TableClient.from_connection_string(connection.replace(ACCOUNT_KEY, forged_key), table.table_name)
        try:
            with pytest.raises(HttpResponseError) as refused:
                await row_writes.insert(forger, {"PartitionKey": "p", "RowKey": "state", "Name": "forged"})
            assert "403" in str(refused.value)
        finally:
            await forger.close()
        assert [row async for row in table.list_entities()] == []
    _table_scenario(azurite, body)


def test_a_receive_returns_what_the_clients_own_receive_would(azurite):
    async def run():
        queue = QueueClient.from_connection_string(azurite, "sharedkey" + secrets.token_hex(4))
        await queue.create_queue()
        try:
            sent = [await message_ops.put(queue, f"{TEXT}{n}") for n in range(3)]
            first = await message_ops.receive(queue, 32, visibility_timeout=1)
            assert sorted((m.id, m.content, m.dequeue_count) for m in first) == sorted(
                (m.id, m.content, 1) for m in sent)
            assert await message_ops.receive(queue, 32, visibility_timeout=30) == []  # leased
            await asyncio.sleep(1.2)
            again = await message_ops.receive(queue, 2, visibility_timeout=30)
            assert len(again) == 2 and {m.dequeue_count for m in again} == {2}
            for message in again:  # their new pop receipts work with the client's own delete
                await queue.delete_message(message.id, message.pop_receipt)
            assert (await queue.get_queue_properties()).approximate_message_count == 1
        finally:
            await queue.delete_queue()
            await queue.close()
    asyncio.run(run())


def test_a_request_answered_503_is_sent_again_signed_until_it_succeeds(monkeypatch):
    monkeypatch.setattr(shared_key, "BACKOFF_SECONDS", 0.01)
    seen = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if len(seen) < 3:
            return web.Response(status=503)
        return web.Response(status=204, headers={"ETag": 'W/"datetime\'1\'"'})

    async def run():
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        connection = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
                      f"TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1")
        table = TableClient.from_connection_string(connection, "flaky")
        try:
            return await row_writes.replace(table, {"PartitionKey": "p", "RowKey": "state", "Name": "x"})
        finally:
            await table.close()
            await runner.cleanup()

    assert asyncio.run(run()) == 'W/"datetime\'1\'"'
    assert len(seen) == 3 and all(value.startswith("SharedKey devstoreaccount1:") for value in seen)


def test_a_client_without_the_account_key_writes_through_its_pipeline(azurite):
    async def body(table, connection):
        sas = generate_account_sas(AzureNamedKeyCredential("devstoreaccount1", ACCOUNT_KEY),
                                   resource_types=ResourceTypes(object=True),
                                   permission=AccountSasPermissions(read=True, write=True, add=True, update=True),
                                   expiry=datetime.now(UTC) + timedelta(minutes=5))
        by_sas = TableClient(table.url, table.table_name, credential=AzureSasCredential(sas))
        try:
            assert shared_key.sender_for(by_sas) is None
            etag = await row_writes.insert(by_sas, {"PartitionKey": "p", "RowKey": "state", "Name": "via sas"})
        finally:
            await by_sas.close()
        stored = await table.get_entity("p", "state")
        assert stored["Name"] == "via sas" and stored.metadata["etag"] == etag
    _table_scenario(azurite, body)
