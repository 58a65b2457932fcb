"""The app configured as in Azure (identity-based storage, no emulator profile) refuses to start
with every missing setting named, reads nothing from an `.emulator/` folder beside it, and never
connects to a loopback address: a subprocess imports function_app.py from a copy of the app whose
`.emulator/endpoints.json` points every setting at 127.0.0.1, builds every client the app uses
and calls them, under an audit hook that records (and refuses) every name lookup and connect.

Note: in a real Function App the managed identity's token endpoint (IDENTITY_ENDPOINT) is a
local address of the platform's; the test sets none, so DefaultAzureCredential tries IMDS."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shared import settings
from tests.conftest import PROJECT_ROOT

APP_PARTS = ("function_app.py", "host.json", "functions", "orchestrations", "shared")
IDENTITY_STORAGE = {"AzureWebJobsStorage__accountName": "stccrtest", "AzureWebJobsStorage__credential": "managedidentity",
                    "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-00000000c1d0"}
AZURE_SETTINGS = {
    **IDENTITY_STORAGE,
    "AZURE_CLIENT_ID": "00000000-0000-0000-0000-00000000c1d0",
    "CCR_MAA_URL": "https://sharedeus.eus.attest.azure.net",
    "CCR_KEYVAULT_URL": "https://kv-ccrtest.vault.azure.net/",
    "CCR_LEDGER_URL": "https://ledger.ccrtest.example",
    "CCR_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000001",
    "CCR_RESOURCE_GROUP": "rg-ccrtest",
    "CCR_LOCATION": "westeurope",
    "CCR_TRAINER_IDENTITY_ID": "/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/rg-ccr/providers/"
                               "Microsoft.ManagedIdentity/userAssignedIdentities/id-trainer-x",
    "CCR_EVENTGRID_TOPIC_URL": "https://evgt-ccrtest.westeurope-1.eventgrid.azure.net/api/events",
    "CCR_EVENTGRID_KEY": "the-topic-key-as-key-vault-resolves-it",
    "CCR_PARTY_AUTH_SECRET": "the-party-secret-as-key-vault-resolves-it",
}
AZURE_HOSTS = {"stccrtest.blob.core.windows.net", "kv-ccrtest.vault.azure.net", "kv-party.vault.azure.net",
               "management.azure.com", "evgt-ccrtest.westeurope-1.eventgrid.azure.net", "169.254.169.254",
               "login.microsoftonline.com"}


@pytest.fixture
def app_copy(tmp_path) -> Path:
    """The app as a publish ships it, with an emulator folder beside it that a fallback would
    read: every setting on loopback, a loopback CA."""
    app = tmp_path / "app"
    app.mkdir()
    for part in APP_PARTS:
        source = PROJECT_ROOT / part
        if source.is_dir():
            shutil.copytree(source, app / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, app / part)
    loopback = {name: "https://127.0.0.1:9" for name in ("CCR_MAA_URL", "CCR_KEYVAULT_URL", "CCR_ARM_URL",
                                                         "CCR_EVENTGRID_TOPIC_URL", "CCR_LEDGER_URL")}
    loopback.update({"AzureWebJobsStorage": settings.AZURITE_CONNECTION, "CCR_STORAGE_CONNECTION": settings.AZURITE_CONNECTION,
                     "CCR_SUBSCRIPTION_ID": "local", "CCR_RESOURCE_GROUP": "local", "CCR_LOCATION": "local",
                     "CCR_EVENTGRID_KEY": "k", "CCR_PARTY_AUTH_SECRET": "s", "CCR_ACCESS_TOKEN": "twin-token"})
    (app / ".emulator" / "tls").mkdir(parents=True)
    (app / ".emulator" / "endpoints.json").write_text(json.dumps(loopback))
    (app / ".emulator" / "tls" / "ca.pem").write_text("not a CA\n")
    return app


def azure_env(app: Path, tmp_path: Path, values: dict) -> dict:
    """A process environment as the Functions host gives the worker in Azure: app settings,
    no emulator profile, nothing of this test session's."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "SYSTEMROOT")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**keep, "HOME": str(home), "PYTHONPATH": str(app), "PYTHONDONTWRITEBYTECODE": "1", **values}


def run_in_app(app: Path, env: dict, script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], cwd=app, env=env, capture_output=True, text=True, timeout=120)


def test_the_app_refuses_to_start_naming_each_missing_setting(app_copy, tmp_path):
    done = run_in_app(app_copy, azure_env(app_copy, tmp_path, IDENTITY_STORAGE), "import function_app")
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("shared.settings.MissingSettings: missing app settings")
    for name in settings.APP_SETTINGS:
        assert name in message
    assert "AzureWebJobsStorage" not in message  # the identity-based storage settings were enough


def test_without_storage_settings_the_message_names_the_identity_based_one(app_copy, tmp_path):
    values = {k: v for k, v in AZURE_SETTINGS.items() if not k.startswith("AzureWebJobsStorage")}
    done = run_in_app(app_copy, azure_env(app_copy, tmp_path, values), "import function_app")
    assert done.returncode != 0
    message = done.stderr.strip().splitlines()[-1]
    assert "missing app settings" in message and "AzureWebJobsStorage__accountName" in message
    assert not [name for name in settings.APP_SETTINGS if name in message.split("(")[0]]


PROBE = r"""
import ipaddress, json, socket, sys, time

attempts = []

def audit(event, args):
    if event == "socket.getaddrinfo":
        attempts.append(str(args[0]))
        raise socket.gaierror(socket.EAI_NONAME, "no network in this test")
    if event == "socket.connect":
        address = args[1]
        attempts.append(str(address[0] if isinstance(address, tuple) else address))
        raise ConnectionRefusedError("no network in this test")

sys.addaudithook(audit)
time.sleep = lambda seconds: None       # the SDKs' retry back-off: nothing to wait for here

import function_app                     # starts: every setting is there
from datetime import datetime, timedelta, timezone
from azure.eventgrid import EventGridEvent
from shared import azure_clients, blob_sas, credentials, settings

blob = azure_clients.blob_service()
vault, party_vault = azure_clients.key_client(), azure_clients.key_client("https://kv-party.vault.azure.net")
aci = azure_clients.container_client()
publisher = azure_clients.event_publisher()
report = {
    "blob_url": blob.url, "blob_credential": type(blob.credential).__name__,
    "credential": type(credentials.get_credential()).__name__,
    "vault": vault.vault_url, "arm": aci._client._base_url, "ca_bundle": settings.ca_bundle(),
    "arm_setting": settings.get("CCR_ARM_URL"), "token_setting": settings.get("CCR_ACCESS_TOKEN"),
    "errors": [],
}
expiry = datetime.now(timezone.utc) + timedelta(hours=1)
calls = [
    lambda: blob.get_container_client("runs").exists(),
    lambda: blob_sas.trainer_blob_urls(blob, ["datasets/p/d/k.ccr"], "outputs/run-0/output.ccr", expiry),
    lambda: vault.get_key("ccr-kek-x"),
    lambda: party_vault.get_key("ccr-kek-y"),
    lambda: aci.container_groups.get("rg-ccrtest", "ccr-run-0"),
    lambda: publisher.send([EventGridEvent(subject="s", event_type="CCR.Run.Finished", data={}, data_version="1.0")]),
]
for call in calls:
    try:
        call()
        report["errors"].append(None)
    except Exception as problem:
        report["errors"].append(type(problem).__name__)
report["attempts"] = attempts
print(json.dumps(report))
"""


def test_configured_as_in_azure_the_app_never_connects_to_a_loopback_address(app_copy, tmp_path):
    done = run_in_app(app_copy, azure_env(app_copy, tmp_path, AZURE_SETTINGS), PROBE)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["blob_url"] == "https://stccrtest.blob.core.windows.net/"
    assert report["blob_credential"] == "ManagedIdentityCredential"
    assert report["credential"] == "DefaultAzureCredential"
    assert report["vault"] == "https://kv-ccrtest.vault.azure.net"
    assert report["arm"] == "https://management.azure.com"
    assert report["ca_bundle"] is True and report["arm_setting"] is None and report["token_setting"] is None
    assert None not in report["errors"]     # every call failed: there is no network, and no twin answered
    attempted = set(report["attempts"])
    assert not [host for host in attempted if host in ("localhost", "::1") or host.startswith("127.")]
    assert attempted <= AZURE_HOSTS, attempted - AZURE_HOSTS
    # the calls went to the configured Azure endpoints (storage and ARM stop at the token first)
    assert {"kv-ccrtest.vault.azure.net", "kv-party.vault.azure.net",
            "evgt-ccrtest.westeurope-1.eventgrid.azure.net"} <= attempted


def test_the_local_profile_is_explicit(monkeypatch, tmp_path):
    (tmp_path / "endpoints.json").write_text(json.dumps({"CCR_MAA_URL": "https://127.0.0.1:9"}))
    for name in ("CCR_LOCAL_PROFILE", "CCR_EMULATOR_DIR", "CCR_MAA_URL", "AzureWebJobsStorage", "CCR_STORAGE_CONNECTION",
                 "AzureWebJobsStorage__accountName", "AzureWebJobsStorage__blobServiceUri", "CCR_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    assert not settings.local_profile() and settings.get("CCR_MAA_URL") is None and settings.ca_bundle() is True
    with pytest.raises(settings.MissingSettings, match="CCR_MAA_URL"):
        settings.require("CCR_MAA_URL")
    with pytest.raises(settings.MissingSettings, match="AzureWebJobsStorage__accountName"):
        settings.storage_account()
    monkeypatch.setenv("CCR_EMULATOR_DIR", str(tmp_path))
    assert settings.local_profile() and settings.get("CCR_MAA_URL") == "https://127.0.0.1:9"
    assert settings.storage_account().connection_string == settings.AZURITE_CONNECTION
    settings.check_app_settings()   # the local profile leaves the start-up check to the twins


def test_storage_settings_resolve_as_functions_connections(monkeypatch):
    for name in ("CCR_LOCAL_PROFILE", "CCR_EMULATOR_DIR", "AzureWebJobsStorage", "CCR_STORAGE_CONNECTION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AzureWebJobsStorage__accountName", "sthost")
    monkeypatch.setenv("AzureWebJobsStorage__clientId", "cid")
    monkeypatch.setenv("AzureWebJobsStorage__credential", "managedidentity")
    assert settings.storage_account() == settings.StorageAccount(
        "AzureWebJobsStorage", blob_url="https://sthost.blob.core.windows.net", credential="managedidentity",
        client_id="cid")
    monkeypatch.setenv("CCR_STORAGE_CONNECTION__blobServiceUri", "https://stdata.blob.core.windows.net/")
    account = settings.storage_account()
    assert account.setting == "CCR_STORAGE_CONNECTION" and account.blob_url == "https://stdata.blob.core.windows.net"
    monkeypatch.setenv("CCR_STORAGE_CONNECTION", "UseDevelopmentStorage=true")
    assert settings.storage_account().connection_string == "UseDevelopmentStorage=true"
