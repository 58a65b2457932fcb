"""Services for the parties' CLI tests: Azurite (real, ephemeral ports) and the Key Vault twin
over loopback TLS, wired into the settings the CLI reads."""
from __future__ import annotations

import secrets

import pytest

from local_emulator import tls as loopback_tls
from local_emulator.azurite import Azurite, wait_until_reachable
from local_emulator.keyvault import KeyVaultTwin
from local_emulator.vault_rbac import CRYPTO_OFFICER, one_principal
from shared import azure_clients

MAA_URL = "https://127.0.0.1:1/maa"  # only named by release policies in these tests


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    service = Azurite(tmp_path_factory.mktemp("azurite")).start()
    try:
        wait_until_reachable(service)
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def vault(tmp_path_factory):
    state = tmp_path_factory.mktemp("emulator")
    tls = loopback_tls.load_or_create(state)
    token = secrets.token_urlsafe(24)
    twin = KeyVaultTwin(state / "keyvault", tls, one_principal(token, CRYPTO_OFFICER)).start()
    twin.token, twin.ca_path = token, str(tls.ca_path)
    yield twin
    twin.stop()


@pytest.fixture
def no_services(monkeypatch, tmp_path):
    """Settings pointing at a closed port: a command that contacts a service fails loudly."""
    azure_clients.blob_service.cache_clear()
    for name, value in {"CCR_EMULATOR_DIR": str(tmp_path / "no-emulator"),
                        "CCR_STORAGE_CONNECTION": "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                                                  "AccountKey=AAAA;BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;",
                        "CCR_KEYVAULT_URL": "https://127.0.0.1:9", "CCR_ACCESS_TOKEN": "t",
                        "CCR_MAA_URL": MAA_URL, "CCR_KEYS_DIR": str(tmp_path / "keys")}.items():
        monkeypatch.setenv(name, value)
    yield
    azure_clients.blob_service.cache_clear()


@pytest.fixture
def services(monkeypatch, tmp_path, azurite, vault):
    azure_clients.blob_service.cache_clear()
    for name, value in {"CCR_EMULATOR_DIR": str(tmp_path / "no-emulator"),
                        "CCR_STORAGE_CONNECTION": azurite.connection_string, "CCR_KEYVAULT_URL": vault.url,
                        "CCR_KEYVAULT_VERIFY_CHALLENGE": "false", "CCR_ACCESS_TOKEN": vault.token,
                        "CCR_CA_BUNDLE": vault.ca_path, "CCR_MAA_URL": MAA_URL,
                        "CCR_KEYS_DIR": str(tmp_path / "keys")}.items():
        monkeypatch.setenv(name, value)
    yield
    azure_clients.blob_service.cache_clear()
