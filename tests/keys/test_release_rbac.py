"""Key release needs Key Vault Crypto Service Release User, as in a vault with Azure RBAC: with a
genuine attestation token that satisfies the key's policy, only the trainer's identity gets the
key; the app's identity, a party's own token and an identity without the role are refused 403
Forbidden / ForbiddenByRbac before the token is even looked at, and nothing is released. The
roles are the local stack's (local_emulator/stack.py, as infra/modules/rbac.bicep assigns them)."""
from __future__ import annotations

import os

import pytest
from azure.core.exceptions import HttpResponseError
from azure.keyvault.keys import JsonWebKey, KeyReleasePolicy

from local_emulator import vault_rbac as rbac
from local_emulator.keyvault import KeyVaultTwin
from local_emulator.stack import add_party, local_vault_access
from shared.key_release import unwrap_release_result
from shared.release_policy import build_release_policy, policy_to_json
from tests.keys.conftest import POLICY_P, POLICY_P2, attest_response, key_client, runtime_keys
from tests.keys.test_key_release import EPHEMERAL, _hostdata

APP, TRAINER, PARTY, STRANGER = "app-token", "trainer-identity-token", "icmr-token", "other-identity-token"


@pytest.fixture
def stack_vault(tmp_path, tls):
    """The Key Vault twin with the local stack's principals, one party, and an identity that
    exists (Entra ID knows it) but holds no role on the vault."""
    access = local_vault_access(APP, TRAINER)
    add_party(access, PARTY)
    access.add_principal(STRANGER)
    twin = KeyVaultTwin(tmp_path / "keyvault", tls, access).start()
    yield twin
    twin.stop()


def _party_kek(vault, maa, tls) -> None:
    """The party creates its exportable KEK, released only to groups of POLICY_P's host data."""
    policy = KeyReleasePolicy(policy_to_json(build_release_policy(maa.url, _hostdata(POLICY_P))), immutable=True)
    with key_client(vault.url, PARTY, tls) as party:
        party.create_rsa_key("kek", size=2048, hardware_protected=True, exportable=True, release_policy=policy)


def _genuine_token(maa, tls, hardware_root) -> str:
    response = attest_response(maa.url, tls, hardware_root, POLICY_P, runtime_keys(EPHEMERAL))
    assert response.status_code == 200, response.text
    return response.json()["token"]


def _refused_by_rbac(vault, tls, token: str, attestation: str) -> HttpResponseError:
    with key_client(vault.url, token, tls) as client, pytest.raises(HttpResponseError) as caught:
        client.release_key("kek", target_attestation_token=attestation)
    error = caught.value
    assert error.status_code == 403 and error.error.code == "Forbidden"
    assert error.error.innererror == {"code": "ForbiddenByRbac"}
    assert rbac.RELEASE in error.message and token not in error.response.text()
    assert "key_hsm" not in error.response.text()
    return error


def test_only_the_trainers_identity_gets_the_key_with_a_token_the_policy_admits(stack_vault, maa, tls,
                                                                               hardware_root):
    _party_kek(stack_vault, maa, tls)
    attestation = _genuine_token(maa, tls, hardware_root)
    for token in (APP, PARTY, STRANGER):
        _refused_by_rbac(stack_vault, tls, token, attestation)
    assert stack_vault.releases == [("kek", "refused")] * 3
    assert [action for _, action, _ in stack_vault.access.denials] == [rbac.RELEASE] * 3
    with key_client(stack_vault.url, TRAINER, tls) as trainer:
        result = trainer.release_key("kek", target_attestation_token=attestation)
    assert unwrap_release_result(result.value, EPHEMERAL, tls.ca_path.read_bytes())       # the control: it works
    assert stack_vault.releases[-1] == ("kek", "granted")


def test_the_apps_identity_reads_and_creates_keys_but_cannot_import_or_delete(stack_vault, maa, tls):
    """The app creates continued-training contracts' state keys (its create-only role), reads the
    parties' KEKs and their policies, and can neither import nor delete (release: see above)."""
    _party_kek(stack_vault, maa, tls)
    with key_client(stack_vault.url, APP, tls) as app:
        assert app.get_key("kek").properties.release_policy is not None      # gather_key_grants reads it
        app.create_rsa_key("app-made", size=2048)
        attempts = (lambda: app.import_key("app-imported", JsonWebKey(kty="oct", k=os.urandom(32))),
                    lambda: app.begin_delete_key("kek"))
        for attempt in attempts:
            with pytest.raises(HttpResponseError) as caught:
                attempt()
            assert caught.value.status_code == 403 and caught.value.error.innererror == {"code": "ForbiddenByRbac"}
        assert sorted(p.name for p in app.list_properties_of_keys()) == ["app-made", "kek"]  # nothing else


def test_the_release_role_scoped_to_one_key_does_not_reach_another(tmp_path, tls, maa, hardware_root):
    access = rbac.VaultAccess(rbac.LOCAL_VAULT_ID)
    officer = access.add_principal("officer")
    access.assign(officer, rbac.CRYPTO_OFFICER)
    scoped = access.add_principal("scoped")
    access.assign(scoped, rbac.CRYPTO_SERVICE_RELEASE_USER.id, access.key_scope("kek-a"))
    vault = KeyVaultTwin(tmp_path / "keyvault", tls, access).start()
    try:
        policy = KeyReleasePolicy(policy_to_json(build_release_policy(maa.url, _hostdata(POLICY_P))), immutable=True)
        with key_client(vault.url, "officer", tls) as client:
            for name in ("kek-a", "kek-b"):
                client.create_rsa_key(name, size=2048, hardware_protected=True, exportable=True, release_policy=policy)
        attestation = _genuine_token(maa, tls, hardware_root)
        with key_client(vault.url, "scoped", tls) as client:
            assert client.release_key("kek-a", target_attestation_token=attestation).value
            with pytest.raises(HttpResponseError) as caught:
                client.release_key("kek-b", target_attestation_token=attestation)
            assert caught.value.error.innererror == {"code": "ForbiddenByRbac"}
            with pytest.raises(HttpResponseError) as caught:
                client.get_key("kek-a")                      # release, and nothing else
            assert caught.value.error.innererror == {"code": "ForbiddenByRbac"}
        assert vault.releases == [("kek-a", "granted"), ("kek-b", "refused")]
    finally:
        vault.stop()


def test_crypto_officer_includes_release_so_the_release_policy_is_what_stops_it(stack_vault, maa, tls,
                                                                               hardware_root):
    """Why parties get the narrower KEK creator role: Key Vault Crypto Officer's `keys/*` matches
    `keys/release/action`, so an officer passes RBAC and only the key's policy refuses it."""
    assert rbac.role_allows(rbac.CRYPTO_OFFICER, rbac.RELEASE)
    assert not rbac.role_allows(rbac.KEY_VAULT_READER, rbac.RELEASE)
    assert rbac.role_allows(rbac.KEY_VAULT_READER, rbac.READ)
    officer = stack_vault.access.add_principal("officer-token")
    stack_vault.access.assign(officer, rbac.CRYPTO_OFFICER)
    _party_kek(stack_vault, maa, tls)
    other_group = attest_response(maa.url, tls, hardware_root, POLICY_P2, runtime_keys(EPHEMERAL))
    with key_client(stack_vault.url, "officer-token", tls) as client, pytest.raises(HttpResponseError) as caught:
        client.release_key("kek", target_attestation_token=other_group.json()["token"])
    assert caught.value.status_code == 403 and not caught.value.error.innererror   # the policy, not RBAC
    assert stack_vault.releases == [("kek", "refused")] and stack_vault.access.denials == []


def test_an_unknown_token_is_challenged_and_a_malformed_role_id_is_refused(stack_vault, tls):
    with key_client(stack_vault.url, "nobody-knows-this-token", tls) as client, \
            pytest.raises(HttpResponseError) as caught:
        client.get_key("kek")
    assert caught.value.status_code == 401
    with pytest.raises(ValueError, match="GUID"):
        stack_vault.access.assign("someone", "Key Vault Crypto Officer")
    with pytest.raises(ValueError, match="no role definition"):
        stack_vault.access.assign("someone", "00000000-0000-0000-0000-000000000000")
