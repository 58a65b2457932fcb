"""Blob input and output bindings (`@app.blob_input`, `@app.blob_output`) as the storage
extension and the Python worker serve them, for every trigger:
- the path is a binding expression: `%Setting%` from app settings, then `{...}` from the
  invocation's trigger data
  (`{queueTrigger}`, a queue message's JSON properties, a blob trigger's path names, an HTTP
  route's parameters) plus `{rand-guid}` and `{DateTime}`; a name with no value fails the
  invocation, as the host's binding does;
- an input parameter typed `str` gets the text, `bytes` the content, anything else an
  `InputStream`; a missing blob gives None, as on Azure;
- an output parameter (`func.Out[...]`) or a `$return` blob binding is uploaded (overwriting)
  after the function returns, from str, bytes or a readable object; nothing is written if
  the function raises or leaves the value unset.
Each binding reads its account from its own connection setting (checked at indexing)."""
from __future__ import annotations

import datetime as dt
import os
import re
import typing
import uuid
from typing import Any

import azure.functions as func
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.functions import meta
from azure.storage.blob.aio import BlobServiceClient

from local_emulator.host.app_loader import FunctionEntry
from local_emulator.host.app_settings import connection_string

_EXPRESSION = re.compile(r"\{([^{}]+)\}")
_SETTING = re.compile(r"%([^%]+)%")


class BindingExpressionError(Exception):
    """A `{name}` in a binding's path that the invocation has no value for."""


def resolve_settings(template: str) -> str:
    """'%InputContainer%/x' with the app setting's value, as the host resolves `%...%`."""
    def value_of(found: re.Match) -> str:
        if not os.environ.get(found.group(1)):
            raise BindingExpressionError(f"'%{found.group(1)}%' does not resolve to a value.")
        return os.environ[found.group(1)]
    return _SETTING.sub(value_of, template)


def resolve_path(template: str, values: dict[str, Any]) -> str:
    """'out/{queueTrigger}-{rand-guid}.txt' with the trigger's values (names match ignoring case)."""
    lowered = {str(k).lower(): v for k, v in values.items()}

    def value_of(found: re.Match) -> str:
        name = found.group(1).strip()
        if name.lower() == "rand-guid":
            return str(uuid.uuid4())
        if name.lower() == "datetime":
            return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H-%M-%SZ")
        if name.lower() not in lowered or lowered[name.lower()] is None:
            raise BindingExpressionError(f"No value for named parameter '{name}'.")
        return str(lowered[name.lower()])
    return _EXPRESSION.sub(value_of, resolve_settings(template))


class Out(func.Out):
    """The worker's output parameter: holds what the function sets."""

    def __init__(self) -> None:
        self._value = None

    def set(self, val) -> None:
        self._value = val

    def get(self):
        return self._value


def blob_bindings(entry: FunctionEntry, direction: str) -> list[dict]:
    return [b for b in entry.bindings if b["type"] == "blob" and str(b.get("direction", "")).lower() == direction]


class BlobBindings:
    def __init__(self) -> None:
        self._clients: dict[str, BlobServiceClient] = {}

    def _service(self, binding: dict) -> BlobServiceClient:
        connection = connection_string(binding.get("connection") or "AzureWebJobsStorage")
        if connection not in self._clients:
            self._clients[connection] = BlobServiceClient.from_connection_string(connection)
        return self._clients[connection]

    def _blob(self, binding: dict, values: dict):
        container, _, name = resolve_path(binding["path"], values).partition("/")
        if not container or not name:
            raise BindingExpressionError(f"binding {binding['name']!r}: path {binding['path']!r} names no blob")
        return self._service(binding).get_blob_client(container, name)

    async def inputs(self, entry: FunctionEntry, values: dict) -> dict[str, Any]:
        """The arguments of the function's blob input and output parameters."""
        arguments: dict[str, Any] = {}
        hints = _hints(entry)
        for binding in blob_bindings(entry, "in"):
            client = self._blob(binding, values)
            try:
                content = await (await client.download_blob()).readall()
            except ResourceNotFoundError:
                arguments[binding["name"]] = None
                continue
            wanted = hints.get(binding["name"])
            if wanted is str:
                arguments[binding["name"]] = content.decode("utf-8")
            elif wanted is bytes:
                arguments[binding["name"]] = content
            else:
                arguments[binding["name"]] = meta.get_binding_registry().get("blob").decode(
                    meta.Datum(content, "bytes"), trigger_metadata=None)
        for binding in blob_bindings(entry, "out"):
            if binding["name"] != "$return":
                arguments[binding["name"]] = Out()
        return arguments

    async def write_outputs(self, entry: FunctionEntry, arguments: dict[str, Any], result: Any,
                            values: dict) -> None:
        for binding in blob_bindings(entry, "out"):
            value = result if binding["name"] == "$return" else arguments[binding["name"]].get()
            if value is None:
                continue
            data = meta.get_binding_registry().get("blob").encode(value, expected_type=None).value
            client = self._blob(binding, values)
            try:
                await client.upload_blob(data, overwrite=True)
            except ResourceNotFoundError:  # the binding creates its container, as on Azure
                try:
                    await self._service(binding).create_container(client.container_name)
                except ResourceExistsError:
                    pass
                await client.upload_blob(data, overwrite=True)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


def _hints(entry: FunctionEntry) -> dict[str, Any]:
    try:
        return typing.get_type_hints(entry.user_function)
    except (NameError, TypeError):  # annotations that do not resolve: every parameter untyped
        return {}

