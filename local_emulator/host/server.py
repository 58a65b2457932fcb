"""The host process: one asyncio loop serving HTTP and Event Grid triggers, the blobs
extension's webhook (EventGrid-source blob triggers) and its queue listener, the Durable
management API, the Durable dispatchers, the blob-trigger poller and the queue-trigger
listeners for one app folder."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from aiohttp import web

from local_emulator.host.app_loader import FunctionEntry, load_functions, task_hub_name
from local_emulator.host.blob_trigger import BlobTriggers
from local_emulator.host.blob_webhook import BlobWebhookTriggers
from local_emulator.host.durable.api import WEBHOOK_PREFIX, DurableApi
from local_emulator.host.durable.engine import DurableEngine
from local_emulator.host.durable.entity_api import EntityApi
from local_emulator.host.durable.store import TaskHubStore
from local_emulator.host.eventgrid_trigger import EventGridTriggers
from local_emulator.host.http_trigger import HttpTriggers
from local_emulator.host.invoker import Invoker
from local_emulator.host.keys import HostKeys, key_matches, unauthorized
from local_emulator.host.queue_trigger import QueueTriggers

log = logging.getLogger("local_emulator.host")
SUPPORTED_BINDINGS = {"httpTrigger", "http", "durableClient", "blobTrigger", "eventGridTrigger",
                      "orchestrationTrigger", "activityTrigger", "entityTrigger", "queueTrigger", "blob"}


class FunctionHost:
    """Runs one Functions app. Settings: AzureWebJobsStorage (task hub, blob receipts),
    CCR_FUNCTION_KEY / CCR_EVENTGRID_SYSTEM_KEY / CCR_DURABLE_SYSTEM_KEY / CCR_BLOBS_EXTENSION_KEY /
    CCR_MASTER_KEY,
    CCR_TASK_HUB (overrides host.json's hubName), CCR_HOST_LEASE_SECONDS (how long a message
    taken by a host that died stays invisible), CCR_BLOB_POLL_SECONDS."""

    def __init__(self, app_dir: Path, storage_connection: str, port: int = 0, keys: HostKeys | None = None):
        self.app_dir = Path(app_dir)
        self.storage_connection = storage_connection
        self.port = port
        self.keys = keys or HostKeys.from_env()
        self.url = ""
        self._runners: list[web.AppRunner] = []

    @staticmethod
    def _check_bindings(index) -> None:
        """A function with a binding type the host lacks fails indexing alone, naming the
        function and the type; the rest of the app runs."""
        for entry in list(index.entries.values()):
            unsupported = sorted({b["type"] for b in entry.bindings} - SUPPORTED_BINDINGS)
            if unsupported:
                log.error("Error indexing method 'Functions.%s'. Binding type(s) %s are not supported by the "
                          "local host.", entry.name, ", ".join(repr(t) for t in unsupported))
                del index.entries[entry.name]

    def _extra_inputs(self, entry: FunctionEntry) -> dict:
        """Non-trigger input bindings: the durable client's JSON payload."""
        client = entry.binding_of_type("durableClient")
        return {client["name"]: self.durable_api.client_binding()} if client else {}

    async def start(self) -> "FunctionHost":
        index = load_functions(self.app_dir)
        self._check_bindings(index)
        hub = task_hub_name(self.app_dir, os.environ.get("CCR_TASK_HUB"))
        self.invoker = Invoker()
        lease = int(os.environ.get("CCR_HOST_LEASE_SECONDS", "30"))
        self.engine = DurableEngine(TaskHubStore(self.storage_connection, hub), index, self.invoker,
                                    lease_seconds=lease, extra_inputs=self._extra_inputs)
        self.durable_api = DurableApi(self.engine, self.keys.durable_system)
        self.blobs = BlobTriggers(index, self.invoker, self.storage_connection, hub, self._extra_inputs,
                                  poll_seconds=float(os.environ.get("CCR_BLOB_POLL_SECONDS", "1.0")))
        self.queues = QueueTriggers(index, self.invoker, self._extra_inputs)
        self.blob_webhook = BlobWebhookTriggers(index, self.invoker, self.keys.blobs_extension,
                                                self.storage_connection, hub, self._extra_inputs,
                                                lease_seconds=lease,
                                                poll_seconds=float(os.environ.get("CCR_BLOB_POLL_SECONDS", "1.0")))

        public = web.Application(client_max_size=100 * 1024 * 1024)
        HttpTriggers(index, self.invoker, self.keys, self._extra_inputs).add_to(public)
        EventGridTriggers(index, self.invoker, self.keys.eventgrid_system, self._extra_inputs).add_to(public)
        self.blob_webhook.add_to(public)
        self.durable_api.add_public_routes(public)
        entity_api = EntityApi(self.engine.entities, self.keys.durable_system)
        entity_api.add_public_routes(public, WEBHOOK_PREFIX)
        public.router.add_get("/admin/host/status", self._host_status)
        rpc = web.Application(client_max_size=100 * 1024 * 1024)
        self.durable_api.add_rpc_routes(rpc)
        entity_api.add_rpc_routes(rpc)

        self.url = await self._serve(public, self.port)
        self.durable_api.public_url = self.url
        self.durable_api.rpc_url = await self._serve(rpc, 0)
        await self.engine.start()
        await self.blobs.start()
        await self.blob_webhook.start()
        await self.queues.start()
        log.info("host ready: %d functions, task hub %s, %s", len(index), hub, self.url)
        return self

    async def _serve(self, app: web.Application, port: int) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self._runners.append(runner)
        bound = runner.addresses[0][1]
        return f"http://127.0.0.1:{bound}"

    async def _host_status(self, request: web.Request) -> web.Response:
        """Admin route: master key only, as on Azure."""
        if not key_matches(request, self.keys.master):
            return unauthorized()
        return web.json_response({"state": "Running"})

    async def stop(self) -> None:
        await self.blobs.stop()
        await self.blob_webhook.stop()
        await self.queues.stop()
        await self.engine.stop()
        for runner in self._runners:
            await runner.cleanup()
        await self.invoker.close()
        await _close_durable_client_session()


async def _close_durable_client_session() -> None:
    """The SDK's client keeps one module-level aiohttp session on this loop; close it with us."""
    from azure.durable_functions.models.utils import http_utils
    await http_utils._close_session()
