"""Load `function_app.py` like the Python worker: import it from the app folder, find the one
FunctionApp / DFApp object, and read each function's bindings from the app itself. A parameter
typed with an SDK type (`azurefunctions.extensions.bindings.blob.BlobClient`, ...) makes a
deferred binding, as in the worker: its raw binding carries `properties.SupportsDeferredBinding`
(what tells the host to send a reference, not the content) and its argument is built by the
extension's converter."""
from __future__ import annotations

import importlib.util
import inspect
import json
import logging
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import azure.functions as func
import azurefunctions.extensions.base as sdk_extensions
from azure.functions import meta

from local_emulator.host.app_settings import indexing_error, load_local_settings, undefined_connections

log = logging.getLogger("local_emulator.host")
# triggers of features the host does not implement: such a function alone fails indexing
UNSUPPORTED_TRIGGERS: dict[str, str] = {}

# The worker's DEFERRED_BINDING_REGISTRY: converters of the SDK-type extensions the app imported.
SDK_BINDING_REGISTRY = sdk_extensions.get_binding_registry()


@dataclass
class FunctionEntry:
    """One registered function: its name, trigger binding and the rest of its bindings."""
    name: str
    user_function: Callable
    trigger: dict
    bindings: list[dict] = field(default_factory=list)
    sdk_types: dict[str, type] = field(default_factory=dict)  # parameter -> SDK type (deferred binding)

    @property
    def trigger_type(self) -> str:
        return self.trigger["type"]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    def binding_of_type(self, binding_type: str) -> dict | None:
        return next((b for b in self.bindings if b["type"] == binding_type), None)

    def decode_trigger(self, datum, trigger_metadata: dict) -> Any:
        """The trigger argument as the worker builds it: an SDK-typed parameter through its
        extension's converter (given the type), any other through azure-functions' converter."""
        sdk_type = self.sdk_types.get(self.trigger["name"])
        if sdk_type is not None:
            converter = SDK_BINDING_REGISTRY.get(self.trigger_type)
            return converter.decode(datum, trigger_metadata=trigger_metadata, pytype=sdk_type)
        return meta.get_binding_registry().get(self.trigger_type).decode(datum, trigger_metadata=trigger_metadata)


class FunctionIndex:
    """Every function of one app, looked up by name or by trigger type, with the app's
    host.json (extension options such as durableTask's defaultVersion)."""

    def __init__(self, entries: list[FunctionEntry], host_json: dict | None = None):
        self.entries = {entry.name: entry for entry in entries}
        self.host_json = host_json or {}

    def extension_options(self, extension: str) -> dict:
        return self.host_json.get("extensions", {}).get(extension, {})

    def by_trigger(self, trigger_type: str) -> list[FunctionEntry]:
        return [e for e in self.entries.values() if e.trigger_type == trigger_type]

    def __len__(self) -> int:
        return len(self.entries)


def import_app_module(app_dir: Path, module_name: str = "function_app"):
    """Import <app_dir>/function_app.py with the app folder first on sys.path, as the worker does."""
    app_dir = Path(app_dir).resolve()
    script = app_dir / f"{module_name}.py"
    if not script.is_file():
        raise FileNotFoundError(f"no {module_name}.py in {app_dir}")
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    spec = importlib.util.spec_from_file_location(module_name, script)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def find_app(module) -> func.FunctionRegister:
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionRegister)]
    if len(apps) != 1:
        raise ValueError(f"function_app.py must define exactly one FunctionApp/DFApp, found {len(apps)}")
    return apps[0]


def sdk_typed_parameters(function) -> dict[str, type]:
    """Parameters whose annotation is an SDK type, found as the worker's indexing finds them
    (`check_supported_type` on `typing.get_type_hints`), each checked against its binding's
    converter as the worker does (it refuses to load a function that fails the check)."""
    name = function.get_function_name()
    hints = typing.get_type_hints(function.get_user_function())
    bindings = {binding.name: binding.type for binding in function.get_bindings()}
    found = {}
    for param, annotation in hints.items():
        if param not in bindings or not SDK_BINDING_REGISTRY.check_supported_type(annotation):
            continue
        converter = SDK_BINDING_REGISTRY.get(bindings[param])
        if converter is None or not converter.check_input_type_annotation(annotation):
            raise ValueError(f"function {name}: parameter {param!r} is typed "
                             f"{getattr(annotation, '__name__', annotation)}, "
                             f"which a {bindings[param]!r} binding cannot give")
        found[param] = annotation
    return found


def raw_bindings(function, sdk_types: dict[str, type]) -> list[dict]:
    """The bindings the worker reports to the host: with an SDK-typed parameter the worker has
    the base extension write them, flagging each with `SupportsDeferredBinding`."""
    if not sdk_types:
        return [json.loads(raw) for raw in function.get_raw_bindings()]
    input_types = {param: SimpleNamespace(pytype=annotation) for param, annotation in sdk_types.items()}
    raw, _ = SDK_BINDING_REGISTRY.get_raw_bindings(function, input_types)
    return [json.loads(binding) for binding in raw]


def supports_deferred_binding(binding: dict) -> bool:
    """The host's reading of the flag (a JSON boolean, or "True" as .NET workers write it)."""
    return str(binding.get("properties", {}).get("SupportsDeferredBinding", False)).lower() == "true"


def load_functions(app_dir: Path) -> FunctionIndex:
    """Index the functions the app registered (no second list of functions anywhere), with
    local.settings.json's Values in the environment first, as Core Tools does. A function
    whose connection setting is undefined, or whose trigger is a feature the host lacks
    (none at present), fails indexing alone (logged naming the setting or feature, left out)."""
    load_local_settings(app_dir)
    app = find_app(import_app_module(app_dir))
    entries = []
    for function in app.get_functions():
        sdk_types = sdk_typed_parameters(function)
        bindings = raw_bindings(function, sdk_types)
        triggers = [b for b in bindings if b["type"].lower().endswith("trigger")]
        if len(triggers) != 1:
            raise ValueError(f"function {function.get_function_name()} needs exactly one trigger")
        missing = undefined_connections(bindings)
        if missing:
            log.error(indexing_error(function.get_function_name(), missing[0]))
            continue
        unsupported = UNSUPPORTED_TRIGGERS.get(triggers[0]["type"])
        if unsupported:
            log.error("Error indexing method 'Functions.%s'. %s are not supported by the local host.",
                      function.get_function_name(), unsupported)
            continue
        entries.append(FunctionEntry(function.get_function_name(), function.get_user_function(),
                                     triggers[0], bindings, sdk_types))
    return FunctionIndex(entries, read_host_json(app_dir))


def read_host_json(app_dir: Path) -> dict[str, Any]:
    path = Path(app_dir) / "host.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def task_hub_name(app_dir: Path, override: str | None = None) -> str:
    """host.json's durableTask hubName (alphanumeric, as Azure Storage requires); a
    `%Setting%` value is read from that app setting, as the host resolves it."""
    name = override or read_host_json(app_dir).get("extensions", {}).get("durableTask", {}).get(
        "hubName", "TestHubName")
    if len(name) > 2 and name.startswith("%") and name.endswith("%"):
        setting = name[1:-1]
        if not os.environ.get(setting):
            raise ValueError(f"host.json's hubName names the app setting {setting!r}, which is not defined")
        name = os.environ[setting]
    if not name.isalnum() or not name[0].isalpha() or not 3 <= len(name) <= 45:
        raise ValueError(f"task hub name {name!r} must be 3-45 letters/digits starting with a letter")
    return name
