"""The task hub's hot queue operations (local_emulator/host/durable/message_ops.py) against
Azurite: a put delivers exactly the text given, visible at once or only after its lease, and
what it returns (id, pop receipt) works with the queue client's own operations; a delete with
a stale pop receipt is refused and the message stays."""
import asyncio
import secrets

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.queue.aio import QueueClient

from local_emulator.host.durable import message_ops

TEXT = '{"Key": "a<b>&c \'d\' \\"e\\"", "Input": "\\u00fc ü 𝄞"}'  # XML's specials and non-ASCII


def _scenario(connection: str, body) -> None:
    async def run():
        queue = QueueClient.from_connection_string(connection, "msgops" + secrets.token_hex(4))
        await queue.create_queue()
        try:
            await body(queue)
        finally:
            await queue.delete_queue()
            await queue.close()
    asyncio.run(run())


async def _receive(queue: QueueClient, lease: int = 30) -> list:
    return [message async for message in queue.receive_messages(max_messages=32, visibility_timeout=lease)]


def test_a_put_delivers_the_text_as_given_and_its_receipt_works_with_the_client(azurite):
    async def body(queue):
        sent = await message_ops.put(queue, TEXT)
        assert sent.content == TEXT and sent.id and sent.pop_receipt and sent.expires_on is not None
        received = await _receive(queue)
        assert [(m.id, m.content, m.dequeue_count) for m in received] == [(sent.id, TEXT, 1)]
        await message_ops.delete(queue, received[0].id, received[0].pop_receipt)
        assert await _receive(queue, lease=1) == []
    _scenario(azurite, body)


def test_a_leased_put_stays_hidden_and_its_pop_receipt_deletes_it(azurite):
    async def body(queue):
        sent = await message_ops.put(queue, TEXT, visibility_timeout=30)
        assert await _receive(queue) == []
        updated = await queue.update_message(sent.id, sent.pop_receipt, visibility_timeout=30)  # the client's own
        await message_ops.delete(queue, sent.id, updated.pop_receipt)
        assert (await queue.get_queue_properties()).approximate_message_count == 0  # hidden ones count too
    _scenario(azurite, body)


def test_a_delete_with_a_stale_pop_receipt_is_refused_and_the_message_stays(azurite):
    async def body(queue):
        sent = await message_ops.put(queue, TEXT, visibility_timeout=30)
        await queue.update_message(sent.id, sent.pop_receipt, visibility_timeout=0)  # a new receipt
        with pytest.raises(HttpResponseError):
            await message_ops.delete(queue, sent.id, sent.pop_receipt)
        assert [m.content for m in await _receive(queue)] == [TEXT]
    _scenario(azurite, body)
