"""The official KeyClient against the Key Vault twin: import, create, get, list, persistence,
and authentication."""
from __future__ import annotations

import base64
import json
import os
import stat

import pytest
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.keyvault.keys import JsonWebKey, KeyReleasePolicy
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk

from local_emulator.keyvault import KeyVaultTwin
from local_emulator.vault_rbac import CRYPTO_OFFICER, one_principal
from shared.release_policy import build_release_policy, policy_to_json
from tests.keys.conftest import key_client

HOSTDATA = "ab" * 32


def _policy(authority="https://127.0.0.1:1") -> KeyReleasePolicy:
    return KeyReleasePolicy(policy_to_json(build_release_policy(authority, HOSTDATA)), immutable=True)


def _aes_jwk(material: bytes) -> JsonWebKey:
    return JsonWebKey(kty="oct-HSM", k=material, key_ops=["encrypt", "decrypt", "wrapKey", "unwrapKey"])


def _rsa_jwk(private: rsa.RSAPrivateKey) -> JsonWebKey:
    fields = jwk.JWK.from_pyca(private).export_private(as_dict=True)
    raw = {name: base64.urlsafe_b64decode(fields[name] + "==") for name in ("n", "e", "d", "p", "q", "dp", "dq", "qi")}
    return JsonWebKey(kty="RSA-HSM", key_ops=["encrypt", "decrypt"], **raw)


def test_import_oct_and_rsa_with_policy_then_get(client):
    material = os.urandom(32)
    imported = client.import_key("data-key", _aes_jwk(material), exportable=True, release_policy=_policy())
    assert imported.key_type == "oct-HSM"
    assert imported.properties.exportable is True
    assert imported.key.k is None                           # material never comes back
    stored_policy = json.loads(imported.properties.release_policy.encoded_policy)
    assert stored_policy["anyOf"][0]["allOf"][2] == {"claim": "x-ms-sevsnpvm-hostdata", "equals": HOSTDATA}
    assert imported.properties.release_policy.immutable is True

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_key = client.import_key("rsa-key", _rsa_jwk(private), exportable=True, release_policy=_policy())
    assert rsa_key.key_type == "RSA-HSM"
    assert int.from_bytes(rsa_key.key.n, "big") == private.public_key().public_numbers().n
    assert rsa_key.key.d is None

    latest = client.get_key("data-key")
    assert latest.id == imported.id and latest.properties.version == imported.properties.version
    by_version = client.get_key("data-key", imported.properties.version)
    assert by_version.key.key_ops == ["encrypt", "decrypt", "wrapKey", "unwrapKey"]


def test_versions_list_paging_and_create(client):
    first = client.create_rsa_key("signing", size=2048, hardware_protected=True)
    second = client.create_rsa_key("signing", size=2048, hardware_protected=True)
    assert first.properties.version != second.properties.version
    assert client.get_key("signing").properties.version == second.properties.version
    created = client.create_oct_key("aes", size=256, hardware_protected=True)
    assert created.key_type == "oct-HSM"
    for index in range(30):                                  # more than one page (25)
        client.import_key(f"k{index:02d}", _aes_jwk(os.urandom(16)))
    names = [p.name for p in client.list_properties_of_keys()]
    assert len(names) == 32 and len(set(names)) == 32
    versions = [p.version for p in client.list_properties_of_key_versions("signing")]
    assert sorted(versions) == sorted([first.properties.version, second.properties.version])


def test_keys_survive_restart_and_are_private_at_rest(tmp_path, tls, token):
    twin = KeyVaultTwin(tmp_path / "kv", tls, one_principal(token, CRYPTO_OFFICER)).start()
    try:
        imported = key_client(twin.url, token, tls).import_key("persist", _aes_jwk(os.urandom(32)),
                                                               exportable=True, release_policy=_policy())
    finally:
        twin.stop()
    files = list((tmp_path / "kv" / "keys").iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    again = KeyVaultTwin(tmp_path / "kv", tls, one_principal(token, CRYPTO_OFFICER)).start()
    try:
        fetched = key_client(again.url, token, tls).get_key("persist")
        assert fetched.properties.version == imported.properties.version
        assert fetched.properties.exportable is True
    finally:
        again.stop()


def test_missing_key_and_bad_input_get_clear_errors_and_store_nothing(client, vault):
    with pytest.raises(ResourceNotFoundError, match="was not found"):
        client.get_key("nope")
    with pytest.raises(HttpResponseError, match="128, 192 or 256 bits"):
        client.import_key("short", _aes_jwk(os.urandom(20)))
    with pytest.raises(HttpResponseError, match="must have a release policy"):
        client.import_key("exportable", _aes_jwk(os.urandom(32)), exportable=True)
    bad_policy = KeyReleasePolicy(json.dumps({"version": "9.9", "anyOf": []}).encode())
    with pytest.raises(HttpResponseError, match="Invalid release policy"):
        client.import_key("badpolicy", _aes_jwk(os.urandom(32)), exportable=True, release_policy=bad_policy)
    public_only = JsonWebKey(kty="RSA-HSM", n=b"\x01" * 256, e=b"\x01\x00\x01")
    with pytest.raises(HttpResponseError, match="needs the private key"):
        client.import_key("public", public_only)
    with pytest.raises(HttpResponseError, match="public_exponent must be") as caught:
        client.create_rsa_key("oddexponent", public_exponent=17)
    assert caught.value.status_code == 400
    assert list(client.list_properties_of_keys()) == []
    assert list(vault.store.folder.iterdir()) == []


def test_requests_need_the_bearer_token(vault, tls):
    wrong = key_client(vault.url, "not-the-token", tls)
    with pytest.raises(ClientAuthenticationError):
        wrong.get_key("anything")
    import requests
    bare = requests.get(f"{vault.url}/keys?api-version=7.6", verify=str(tls.ca_path), timeout=10)
    assert bare.status_code == 401
    challenge = bare.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer authorization=") and 'resource="https://vault.azure.net"' in challenge


def test_delete_then_purge_frees_the_name(client):
    from azure.core.exceptions import ResourceExistsError
    client.import_key("gone", _aes_jwk(os.urandom(32)))
    deleted = client.begin_delete_key("gone", _polling_interval=0.05).result()
    assert deleted.name == "gone" and deleted.recovery_id.endswith("/deletedkeys/gone")
    with pytest.raises(ResourceNotFoundError):
        client.get_key("gone")
    assert client.get_deleted_key("gone").properties.version == deleted.properties.version
    with pytest.raises(ResourceExistsError, match="deleted but recoverable"):
        client.import_key("gone", _aes_jwk(os.urandom(32)))
    client.purge_deleted_key("gone")
    with pytest.raises(ResourceNotFoundError):
        client.get_deleted_key("gone")
    assert client.import_key("gone", _aes_jwk(os.urandom(32))).properties.version != deleted.properties.version
