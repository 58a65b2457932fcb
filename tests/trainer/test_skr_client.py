import json
import secrets

import pytest
import requests

from tests.trainer.harness import KeyReleaseStandIn
from trainer_container.skr_client import KeyReleaseError, SkrClient, vault_endpoint

KID = "https://vault.test:8443/keys/icmr/1"


@pytest.fixture
def sidecar():
    keys = {KID: secrets.token_bytes(32), "https://vault.test:8443/keys/short/1": b"0123456789abcdef"}
    server = KeyReleaseStandIn(keys).start()
    yield server
    server.stop()


def test_release_returns_the_data_key_and_names_vault_and_attestation(sidecar):
    key = SkrClient(sidecar.url, "https://maa.test").release_key(KID)
    assert key == sidecar.keys[KID]
    assert sidecar.requests == [{"maa_endpoint": "https://maa.test", "akv_endpoint": "https://vault.test:8443",
                                 "kid": KID}]


def test_refusal_and_wrong_sizes_are_clear_errors_without_key_material(sidecar):
    client = SkrClient(sidecar.url, "https://maa.test")
    with pytest.raises(KeyReleaseError, match="refused to release key .*HTTP 403"):
        client.release_key("https://vault.test:8443/keys/unknown/1")
    with pytest.raises(KeyReleaseError, match="not a 32-byte data key") as error:
        client.release_key("https://vault.test:8443/keys/short/1")
    assert "0123456789abcdef" not in str(error.value)


def test_unreachable_sidecar_and_bad_key_ids_fail_clearly(sidecar):
    url = sidecar.url
    sidecar.stop()
    with pytest.raises(KeyReleaseError, match="unreachable"):
        SkrClient(url, "https://maa.test").release_key(KID)
    sidecar.start()  # the fixture stops it again
    with pytest.raises(KeyReleaseError, match="not a Key Vault key URL"):
        vault_endpoint("http://vault.test/keys/x")


@pytest.mark.parametrize("released", ['{"kty": "oct"}', "not json", {"kty": "nope"}, "null"])
def test_a_malformed_key_from_the_sidecar_is_a_key_release_error(monkeypatch, released):
    response = requests.Response()
    response.status_code, response._content = 200, json.dumps({"key": released}).encode()
    client = SkrClient("http://127.0.0.1:9", "https://maa.test")
    monkeypatch.setattr(client.session, "post", lambda *args, **kwargs: response)
    with pytest.raises(KeyReleaseError, match="no usable key"):
        client.release_key(KID)
    client.close()
