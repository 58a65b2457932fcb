"""Where every endpoint and credential comes from: app settings / environment first,
then the local emulators' endpoint file, so the same code runs on Azure and locally."""
from __future__ import annotations

import json
import os
from pathlib import Path

AZURITE_CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def emulator_dir() -> Path:
    """Folder holding the local emulators' state (git-ignored)."""
    return Path(os.environ.get("CCR_EMULATOR_DIR", PROJECT_ROOT / ".emulator"))


def _endpoints_file() -> dict:
    path = emulator_dir() / "endpoints.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def get(name: str, default: str | None = None) -> str | None:
    """A setting by its app-setting name; falls back to the emulators' endpoint file."""
    value = os.environ.get(name)
    if value:
        return value
    return _endpoints_file().get(name, default)


def require(name: str) -> str:
    value = get(name)
    if not value:
        raise RuntimeError(f"setting {name} is not configured (app setting / environment variable)")
    return value


def storage_connection() -> str:
    return get("CCR_STORAGE_CONNECTION") or get("AzureWebJobsStorage") or AZURITE_CONNECTION


def ca_bundle() -> str | bool:
    """`connection_verify=` for Azure SDK clients: the loopback CA locally, system CAs in Azure."""
    value = get("CCR_CA_BUNDLE")
    if value:
        return value
    local = emulator_dir() / "tls" / "ca.pem"
    return str(local) if local.exists() else True
