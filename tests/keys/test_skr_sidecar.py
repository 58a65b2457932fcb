"""The SKR sidecar twin end to end: Key Vault twin + MAA twin + simulated hardware. A sidecar
bound to the CCE policy the key is pinned to gets the key; one for any other policy does not.
These unit tests call the sidecar from the test process, so they bind it to this process's uid
(`allowed_uid=os.getuid()`); a sidecar bound to another uid refuses this process
(tests/aci/test_sidecar_isolation.py runs the real thing: a group's own uid)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import socket

import pytest
import requests
from azure.keyvault.keys import JsonWebKey, KeyReleasePolicy
from jwcrypto import jwk, jwt

from local_emulator.skr_sidecar import SkrSidecar, socket_owner_uid
from local_emulator.tls import Peer
from shared.release_policy import build_release_policy, policy_to_json
from tests.keys.conftest import POLICY_P, POLICY_P2
from trainer_container.skr_client import KeyReleaseError, SkrClient


@pytest.fixture
def sidecars(hardware_root, tls, token):
    started = []

    def make(policy_b64: str, **kwargs) -> SkrSidecar:
        kwargs.setdefault("allowed_uid", os.getuid())
        sidecar = SkrSidecar(hardware_root, policy_b64, str(tls.ca_path), token, **kwargs).start()
        started.append(sidecar)
        return sidecar

    yield make
    for sidecar in started:
        sidecar.stop()


@pytest.fixture
def data_key(client, maa):
    """A 32-byte key pinned to policy P; (kid as Microsoft's sidecar takes it: `name/version`,
    material)."""
    material = os.urandom(32)
    hostdata = hashlib.sha256(base64.b64decode(POLICY_P)).hexdigest()
    policy = KeyReleasePolicy(policy_to_json(build_release_policy(maa.url, hostdata)), immutable=True)
    key = client.import_key("tdp-data", JsonWebKey(kty="oct-HSM", k=material, key_ops=["encrypt", "decrypt"]),
                            exportable=True, release_policy=policy)
    return f"{key.name}/{key.properties.version}", material


def _host(url: str) -> str:
    return url.removeprefix("https://")


def _release(sidecar: SkrSidecar, maa, vault, kid: str, **fields) -> requests.Response:
    body = {"maa_endpoint": _host(maa.url), "akv_endpoint": _host(vault.url), "kid": kid, **fields}
    return requests.post(f"{sidecar.url}/key/release", json=body, timeout=30)


def test_sidecar_for_the_pinned_policy_releases_the_key(sidecars, maa, vault, data_key):
    kid, material = data_key
    response = _release(sidecars(POLICY_P), maa, vault, kid)
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"key"}
    key = json.loads(response.json()["key"])       # a JWK as JSON text: material and key_ops, no kid
    assert set(key) == {"kty", "k", "key_ops"} and key["kty"] == "oct"
    assert base64.urlsafe_b64decode(key["k"] + "==") == material
    versionless = kid.split("/")[0]
    again = _release(sidecars(POLICY_P), maa, vault, versionless)
    assert json.loads(again.json()["key"])["k"] == key["k"]


def test_trainer_skr_client_gets_the_key_through_the_sidecar(sidecars, maa, vault, client):
    """The trainer's client gets an RSA key-encryption key (what grants are wrapped under)."""
    hostdata = hashlib.sha256(base64.b64decode(POLICY_P)).hexdigest()
    policy = KeyReleasePolicy(policy_to_json(build_release_policy(maa.url, hostdata)), immutable=True)
    kek = client.create_rsa_key("tdp-kek", size=2048, hardware_protected=True, exportable=True, release_policy=policy)
    released = SkrClient(sidecars(POLICY_P).url, maa.url).release(vault.url, "tdp-kek")
    assert released["kty"] == "RSA" and "d" in released
    assert base64.urlsafe_b64decode(released["n"] + "==").lstrip(b"\0") == kek.key.n.lstrip(b"\0")


def test_sidecar_for_another_policy_is_denied(sidecars, maa, vault, data_key):
    kid, _ = data_key
    response = _release(sidecars(POLICY_P2), maa, vault, kid)
    assert response.status_code == 403
    assert "x-ms-sevsnpvm-hostdata" in response.json()["error"]
    assert "key" not in response.json()
    with pytest.raises(KeyReleaseError, match="HTTP 403"):
        SkrClient(sidecars(POLICY_P2).url, maa.url).release(vault.url, "tdp-data")


def test_debuggable_group_is_denied(sidecars, maa, vault, data_key):
    kid, _ = data_key
    response = _release(sidecars(POLICY_P, is_debuggable=True), maa, vault, kid)
    assert response.status_code == 403 and "x-ms-sevsnpvm-is-debuggable" in response.json()["error"]


def test_attest_maa_binds_the_callers_runtime_data(sidecars, maa, tls):
    runtime = {"keys": [], "purpose": "test"}
    body = {"maa_endpoint": _host(maa.url), "runtime_data": base64.b64encode(json.dumps(runtime).encode()).decode()}
    response = requests.post(f"{sidecars(POLICY_P).url}/attest/maa", json=body, timeout=30)
    assert response.status_code == 200, response.text
    keys = jwk.JWKSet.from_json(requests.get(f"{maa.url}/certs", verify=str(tls.ca_path), timeout=10).text)
    claims = json.loads(jwt.JWT(jwt=response.json()["token"], key=keys, algs=["RS256"]).claims)
    assert claims["x-ms-runtime"] == runtime
    assert claims["x-ms-sevsnpvm-hostdata"] == hashlib.sha256(base64.b64decode(POLICY_P)).hexdigest()


def test_a_key_url_as_kid_or_a_scheme_on_an_endpoint_is_refused_as_microsofts_sidecar_refuses_it(
        sidecars, maa, vault, data_key):
    """Microsoft's sidecar builds `https://<akv_endpoint>/keys/<kid>/release`: a key URL as kid
    names no key and `https://host` as an endpoint reaches no host, and every such failure is a
    403 `{"error": "<reason>"}`. The twin refuses them the same way, before Key Vault is asked."""
    sidecar = sidecars(POLICY_P)
    kid, _ = data_key
    key_url = f"{vault.url}/keys/{kid}"
    full = {"maa_endpoint": _host(maa.url), "akv_endpoint": _host(vault.url), "kid": kid}
    for fields in ({"kid": key_url}, {"kid": f"{kid}/release"}, {"kid": "../" + kid},
                   {"akv_endpoint": vault.url}, {"akv_endpoint": "http://" + _host(vault.url)},
                   {"akv_endpoint": _host(vault.url) + "/"}, {"maa_endpoint": maa.url}):
        releases = len(vault.releases)
        response = requests.post(f"{sidecar.url}/key/release", json={**full, **fields}, timeout=30)
        assert response.status_code == 403, (fields, response.text)
        assert set(response.json()) == {"error"} and response.json()["error"].startswith("secure key release failed")
        assert len(vault.releases) == releases          # Key Vault released (or refused) nothing
    assert _release(sidecar, maa, vault, key_url.split("/keys/")[1]).status_code == 200


def test_requests_that_do_not_bind_are_400_and_attestation_failures_403(sidecars, maa, vault, data_key):
    """As gin binds Microsoft's request structs (every field `binding:"required"`): a missing,
    empty or non-string field, or a body that is not a JSON object, is 400; /key/release then
    answers `{"error": {}}`."""
    sidecar = sidecars(POLICY_P)
    kid, _ = data_key
    full = {"maa_endpoint": _host(maa.url), "akv_endpoint": _host(vault.url), "kid": kid}
    for body in ({k: v for k, v in full.items() if k != "kid"}, {**full, "akv_endpoint": ""},
                 {**full, "kid": 7}, [full], "not json"):
        data = body if isinstance(body, str) else json.dumps(body)
        response = requests.post(f"{sidecar.url}/key/release", data=data, timeout=30)
        assert (response.status_code, response.json()) == (400, {"error": {}}), body
    response = requests.post(f"{sidecar.url}/attest/maa", json={"maa_endpoint": _host(maa.url)}, timeout=30)
    assert response.status_code == 400 and "runtime_data" in response.json()["error"]
    response = requests.post(f"{sidecar.url}/attest/maa", json={"maa_endpoint": _host(maa.url), "runtime_data": "%%"},
                             timeout=30)
    assert response.status_code == 400 and "base64" in response.json()["error"]
    for endpoint in (maa.url, "127.0.0.1:1"):             # a scheme; nothing listening
        response = requests.post(f"{sidecar.url}/attest/maa", json={"maa_endpoint": endpoint, "runtime_data": "e30="},
                                 timeout=30)
        assert response.status_code == 403 and response.json()["error"].startswith("attestation failed")
    assert requests.get(f"{sidecar.url}/status", timeout=10).json() == {"message": "Status OK"}


def test_without_an_access_token_the_sidecar_calls_key_vault_as_its_groups_identity(
        hardware_root, tls, token, maa, vault, data_key):
    kid, _ = data_key
    asked = []

    def identity_token(resource: str) -> str:
        asked.append(resource)
        return token

    sidecar = SkrSidecar(hardware_root, POLICY_P, str(tls.ca_path), identity_token, allowed_uid=os.getuid()).start()
    try:
        assert _release(sidecar, maa, vault, kid).status_code == 200
        assert asked == ["https://vault.azure.net"]
        # a caller's access_token is used instead of the identity's: here one Key Vault refuses
        response = _release(sidecar, maa, vault, kid, access_token="not-a-token")
        assert response.status_code == 403 and "401" in response.json()["error"] and asked == ["https://vault.azure.net"]
    finally:
        sidecar.stop()


def test_aci_factory_builds_working_sidecars_and_nothing_secret_is_printed(hardware_root, tls, token, maa, vault,
                                                                           data_key, capfd):
    from local_emulator.aci import skr_sidecar_factory
    kid, material = data_key
    sidecar = skr_sidecar_factory(hardware_root, str(tls.ca_path), token)(POLICY_P)
    sidecar.start()
    try:
        response = _release(sidecar, maa, vault, kid)
        assert response.status_code == 200
        released = json.loads(response.json()["key"])["k"]
    finally:
        sidecar.stop()
    out, err = capfd.readouterr()
    for secret in (released, token, base64.b64encode(material).decode()):
        assert secret not in out and secret not in err


OTHER_UID = os.getuid() + 4242          # no process of this test has it


def test_a_process_of_another_uid_is_refused_before_anything_is_attested(sidecars, maa, vault, data_key):
    kid, _ = data_key
    sidecar = sidecars(POLICY_P, allowed_uid=OTHER_UID)
    # endpoints that would fail if the sidecar tried to use them: it never gets that far
    unreachable = {"maa_endpoint": "127.0.0.1:1", "akv_endpoint": "127.0.0.1:1", "kid": "k"}
    for method, path, body in (("POST", "/key/release", unreachable), ("POST", "/key/release", None),
                               ("POST", "/attest/maa", {"maa_endpoint": "127.0.0.1:1", "runtime_data": "e30="}),
                               ("GET", "/status", None), ("GET", "/no/such/path", None)):
        response = requests.request(method, sidecar.url + path, json=body, timeout=30)
        assert response.status_code == 403, (path, response.text)
        assert response.json() == {"error": f"the SKR sidecar answers only its own container group, "
                                            f"not uid {os.getuid()}"}
    response = _release(sidecar, maa, vault, kid)         # a real request: refused all the same
    assert response.status_code == 403 and "key" not in response.json()
    with pytest.raises(KeyReleaseError, match="HTTP 403"):
        SkrClient(sidecar.url, maa.url).release(vault.url, "tdp-data")


def test_the_allowed_uid_is_fixed_once_the_sidecar_runs(hardware_root, tls, token, sidecars):
    sidecar = SkrSidecar(hardware_root, POLICY_P, str(tls.ca_path), token)
    assert sidecar.allowed_uid == os.getuid()               # standalone: the builder's own uid
    with pytest.raises(ValueError):
        sidecar.allowed_uid = -1
    sidecar.allowed_uid = OTHER_UID
    started = sidecars(POLICY_P, allowed_uid=OTHER_UID)
    with pytest.raises(RuntimeError):
        started.allowed_uid = os.getuid()
    assert requests.get(started.url + "/status", timeout=10).status_code == 403


def test_the_client_socket_owner_comes_from_the_kernels_table():
    with socket.create_server(("127.0.0.1", 0)) as server:
        with socket.create_connection(server.getsockname()) as client:
            accepted, address = server.accept()
            with accepted:
                assert socket_owner_uid(Peer(address, accepted.getsockname())) == os.getuid()
                # a dual-stack client socket shows up in tcp6 as a v4-mapped address
                with socket.socket(socket.AF_INET6) as dual:
                    dual.connect(("::ffff:127.0.0.1", server.getsockname()[1]))
                    mapped, mapped_address = server.accept()
                    with mapped:
                        assert socket_owner_uid(Peer(mapped_address, mapped.getsockname())) == os.getuid()
                # no such connection: nobody owns it
                port = client.getsockname()[1]
                assert socket_owner_uid(Peer(("127.0.0.1", port ^ 1), accepted.getsockname())) is None
