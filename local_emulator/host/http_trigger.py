"""HTTP triggers at /api/<route>, matched with the Functions route-template syntax
({name}, {name:constraint}, {name?}, {*rest}) and guarded by the function's auth_level."""
from __future__ import annotations

import re
from typing import Callable

import azure.functions as func
from aiohttp import web
from azure.functions import meta

from local_emulator.host.app_loader import FunctionEntry, FunctionIndex
from local_emulator.host.invoker import Invoker
from local_emulator.host.keys import HostKeys, key_matches, unauthorized

_PARAMETER = re.compile(r"^\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}?]*)?(\??)\}$")


def compile_route(template: str) -> re.Pattern:
    """Route template -> regex with one named group per route parameter."""
    parts = []
    for segment in template.strip("/").split("/"):
        found = _PARAMETER.match(segment)
        if not found:
            parts.append("/" + re.escape(segment))
            continue
        catch_all, name, optional = found.groups()
        if catch_all:
            parts.append(f"(?:/(?P<{name}>.*))?")
        elif optional:
            parts.append(f"(?:/(?P<{name}>[^/]+))?")
        else:
            parts.append(f"/(?P<{name}>[^/]+)")
    return re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE)


def _datum(value) -> meta.Datum:
    return meta.Datum(value, "string")


def build_request(request: web.Request, body: bytes, route_params: dict) -> func.HttpRequest:
    """func.HttpRequest through the binding registry's converter, as the worker builds it."""
    value = {
        "method": _datum(request.method), "url": _datum(str(request.url)),
        "headers": {name.lower(): _datum(v) for name, v in request.headers.items()},
        "query": {name: _datum(v) for name, v in request.query.items()},
        "params": {name: _datum(v) for name, v in route_params.items() if v is not None},
        "body": meta.Datum(body, "bytes"),
    }
    return meta.get_binding_registry().get("httpTrigger").decode(meta.Datum(value, "http"),
                                                                 trigger_metadata={})


def to_web_response(result) -> web.Response:
    if result is None:
        return web.Response(status=204)
    if isinstance(result, func.HttpResponse):
        headers = dict(result.headers)
        response = web.Response(status=result.status_code, body=result.get_body(), headers=headers)
        if "content-type" not in {k.lower() for k in headers}:
            response.content_type = result.mimetype or "text/plain"
            if result.charset:
                response.charset = result.charset
        return response
    if isinstance(result, (bytes, str)):
        return web.Response(status=200, body=result if isinstance(result, bytes) else result.encode())
    raise TypeError(f"unsupported HTTP function result type {type(result).__name__}")


class HttpTriggers:
    """Serves every httpTrigger function of the app under /api/."""

    def __init__(self, index: FunctionIndex, invoker: Invoker, keys: HostKeys,
                 extra_inputs: Callable[[FunctionEntry], dict]):
        self.invoker = invoker
        self.keys = keys
        self.extra_inputs = extra_inputs
        self.routes = []
        for entry in index.by_trigger("httpTrigger"):
            template = entry.trigger.get("route") or entry.name
            methods = {m.upper() for m in entry.trigger.get("methods") or []}
            self.routes.append((compile_route(template), methods, entry))

    def add_to(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/{tail:.*}", self.handle)

    def _match(self, path: str, method: str) -> tuple[FunctionEntry | None, dict, bool]:
        """(function, route parameters, whether the path matched but only for other methods)."""
        wrong_method = False
        for pattern, methods, entry in self.routes:
            found = pattern.match("/" + path.strip("/"))
            if found:
                if methods and method not in methods:
                    wrong_method = True
                    continue
                return entry, found.groupdict(), False
        return None, {}, wrong_method

    def _authorized(self, request: web.Request, entry: FunctionEntry) -> bool:
        level = str(entry.trigger.get("authLevel", "FUNCTION")).upper()
        if level == "ANONYMOUS":
            return True
        if level == "ADMIN":
            return key_matches(request, self.keys.master)
        return key_matches(request, self.keys.function, self.keys.master)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        entry, route_params, wrong_method = self._match(request.match_info["tail"], request.method)
        if entry is None:
            return web.json_response({"error": "no function at this route"}, status=405 if wrong_method else 404)
        if not self._authorized(request, entry):
            return unauthorized()
        body = await request.read()
        kwargs = {entry.trigger["name"]: build_request(request, body, route_params)}
        kwargs.update(self.extra_inputs(entry))
        try:
            binding_data = {**{f"Query.{k}": v for k, v in request.query.items()}, **route_params}
            result = await self.invoker.invoke(entry, kwargs, binding_data=binding_data)
        except Exception:  # the traceback is in the host log; the caller gets a bare 500, as on Azure
            return web.Response(status=500)
        return to_web_response(result)
