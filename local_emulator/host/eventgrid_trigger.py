"""Event Grid triggers at /runtime/webhooks/eventgrid?functionName=<name>&code=<system key>:
Event Grid schema (a JSON array) and CloudEvents (single or batch), the subscription
validation handshakes of both, one invocation per event."""
from __future__ import annotations

import json

from aiohttp import web
from azure.functions import meta

from local_emulator.host.app_loader import FunctionIndex
from local_emulator.host.invoker import Invoker
from local_emulator.host.keys import key_matches, unauthorized

VALIDATION_EVENT = "Microsoft.EventGrid.SubscriptionValidationEvent"
PATH = "/runtime/webhooks/eventgrid"


class EventGridTriggers:
    def __init__(self, index: FunctionIndex, invoker: Invoker, system_key: str, extra_inputs):
        self.functions = {e.name: e for e in index.by_trigger("eventGridTrigger")}
        self.invoker = invoker
        self.system_key = system_key
        self.extra_inputs = extra_inputs

    def add_to(self, app: web.Application) -> None:
        app.router.add_post(PATH, self.handle)
        app.router.add_route("OPTIONS", PATH, self.cloudevents_handshake)

    def _authorized(self, request: web.Request):
        if not key_matches(request, self.system_key):
            return None, unauthorized()
        entry = self.functions.get(request.query.get("functionName", ""))
        if entry is None:
            return None, web.json_response({"error": "no Event Grid function with that name"}, status=404)
        return entry, None

    async def cloudevents_handshake(self, request: web.Request) -> web.Response:
        """CloudEvents webhook validation (abuse protection): echo the allowed origin."""
        _, refused = self._authorized(request)
        if refused is not None:
            return refused
        origin = request.headers.get("WebHook-Request-Origin", "*")
        return web.Response(status=200, headers={"WebHook-Allowed-Origin": origin})

    async def handle(self, request: web.Request) -> web.Response:
        entry, refused = self._authorized(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.read())
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        events = body if isinstance(body, list) else [body]
        if not events or not all(isinstance(e, dict) for e in events):
            return web.json_response({"error": "expected an event or an array of events"}, status=400)
        for event in events:
            if event.get("eventType") == VALIDATION_EVENT or event.get("type") == VALIDATION_EVENT:
                code = (event.get("data") or {}).get("validationCode")
                return web.json_response({"validationResponse": code})
        for event in events:
            argument = entry.decode_trigger(meta.Datum(json.dumps(event), "json"), trigger_metadata={})
            try:
                await self.invoker.invoke(entry, {entry.trigger["name"]: argument, **self.extra_inputs(entry)})
            except Exception:
                return web.json_response({"error": "function failed"}, status=500)
        return web.Response(status=200)
