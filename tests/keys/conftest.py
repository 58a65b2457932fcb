"""Fixtures for the key-release tests: persisted loopback TLS, a bearer token, the Key Vault
twin and the official KeyClient pointed at it, the simulated hardware root and the MAA twin."""
from __future__ import annotations

import base64
import hashlib
import json

import pytest
import requests
from azure.keyvault.keys import KeyClient
from jwcrypto import jwk

from local_emulator.attestation import API_VERSION, build_attest_request
from local_emulator.keyvault import KeyVaultTwin
from local_emulator.vault_rbac import CRYPTO_OFFICER, one_principal
from local_emulator.sevsnp import HardwareRoot
from shared.credentials import StaticTokenCredential


@pytest.fixture
def vault(tmp_path, tls, token):
    twin = KeyVaultTwin(tmp_path / "keyvault", tls, one_principal(token, CRYPTO_OFFICER)).start()
    yield twin
    twin.stop()


def key_client(vault_url: str, token: str, tls) -> KeyClient:
    return KeyClient(vault_url=vault_url, credential=StaticTokenCredential(token),
                     verify_challenge_resource=False, connection_verify=str(tls.ca_path))


@pytest.fixture
def client(vault, token, tls) -> KeyClient:
    return key_client(vault.url, token, tls)


# --- attestation ---------------------------------------------------------------------


def cce_policy_b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


POLICY_P = cce_policy_b64('package policy\ncontainers := [{"id": "ccr-trainer@sha256:' + "1" * 64 + '"}]\n')
POLICY_P2 = cce_policy_b64('package policy\ncontainers := [{"id": "ccr-trainer@sha256:' + "2" * 64 + '"}]\n')


def runtime_keys(public: jwk.JWK) -> bytes:
    """Runtime data as the SKR sidecar presents it: its ephemeral public key."""
    key = public.export_public(as_dict=True)
    key.update(kid="skr-ephemeral", key_ops=["encrypt"])
    return json.dumps({"keys": [key]}).encode()


def attest_response(maa_url: str, tls, root: HardwareRoot, policy_b64: str, runtime: bytes,
                    is_debuggable: bool = False, presented_policy_b64: str | None = None):
    """POST a report for `policy_b64` to the MAA twin (optionally presenting another policy)."""
    report = root.report(hashlib.sha256(base64.b64decode(policy_b64)).hexdigest(),
                         hashlib.sha256(runtime).digest(), is_debuggable)
    body = build_attest_request(report, runtime, base64.b64decode(presented_policy_b64 or policy_b64))
    return requests.post(f"{maa_url}/attest/SevSnpVm?api-version={API_VERSION}", json=body,
                          verify=str(tls.ca_path), timeout=10)
