"""The ceiling Azurite sets for the Durable host: how many of each storage operation the
host's own clients (the async Azure SDK, one client per table or queue, as TaskHubStore
keeps them) get through per second with 32 requests in flight, and how much CPU each side
spends per operation (this Python process vs. Azurite's node process).

Operations: queue send; queue receive of up to 32 then delete each; table single upsert;
table get; table entity-group transaction of two rows (an episode's commit).
Prints one line per operation; the last line is one JSON object."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from azure.data.tables.aio import TableClient
from azure.storage.queue.aio import QueueClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from local_emulator.azurite import Azurite

COUNT = int(os.environ.get("BENCH_OPERATIONS", "2000"))
DATA_PARENT = os.environ.get("BENCH_AZURITE_PARENT")  # e.g. /dev/shm: no disk flush cost
IN_FLIGHT = 32


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(name: str, operation, count: int, azurite_pid: int) -> dict:
    """Run operation(i) for i < count with IN_FLIGHT at a time; rates and CPU per operation."""
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(i):
        async with slots:
            await operation(i)

    azurite_before, python_before = cpu_seconds(azurite_pid), time.process_time()
    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - began
    figures = {"per_s": round(count / elapsed, 1),
               "python_cpu_ms": round(1000 * (time.process_time() - python_before) / count, 2),
               "azurite_cpu_ms": round(1000 * (cpu_seconds(azurite_pid) - azurite_before) / count, 2)}
    print(f"{name:<24} {figures['per_s']:>8} /s   CPU per operation: python {figures['python_cpu_ms']} ms, "
          f"azurite {figures['azurite_cpu_ms']} ms", flush=True)
    return figures


async def rates(connection: str, azurite_pid: int) -> dict:
    queue = QueueClient.from_connection_string(connection, "rates")
    table = TableClient.from_connection_string(connection, "rates")
    await queue.create_queue()
    await table.create_table()
    body = json.dumps({"InstanceId": "x" * 32, "Event": {"EventType": 5, "Result": "\"Hello city-1!\""}})
    results = {}
    try:
        results["queue_send"] = await measure(
            "queue send", lambda i: queue.send_message(body, time_to_live=-1), COUNT, azurite_pid)

        async def receive_and_delete(_):
            pager = queue.receive_messages(messages_per_page=32, max_messages=32, visibility_timeout=30)
            async for message in pager:
                await queue.delete_message(message)

        before = time.perf_counter()
        python_before, azurite_before = time.process_time(), cpu_seconds(azurite_pid)
        while (await queue.get_queue_properties()).approximate_message_count:
            await asyncio.gather(*(receive_and_delete(i) for i in range(4)))
        elapsed = time.perf_counter() - before
        results["queue_receive32_delete"] = {
            "per_s": round(COUNT / elapsed, 1),
            "python_cpu_ms": round(1000 * (time.process_time() - python_before) / COUNT, 2),
            "azurite_cpu_ms": round(1000 * (cpu_seconds(azurite_pid) - azurite_before) / COUNT, 2)}
        print(f"{'queue receive32+delete':<24} {results['queue_receive32_delete']['per_s']:>8} /s (messages)",
              flush=True)
        entity = {"Name": "hello_sequence", "RuntimeStatus": "Running", "Input": body}
        results["table_upsert"] = await measure(
            "table upsert", lambda i: table.upsert_entity({"PartitionKey": f"p{i}", "RowKey": "state", **entity}),
            COUNT, azurite_pid)
        results["table_get"] = await measure(
            "table get", lambda i: table.get_entity(f"p{i}", "state"), COUNT, azurite_pid)
        results["table_transaction2"] = await measure(
            "table transaction (2)", lambda i: table.submit_transaction([
                ("upsert", {"PartitionKey": f"p{i}", "RowKey": "state", **entity}),
                ("upsert", {"PartitionKey": f"p{i}", "RowKey": "h1", "Events": body})]), COUNT, azurite_pid)
    finally:
        await queue.close()
        await table.close()
    return results


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench-azurite-", dir=DATA_PARENT) as folder:
        azurite = Azurite(Path(folder), stop_grace_seconds=0.5).start()
        try:
            results = asyncio.run(rates(azurite.connection_string, azurite.process.pid))
        finally:
            azurite.stop()
    print(json.dumps({"benchmark": "azurite_rates", "in_flight": IN_FLIGHT, "operations": COUNT, **results}))


if __name__ == "__main__":
    main()
