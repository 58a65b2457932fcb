"""Secure key release through the official KeyClient: granted only for a genuine, current token
from the policy's authority whose claims satisfy the policy; the released key unwraps only
with the attested environment's private key."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import time

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import JsonWebKey, KeyExportEncryptionAlgorithm, KeyReleasePolicy
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwk, jwt

from local_emulator.attestation import MaaTwin
from shared.key_release import KeyReleaseFormatError, released_jwk, unwrap_release_result
from shared.release_policy import build_release_policy, policy_to_json
from tests.keys.conftest import POLICY_P, POLICY_P2, attest_response, runtime_keys

EPHEMERAL = jwk.JWK.generate(kty="RSA", size=2048)


def _hostdata(policy_b64: str) -> str:
    return hashlib.sha256(base64.b64decode(policy_b64)).hexdigest()


def _import_aes(client, maa_url: str, name: str = "data-key", exportable: bool = True) -> bytes:
    material = os.urandom(32)
    policy = KeyReleasePolicy(policy_to_json(build_release_policy(maa_url, _hostdata(POLICY_P))), immutable=True)
    client.import_key(name, JsonWebKey(kty="oct-HSM", k=material, key_ops=["encrypt", "decrypt"]),
                      exportable=exportable, release_policy=policy)
    return material


def _token(maa, tls, root, policy_b64=POLICY_P, **kwargs) -> str:
    response = attest_response(maa.url, tls, root, policy_b64, runtime_keys(EPHEMERAL), **kwargs)
    assert response.status_code == 200, response.text
    return response.json()["token"]


def _claims(token: str) -> dict:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def _denied(client, token: str, reason: str, name: str = "data-key") -> None:
    with pytest.raises(HttpResponseError) as caught:
        client.release_key(name, target_attestation_token=token)
    assert caught.value.status_code == 403
    assert reason in caught.value.message
    body = caught.value.response.text()
    assert "key_hsm" not in body and '"value"' not in body


def test_release_granted_and_unwraps_only_with_the_attested_private_key(client, maa, tls, hardware_root):
    material = _import_aes(client, maa.url)
    token = _token(maa, tls, hardware_root)
    result = client.release_key("data-key", target_attestation_token=token, nonce="n-1")   # versionless //release
    assert unwrap_release_result(result.value, EPHEMERAL, tls.ca_path.read_bytes()) == material
    version = client.get_key("data-key").properties.version
    again = client.release_key("data-key", token, version=version)
    released = released_jwk(again.value, EPHEMERAL)
    assert released["kty"] == "oct" and base64.urlsafe_b64decode(released["k"] + "==") == material
    assert released["kid"].endswith(f"/keys/data-key/{version}")
    with pytest.raises(KeyReleaseFormatError, match="does not unwrap"):
        unwrap_release_result(result.value, jwk.JWK.generate(kty="RSA", size=2048))


@pytest.mark.parametrize("algorithm", [KeyExportEncryptionAlgorithm.rsa_aes_key_wrap_256,
                                       KeyExportEncryptionAlgorithm.rsa_aes_key_wrap_384])
def test_release_with_sha2_wrapping(client, maa, tls, hardware_root, algorithm):
    material = _import_aes(client, maa.url)
    result = client.release_key("data-key", target_attestation_token=_token(maa, tls, hardware_root),
                                algorithm=algorithm)
    assert unwrap_release_result(result.value, EPHEMERAL) == material


def test_rsa_key_release(client, maa, tls, hardware_root):
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    fields = jwk.JWK.from_pyca(private).export_private(as_dict=True)
    raw = {n: base64.urlsafe_b64decode(fields[n] + "==") for n in ("n", "e", "d", "p", "q", "dp", "dq", "qi")}
    policy = KeyReleasePolicy(policy_to_json(build_release_policy(maa.url, _hostdata(POLICY_P))))
    client.import_key("rsa-key", JsonWebKey(kty="RSA-HSM", **raw), exportable=True, release_policy=policy)
    result = client.release_key("rsa-key", target_attestation_token=_token(maa, tls, hardware_root))
    released = unwrap_release_result(result.value, EPHEMERAL)
    assert released.export_private(as_dict=True)["d"] == fields["d"]


def test_release_signature_must_chain_to_the_trusted_ca(client, maa, tls, hardware_root):
    import trustme
    _import_aes(client, maa.url)
    result = client.release_key("data-key", target_attestation_token=_token(maa, tls, hardware_root))
    with pytest.raises(KeyReleaseFormatError, match="trusted vault certificate"):
        unwrap_release_result(result.value, EPHEMERAL, trustme.CA().cert_pem.bytes())


def test_denied_for_another_cce_policy(client, maa, tls, hardware_root):
    _import_aes(client, maa.url)
    _denied(client, _token(maa, tls, hardware_root, policy_b64=POLICY_P2),
            "claim x-ms-sevsnpvm-hostdata does not satisfy equals")


def test_denied_for_a_debuggable_container(client, maa, tls, hardware_root):
    _import_aes(client, maa.url)
    _denied(client, _token(maa, tls, hardware_root, is_debuggable=True),
            "claim x-ms-sevsnpvm-is-debuggable does not satisfy equals")


@pytest.mark.parametrize("claim,value", [("x-ms-attestation-type", "sgx"),
                                         ("x-ms-compliance-status", "non-compliant-uvm")])
def test_denied_for_a_single_claim_mismatch(client, maa, tls, hardware_root, claim, value):
    _import_aes(client, maa.url)
    claims = _claims(_token(maa, tls, hardware_root))
    claims[claim] = value
    _denied(client, maa.sign_claims(claims), f"claim {claim} does not satisfy equals")
    del claims[claim]
    _denied(client, maa.sign_claims(claims), f"claim {claim} is missing")


def test_denied_for_an_expired_token(client, maa, tls, hardware_root):
    _import_aes(client, maa.url)
    claims = _claims(_token(maa, tls, hardware_root))
    now = int(time.time())
    claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    _denied(client, maa.sign_claims(claims), "Attestation token has expired")


def test_denied_for_a_token_signed_by_another_key(client, maa, tls, hardware_root):
    _import_aes(client, maa.url)
    genuine = _token(maa, tls, hardware_root)
    header = json.loads(base64.urlsafe_b64decode(genuine.split(".")[0] + "=="))
    forged = jwt.JWT(header=header, claims=_claims(genuine))           # same iss, kid and claims
    forged.make_signed_token(jwk.JWK.generate(kty="RSA", size=2048))
    _denied(client, forged.serialize(), "signature is not valid")


def test_denied_for_a_genuine_token_from_another_authority(client, maa, tls, hardware_root, tmp_path):
    _import_aes(client, maa.url)
    other = MaaTwin(tmp_path / "other-maa", tls, [hardware_root.public_pem]).start()
    try:
        _denied(client, _token(other, tls, hardware_root), "issuer is not an authority of the policy")
    finally:
        other.stop()


def test_denied_for_a_non_exportable_key_and_a_token_without_runtime_key(client, maa, tls, hardware_root):
    client.import_key("plain", JsonWebKey(kty="oct-HSM", k=os.urandom(32)))
    token = _token(maa, tls, hardware_root)
    _denied(client, token, "not exportable", name="plain")
    _import_aes(client, maa.url)
    claims = _claims(token)
    claims["x-ms-runtime"] = {"keys": []}
    _denied(client, maa.sign_claims(claims), "no RSA wrapping key")
    with pytest.raises(HttpResponseError) as caught:
        client.release_key("data-key", target_attestation_token="not-a-jwt")
    assert caught.value.status_code == 400 and "not a JWT" in caught.value.message


def test_denied_for_a_token_without_expiry(client, maa, tls, hardware_root):
    _import_aes(client, maa.url)
    claims = _claims(_token(maa, tls, hardware_root))
    claims["exp"] = None                                  # signed by the authority, but never expires
    _denied(client, maa.sign_claims(claims), "missing a required claim")


def test_denied_for_an_expired_or_disabled_key(client, maa, tls, hardware_root):
    import datetime
    policy = KeyReleasePolicy(policy_to_json(build_release_policy(maa.url, _hostdata(POLICY_P))))
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    client.import_key("expired", JsonWebKey(kty="oct-HSM", k=os.urandom(32)), exportable=True,
                      release_policy=policy, expires_on=past)
    client.import_key("disabled", JsonWebKey(kty="oct-HSM", k=os.urandom(32)), exportable=True,
                      release_policy=policy, enabled=False)
    token = _token(maa, tls, hardware_root)
    _denied(client, token, "disabled, expired or not yet valid", name="expired")
    _denied(client, token, "disabled, expired or not yet valid", name="disabled")
