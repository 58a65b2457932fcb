"""Load `function_app.py` like the Python worker: import it from the app folder, find the one
FunctionApp / DFApp object, and read each function's bindings from the app itself."""
from __future__ import annotations

import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import azure.functions as func


@dataclass
class FunctionEntry:
    """One registered function: its name, trigger binding and the rest of its bindings."""
    name: str
    user_function: Callable
    trigger: dict
    bindings: list[dict] = field(default_factory=list)

    @property
    def trigger_type(self) -> str:
        return self.trigger["type"]

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    def binding_of_type(self, binding_type: str) -> dict | None:
        return next((b for b in self.bindings if b["type"] == binding_type), None)


class FunctionIndex:
    """Every function of one app, looked up by name or by trigger type."""

    def __init__(self, entries: list[FunctionEntry]):
        self.entries = {entry.name: entry for entry in entries}

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


def load_functions(app_dir: Path) -> FunctionIndex:
    """Index the functions the app registered (no second list of functions anywhere)."""
    app = find_app(import_app_module(app_dir))
    entries = []
    for function in app.get_functions():
        bindings = [json.loads(raw) for raw in function.get_raw_bindings()]
        triggers = [b for b in bindings if b["type"].lower().endswith("trigger")]
        if len(triggers) != 1:
            raise ValueError(f"function {function.get_function_name()} needs exactly one trigger")
        entries.append(FunctionEntry(function.get_function_name(), function.get_user_function(),
                                     triggers[0], bindings))
    return FunctionIndex(entries)


def read_host_json(app_dir: Path) -> dict[str, Any]:
    path = Path(app_dir) / "host.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def task_hub_name(app_dir: Path, override: str | None = None) -> str:
    """host.json's durableTask hubName (alphanumeric, as Azure Storage requires)."""
    name = override or read_host_json(app_dir).get("extensions", {}).get("durableTask", {}).get(
        "hubName", "TestHubName")
    if not name.isalnum() or not name[0].isalpha() or not 3 <= len(name) <= 45:
        raise ValueError(f"task hub name {name!r} must be 3-45 letters/digits starting with a letter")
    return name
