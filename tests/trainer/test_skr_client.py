import json
import secrets

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwe, jwk

from shared import key_grants
from tests.trainer.harness import KeyReleaseStandIn
from trainer_container.skr_client import KeyReleaseError, SkrClient, endpoint_host

VAULT = "https://vault.test:8443"
KEK = key_grants.kek_name("c" * 64, "dataset:did:web:icmr.test/icmr")
SHORT = key_grants.kek_name("c" * 64, "dataset:did:web:short.test/short")


def new_kek() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=key_grants.KEK_BITS)


@pytest.fixture(scope="module")
def keks() -> dict[str, rsa.RSAPrivateKey]:
    return {KEK: new_kek(), SHORT: new_kek()}


@pytest.fixture
def sidecar(keks):
    server = KeyReleaseStandIn(keks, {KEK: "vault.test:8443", SHORT: "vault.test:8443"}).start()
    yield server
    server.stop()


def test_release_returns_the_kek_and_names_vault_and_attestation_hosts(sidecar, keks):
    released = SkrClient(sidecar.url, "https://maa.test").release(VAULT, KEK)
    assert released["kty"] == "RSA" and "d" in released  # the private half: it unwraps the grant
    assert jwk.JWK(**released).thumbprint() == jwk.JWK.from_pyca(keks[KEK]).thumbprint()
    assert sidecar.requests == [{"maa_endpoint": "maa.test", "akv_endpoint": "vault.test:8443", "kid": KEK}]
    # and it unwraps the data key its owner granted under it
    dek = secrets.token_bytes(key_grants.DEK_BYTES)
    grant = key_grants.wrap(dek, keks[KEK].public_key(), KEK, "icmr-1")
    assert key_grants.unwrap(grant, released, KEK, "icmr-1") == dek


def test_refusal_and_wrong_sizes_are_clear_errors_without_key_material(sidecar, keks):
    client = SkrClient(sidecar.url, "https://maa.test")
    with pytest.raises(KeyReleaseError, match="refused to release key .*HTTP 403"):
        client.release(VAULT, key_grants.kek_name("c" * 64, "model"))  # a KEK nobody created
    with pytest.raises(KeyReleaseError, match="refused to release key .*HTTP 403"):
        client.release("https://other-vault.test", KEK)  # not where its owner keeps it
    # a grant wrapping a key of the wrong size: refused, and the material is not in the message
    short = b"0123456789abcdef"
    token = jwe.JWE(short, json.dumps({"alg": key_grants.WRAP_ALG, "enc": key_grants.WRAP_ENC, "kid": SHORT,
                                       "ccr_key_id": "short-1"}, sort_keys=True))
    token.add_recipient(jwk.JWK.from_pyca(keks[SHORT].public_key()))
    with pytest.raises(key_grants.GrantError, match="does not wrap a 32-byte data key") as error:
        key_grants.unwrap(token.serialize(compact=True), client.release(VAULT, SHORT), SHORT, "short-1")
    assert "0123456789abcdef" not in str(error.value) and short.hex() not in str(error.value)
    with pytest.raises(key_grants.GrantError, match="a data key is 32 bytes"):
        key_grants.wrap(short, keks[SHORT].public_key(), SHORT, "short-1")


def test_unreachable_sidecar_and_bad_endpoints_fail_clearly(sidecar):
    url = sidecar.url
    sidecar.stop()
    with pytest.raises(KeyReleaseError, match="unreachable"):
        SkrClient(url, "https://maa.test").release(VAULT, KEK)
    sidecar.start()  # the fixture stops it again
    for bad in ("http://vault.test", "https://vault.test/keys/x", "vault.test"):
        with pytest.raises(KeyReleaseError, match="must be https://<host> URLs"):
            endpoint_host(bad)
    with pytest.raises(KeyReleaseError, match="must be https://<host> URLs"):
        SkrClient(sidecar.url, "http://maa.test").release(VAULT, KEK)
    assert sidecar.requests == []  # refused before asking


PUBLIC_ONLY = jwk.JWK.generate(kty="RSA", size=2048).export_public(as_dict=True)


@pytest.mark.parametrize("released", ['{"kty": "oct"}', "not json", {"kty": "nope"}, "null", PUBLIC_ONLY],
                         ids=["oct without k", "not json", "unknown kty", "null", "public half only"])
def test_a_malformed_key_from_the_sidecar_is_a_key_release_error(monkeypatch, released):
    response = requests.Response()
    response.status_code, response._content = 200, json.dumps({"key": released}).encode()
    client = SkrClient("http://127.0.0.1:9", "https://maa.test")
    monkeypatch.setattr(client.session, "post", lambda *args, **kwargs: response)
    with pytest.raises(KeyReleaseError, match="no usable key"):
        client.release(VAULT, KEK)
    client.close()


def test_a_kek_without_its_private_half_does_not_unwrap_a_grant(keks):
    """SkrClient passes on whatever RSA JWK the sidecar returns; a public-only one (or another
    KEK) is refused when it is used, without key material in the message."""
    dek = secrets.token_bytes(key_grants.DEK_BYTES)
    grant = key_grants.wrap(dek, keks[KEK].public_key(), KEK, "icmr-1")
    for wrong in (jwk.JWK.from_pyca(keks[KEK].public_key()).export_public(as_dict=True),
                  jwk.JWK.from_pyca(keks[SHORT]).export_private(as_dict=True)):
        with pytest.raises(key_grants.GrantError, match="does not unwrap with the released") as error:
            key_grants.unwrap(grant, wrong, KEK, "icmr-1")
        assert dek.hex() not in str(error.value)
