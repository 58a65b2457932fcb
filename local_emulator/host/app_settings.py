"""App settings as Core Tools and the Functions host resolve them.

- `local.settings.json`: its `Values` become environment variables of the host and the app,
  except a name the environment already defines (Core Tools skips those, saying so). An
  encrypted file (`IsEncrypted: true`) is refused: this host holds no key to read it.
- Connections: a binding's `connection` names an app setting (empty: AzureWebJobsStorage).
  The host finds it as `<name>` or `AzureWebJobs<name>`, or, identity-based, as a section
  `<name>__*` (serviceUri, accountName, ...). A function whose connection resolves to nothing
  fails indexing naming the setting, as on Azure; it never falls back to another account."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger("local_emulator.host")
DEFAULT_CONNECTION = "AzureWebJobsStorage"
_LOADED: set[Path] = set()  # files already applied in this process


def load_local_settings(app_dir: Path) -> list[str]:
    """Put local.settings.json's Values into the environment; returns the names it set."""
    path = (Path(app_dir) / "local.settings.json").resolve()
    if not path.is_file() or path in _LOADED:
        return []
    _LOADED.add(path)
    try:
        settings = json.loads(path.read_text())
    except ValueError as bad:
        raise ValueError(f"{path} is not valid JSON: {bad}") from None
    if settings.get("IsEncrypted"):
        raise ValueError(f"{path} is encrypted (IsEncrypted: true); the local host cannot decrypt it")
    applied = []
    for name, value in (settings.get("Values") or {}).items():
        if name in os.environ:
            log.info("Skipping '%s' from local.settings.json as it's already defined in current "
                     "environment variables.", name)
            continue
        os.environ[name] = "" if value is None else str(value)
        applied.append(name)
    return applied


def connection_defined(name: str) -> bool:
    for candidate in (name, "AzureWebJobs" + name):
        if os.environ.get(candidate):
            return True
        if any(key.startswith(candidate + "__") and value for key, value in os.environ.items()):
            return True
    return False


def connection_string(name: str) -> str:
    """The connection string a binding's setting names (`<name>` or `AzureWebJobs<name>`); an
    identity-based section alone is refused: this host has no identity to connect with."""
    for candidate in (name, "AzureWebJobs" + name):
        if os.environ.get(candidate):
            return os.environ[candidate]
    if connection_defined(name):
        raise ValueError(f"connection {name!r} is identity-based ({name}__*); the local host needs a "
                         f"connection string")
    raise ValueError(f"The connection setting '{name}' does not exist")


def undefined_connections(bindings: list[dict]) -> list[str]:
    """The connection settings these bindings name that resolve to nothing."""
    missing = []
    for binding in bindings:
        if "connection" not in binding:
            continue
        name = binding.get("connection") or DEFAULT_CONNECTION
        if not connection_defined(name):
            missing.append(name)
    return missing


def indexing_error(function_name: str, setting: str) -> str:
    return (f"Error indexing method 'Functions.{function_name}'. The connection setting '{setting}' "
            f"(or 'AzureWebJobs{setting}', or a '{setting}__*' section) does not exist. Make sure that "
            f"it is a defined App Setting.")
