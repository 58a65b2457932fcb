"""The MAA twin: tokens only for genuine reports whose evidence matches, with the claims SKR
policies check; JWKS for verification."""
from __future__ import annotations

import base64
import hashlib
import json

import requests
from jwcrypto import jwk, jwt

from local_emulator.attestation import API_VERSION, MaaTwin, build_attest_request
from local_emulator.sevsnp import HardwareRoot
from tests.keys.conftest import POLICY_P, POLICY_P2, attest_response, runtime_keys

EPHEMERAL = jwk.JWK.generate(kty="RSA", size=2048)


def _verified_claims(maa, tls, token: str) -> dict:
    keys = jwk.JWKSet.from_json(requests.get(f"{maa.url}/certs", verify=str(tls.ca_path), timeout=10).text)
    return json.loads(jwt.JWT(jwt=token, key=keys, algs=["RS256"]).claims)


def test_token_for_a_genuine_report_carries_the_skr_claims(maa, tls, hardware_root):
    runtime = runtime_keys(EPHEMERAL)
    response = attest_response(maa.url, tls, hardware_root, POLICY_P, runtime)
    assert response.status_code == 200, response.text
    token = response.json()["token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "RS256" and header["jku"] == f"{maa.url}/certs" and header["kid"]
    claims = _verified_claims(maa, tls, token)
    assert claims["iss"] == maa.url
    assert claims["x-ms-attestation-type"] == "sevsnpvm"
    assert claims["x-ms-compliance-status"] == "azure-compliant-uvm"
    assert claims["x-ms-sevsnpvm-hostdata"] == hashlib.sha256(base64.b64decode(POLICY_P)).hexdigest()
    assert claims["x-ms-sevsnpvm-is-debuggable"] is False
    assert claims["x-ms-runtime"]["keys"][0]["n"] == EPHEMERAL.export_public(as_dict=True)["n"]
    assert claims["nbf"] <= claims["iat"] < claims["exp"]


def test_debuggable_report_is_reported_as_such(maa, tls, hardware_root):
    response = attest_response(maa.url, tls, hardware_root, POLICY_P, runtime_keys(EPHEMERAL), is_debuggable=True)
    assert _verified_claims(maa, tls, response.json()["token"])["x-ms-sevsnpvm-is-debuggable"] is True


def test_report_for_another_policy_than_presented_is_refused(maa, tls, hardware_root):
    response = attest_response(maa.url, tls, hardware_root, POLICY_P, runtime_keys(EPHEMERAL),
                               presented_policy_b64=POLICY_P2)
    assert response.status_code == 400
    assert "host data is not the sha256 of the presented initTimeData" in response.json()["error"]["message"]
    assert "token" not in response.json()


def test_runtime_data_not_bound_by_the_report_is_refused(maa, tls, hardware_root):
    other = runtime_keys(jwk.JWK.generate(kty="RSA", size=2048))
    report = hardware_root.report(hashlib.sha256(base64.b64decode(POLICY_P)).hexdigest(),
                                  hashlib.sha256(runtime_keys(EPHEMERAL)).digest())
    body = build_attest_request(report, other, base64.b64decode(POLICY_P))
    response = requests.post(f"{maa.url}/attest/SevSnpVm?api-version={API_VERSION}", json=body,
                             verify=str(tls.ca_path), timeout=10)
    assert response.status_code == 400 and "report data" in response.json()["error"]["message"]


def test_report_signed_by_another_hardware_root_is_refused(maa, tls, tmp_path):
    impostor = HardwareRoot.load_or_create(tmp_path / "impostor")
    response = attest_response(maa.url, tls, impostor, POLICY_P, runtime_keys(EPHEMERAL))
    assert response.status_code == 400
    assert "not signed by a trusted hardware root" in response.json()["error"]["message"]


def test_tampered_report_and_malformed_requests_are_refused(maa, tls, hardware_root):
    runtime = runtime_keys(EPHEMERAL)
    report = hardware_root.report("00" * 32, hashlib.sha256(runtime).digest())
    head, payload, signature = report.decode().split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=="))
    body["host_data"] = hashlib.sha256(base64.b64decode(POLICY_P)).hexdigest()     # claim another policy
    forged_payload = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    forged = f"{head}.{forged_payload}.{signature}".encode()
    url = f"{maa.url}/attest/SevSnpVm?api-version={API_VERSION}"
    response = requests.post(url, json=build_attest_request(forged, runtime, base64.b64decode(POLICY_P)),
                             verify=str(tls.ca_path), timeout=10)
    assert response.status_code == 400 and "not signed by a trusted" in response.json()["error"]["message"]
    for bad in ({}, {"report": "!!"}, {"report": base64.urlsafe_b64encode(b"{}").decode()}):
        response = requests.post(url, json=bad, verify=str(tls.ca_path), timeout=10)
        assert response.status_code == 400 and response.json()["error"]["message"]


def test_signing_key_and_hardware_root_persist(tmp_path, tls):
    root = HardwareRoot.load_or_create(tmp_path)
    assert HardwareRoot.load_or_create(tmp_path).public_pem == root.public_pem
    assert oct((tmp_path / "sevsnp" / "hardware_root.pem").stat().st_mode & 0o777) == "0o600"
    first = MaaTwin(tmp_path / "maa", tls, [root.public_pem]).start()
    try:
        keys = first.jwks()
    finally:
        first.stop()
    assert MaaTwin(tmp_path / "maa", tls, [root.public_pem]).jwks() == keys
    assert (tmp_path / "maa" / "maa_signing_key.pem").stat().st_mode & 0o777 == 0o600
