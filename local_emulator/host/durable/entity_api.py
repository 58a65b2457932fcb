"""The entity routes of the Durable HTTP API, as HttpApiHandler serves them: on the loopback
RPC port the SDK client calls (`signal_entity`, `read_entity_state`) and, behind the system
key, under /runtime/webhooks/durabletask:

- POST entities/{name}/{key}?op=<operation>: signal; 202 once the request is queued. A JSON
  body (application/json) is the operation's input value; any other body is a string input.
- GET entities/{name}/{key}: the entity's state as JSON, 404 if it does not exist.
- GET entities/{name}: the entities of that name that exist (`entityId`, `lastOperationTime`,
  and `state` with fetchState=true).

An unknown entity name or an unusable key is a 400 and nothing is queued."""
from __future__ import annotations

import json

from aiohttp import web

from local_emulator.host.durable.entities import EntityWorker, InvalidEntityKey, UnknownEntity
from local_emulator.host.durable.entity_store import EntityRecord
from local_emulator.host.keys import key_matches, unauthorized


def _refused(error: Exception) -> web.Response:
    return web.json_response({"Message": "One or more of the arguments submitted is incorrect",
                              "ExceptionMessage": str(error)}, status=400)


class EntityApi:
    def __init__(self, entities: EntityWorker, system_key: str):
        self.entities = entities
        self.system_key = system_key

    def add_rpc_routes(self, app: web.Application) -> None:
        """Loopback-only RPC port: the SDK client sends no key."""
        self._add(app, "/durabletask", guarded=False)

    def add_public_routes(self, app: web.Application, prefix: str) -> None:
        self._add(app, prefix, guarded=True)

    def _add(self, app: web.Application, prefix: str, guarded: bool) -> None:
        def route(handler):
            async def wrapped(request: web.Request):
                if guarded and not key_matches(request, self.system_key):
                    return unauthorized()
                try:
                    return await handler(request)
                except (UnknownEntity, InvalidEntityKey) as refused:
                    return _refused(refused)
            return wrapped
        app.router.add_post(prefix + "/entities/{name}/{key}", route(self.signal))
        app.router.add_get(prefix + "/entities/{name}/{key}", route(self.read))
        app.router.add_get(prefix + "/entities/{name}", route(self.list))

    @staticmethod
    async def _operation_input(request: web.Request) -> str | None:
        """The input as the extension stores it: a JSON body's value, else the text as a string."""
        text = await request.text()
        if not text:
            return None
        if request.content_type != "application/json":
            return json.dumps(text)
        try:
            return json.dumps(json.loads(text))
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"error": "body is not JSON"}), content_type="application/json")

    async def signal(self, request: web.Request) -> web.Response:
        name, key = request.match_info["name"], request.match_info["key"]
        self.entities.entity_id(name, key)  # refuse before reading the body
        await self.entities.signal(name, key, request.query.get("op", ""), await self._operation_input(request))
        return web.Response(status=202)

    async def read(self, request: web.Request) -> web.Response:
        record = await self.entities.read(request.match_info["name"], request.match_info["key"])
        if record is None:
            return web.Response(status=404)
        return web.Response(text=record.state or "null", content_type="application/json")

    async def list(self, request: web.Request) -> web.Response:
        fetch_state = request.query.get("fetchState", "").strip().lower() == "true"
        records = await self.entities.list(request.match_info["name"])
        return web.json_response([_listed(record, fetch_state) for record in records])


def _listed(record: EntityRecord, fetch_state: bool) -> dict:
    item = {"entityId": {"name": record.name, "key": record.key}, "lastOperationTime": record.last_operation_time}
    if fetch_state:
        item["state"] = json.loads(record.state) if record.state else None
    return item
