"""Where every endpoint and credential comes from, in one of two profiles.

- **Azure** (the default): app settings / environment variables only. A setting that is not
  set is missing: `require` raises `MissingSettings` naming it, `check_app_settings()` names
  every setting the Function App needs and lacks, and nothing falls back to a loopback
  address or to the local emulators' files. Storage is either a connection string
  (`CCR_STORAGE_CONNECTION`, `AzureWebJobsStorage`) or identity-based, as Functions reads a
  connection named X: `X__accountName` (or `X__blobServiceUri`), with `X__credential` =
  `managedidentity` and `X__clientId` for a user-assigned identity.
- **local** (the emulators): on when `CCR_LOCAL_PROFILE=1` or `CCR_EMULATOR_DIR` is set (the
  local stack and `python -m local_emulator up|host|demo` set them). Then a setting missing
  from the environment is read from `<emulator dir>/endpoints.json`, the CA bundle defaults to
  `<emulator dir>/tls/ca.pem`, storage to Azurite's development account, and the start-up
  check is left to the twins (tests host partial apps).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

AZURITE_CONNECTION = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
    "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent

LOCAL_PROFILE = "CCR_LOCAL_PROFILE"
EMULATOR_DIR = "CCR_EMULATOR_DIR"

# The data containers' connection first, then the host's (the same account in infra/).
STORAGE_CONNECTIONS = ("CCR_STORAGE_CONNECTION", "AzureWebJobsStorage")

# What the Function App reads at run time besides storage (docs/INTERFACES.md, "Settings").
APP_SETTINGS = (
    "CCR_MAA_URL",              # attestation authority the release policies and outcomes name
    "CCR_KEYVAULT_URL",         # the control plane's vault: continued-training contracts' state KEKs
    "CCR_LEDGER_URL",           # the contract ledger: dataset version declarations (continued training)
    "CCR_SUBSCRIPTION_ID",      # where trainer container groups are deployed
    "CCR_RESOURCE_GROUP",
    "CCR_LOCATION",
    "CCR_TRAINER_IDENTITY_ID",  # the groups' user-assigned identity (its SKR sidecar's Key Vault token)
    "CCR_EVENTGRID_TOPIC_URL",  # the run/completion topic
    "CCR_EVENTGRID_KEY",        # handed to the trainer for its completion event
    "CCR_PARTY_AUTH_SECRET",    # the party API's token authority
)


class MissingSettings(RuntimeError):
    """Settings the code needs and the environment lacks; `names` lists each one."""

    def __init__(self, names: list[str], hint: str = ""):
        self.names = list(names)
        super().__init__("missing app settings (app setting / environment variable): " + ", ".join(self.names)
                         + (f" ({hint})" if hint else ""))


def local_profile() -> bool:
    """True when the local emulators' profile is explicitly on."""
    return os.environ.get(LOCAL_PROFILE, "").strip().lower() in ("1", "true", "yes") \
        or bool(os.environ.get(EMULATOR_DIR))


def emulator_dir() -> Path:
    """Folder holding the local emulators' state (git-ignored)."""
    return Path(os.environ.get(EMULATOR_DIR) or PROJECT_ROOT / ".emulator")


def _endpoints_file() -> dict:
    path = emulator_dir() / "endpoints.json"
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


# Names this process read from the local endpoints file (a tool says so: ccr/profile.py).
read_from_endpoints_file: set[str] = set()


def source(name: str) -> str | None:
    """Where `get(name)` finds its value: "environment", the endpoints file's path, or None."""
    if os.environ.get(name):
        return "environment"
    if local_profile() and _endpoints_file().get(name):
        return str(emulator_dir() / "endpoints.json")
    return None


def get(name: str, default: str | None = None) -> str | None:
    """A setting by its app-setting name; in the local profile, the emulators' endpoint file
    stands in for a variable that is not set."""
    value = os.environ.get(name)
    if value:
        return value
    if local_profile():
        value = _endpoints_file().get(name)
        if value:
            read_from_endpoints_file.add(name)
        return value or default
    return default


def require(name: str) -> str:
    value = get(name)
    if not value:
        raise MissingSettings([name])
    return value


@dataclass(frozen=True)
class StorageAccount:
    """How to reach the data storage account: a connection string, or (identity-based) a
    blob endpoint with the identity to use (`credential` as in `X__credential`)."""
    setting: str                          # the connection name it came from
    connection_string: str | None = None
    blob_url: str | None = None
    credential: str | None = None         # "managedidentity" or None (DefaultAzureCredential)
    client_id: str | None = None          # a user-assigned identity's client id


STORAGE_HINT = ("identity-based: AzureWebJobsStorage__accountName or AzureWebJobsStorage__blobServiceUri; "
                "or a connection string in CCR_STORAGE_CONNECTION / AzureWebJobsStorage")


def storage_account() -> StorageAccount:
    for name in STORAGE_CONNECTIONS:
        connection = get(name)
        if connection:
            return StorageAccount(name, connection_string=connection)
        blob_url, account = get(f"{name}__blobServiceUri"), get(f"{name}__accountName")
        if blob_url or account:
            return StorageAccount(name, blob_url=(blob_url or f"https://{account}.blob.core.windows.net").rstrip("/"),
                                  credential=get(f"{name}__credential"), client_id=get(f"{name}__clientId"))
    if local_profile():
        return StorageAccount("Azurite (local profile)", connection_string=AZURITE_CONNECTION)
    raise MissingSettings(["AzureWebJobsStorage__accountName"], STORAGE_HINT)


def storage_connection() -> str:
    """The storage connection string (the local host's task hub needs one)."""
    account = storage_account()
    if not account.connection_string:
        raise MissingSettings(["AzureWebJobsStorage"], f"{account.setting} is identity-based; this needs a "
                                                       "connection string")
    return account.connection_string


def missing_app_settings() -> list[str]:
    """Every setting the Function App needs that is not configured (storage first)."""
    missing = []
    try:
        storage_account()
    except MissingSettings as problem:
        missing += problem.names
    return missing + [name for name in APP_SETTINGS if not get(name)]


def check_app_settings() -> None:
    """At start-up in the Azure profile: refuse with every missing setting named."""
    if local_profile():
        return
    missing = missing_app_settings()
    if missing:
        raise MissingSettings(missing, STORAGE_HINT if "AzureWebJobsStorage__accountName" in missing else "")


def ca_bundle() -> str | bool:
    """`connection_verify=` for Azure SDK clients: system CAs unless CCR_CA_BUNDLE names a PEM
    (locally: the emulators' loopback CA)."""
    value = get("CCR_CA_BUNDLE")
    if value:
        return value
    if local_profile():
        local = emulator_dir() / "tls" / "ca.pem"
        if local.exists():
            return str(local)
    return True
