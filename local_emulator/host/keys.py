"""The host's keys: function key for function-level HTTP routes, system keys for the Durable,
Event Grid and blobs (`blobs_extension`) webhooks, master key for admin routes. From the
environment, else generated."""
from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass

from aiohttp import web


@dataclass
class HostKeys:
    function: str
    master: str
    durable_system: str
    eventgrid_system: str
    blobs_extension: str = ""   # the system key Azure names `blobs_extension`

    @classmethod
    def from_env(cls) -> "HostKeys":
        def key(name: str) -> str:
            return os.environ.get(name) or secrets.token_urlsafe(32)
        return cls(key("CCR_FUNCTION_KEY"), key("CCR_MASTER_KEY"), key("CCR_DURABLE_SYSTEM_KEY"),
                   key("CCR_EVENTGRID_SYSTEM_KEY"), key("CCR_BLOBS_EXTENSION_KEY"))


def presented_key(request: web.Request) -> str:
    return request.headers.get("x-functions-key") or request.query.get("code") or ""


def key_matches(request: web.Request, *accepted: str) -> bool:
    given = presented_key(request).encode()
    return any(hmac.compare_digest(given, key.encode()) for key in accepted if key)


def unauthorized() -> web.Response:
    return web.json_response({"error": "missing or wrong function key"}, status=401)
