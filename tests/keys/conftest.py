"""Fixtures for the key-release tests: persisted loopback TLS, a bearer token, the Key Vault
twin and the official KeyClient pointed at it."""
from __future__ import annotations

import secrets

import pytest
from azure.keyvault.keys import KeyClient

from local_emulator import tls as loopback_tls
from local_emulator.keyvault import KeyVaultTwin
from shared.credentials import StaticTokenCredential


@pytest.fixture(scope="session")
def tls(tmp_path_factory):
    return loopback_tls.load_or_create(tmp_path_factory.mktemp("emulator"))


@pytest.fixture
def token() -> str:
    return secrets.token_urlsafe(24)


@pytest.fixture
def vault(tmp_path, tls, token):
    twin = KeyVaultTwin(tmp_path / "keyvault", tls, token).start()
    yield twin
    twin.stop()


def key_client(vault_url: str, token: str, tls) -> KeyClient:
    return KeyClient(vault_url=vault_url, credential=StaticTokenCredential(token),
                     verify_challenge_resource=False, connection_verify=str(tls.ca_path))


@pytest.fixture
def client(vault, token, tls) -> KeyClient:
    return key_client(vault.url, token, tls)
