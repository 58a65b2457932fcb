"""The container group's user-assigned identity (what Microsoft's SKR sidecar gets its Key Vault
token from, via IMDS): the ACI twin refuses a malformed or unknown identity as ARM does, before
anything runs, and hands a group's sidecar its identity's token."""
from __future__ import annotations

import json

import pytest
from azure.core.exceptions import HttpResponseError
from azure.mgmt.containerinstance import ContainerInstanceManagementClient

from local_emulator.aci import AciTwin, skr_sidecar_factory
from shared.container_group import build_container_group
from shared.credentials import StaticTokenCredential
from tests.aci.conftest import LOCATION, RESOURCE_GROUP, SUBSCRIPTION, wait_for

CONTRACT = "1d" * 32
IDENTITY = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
            "Microsoft.ManagedIdentity/userAssignedIdentities/id-trainer")
IDENTITY_TOKEN = "token-of-id-trainer"


@pytest.fixture
def identity_twin(tmp_path, images_dir, tls, token, hardware_root):
    """(twin, client, tokens each sidecar was built with)."""
    real = skr_sidecar_factory(hardware_root, str(tls.ca_path), token)
    built = []

    def factory(policy, identity_token=None):
        built.append(identity_token)
        return real(policy, identity_token)

    aci = AciTwin(tmp_path / "aci", images_dir, tls.server_context(), token, factory, kill_grace_seconds=2.0,
                  identities={IDENTITY.upper(): IDENTITY_TOKEN}).start()     # resource ids compare case-blind
    with ContainerInstanceManagementClient(StaticTokenCredential(token), SUBSCRIPTION, base_url=aci.url,
                                           connection_verify=str(tls.ca_path)) as client:
        yield aci, client, built
    aci.stop()


def _environment() -> dict:
    return {"CCR_RUN_ID": "run-0123456789abcdef", "CCR_CONTRACT": json.dumps({"sleep": 30}),
            "CCR_RUN_NONCE": "n" * 32}


def test_the_group_carries_the_trainers_user_assigned_identity(stand_in_image):
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment(), LOCATION, identity_id=IDENTITY)
    body = spec.serialize()
    assert body["identity"] == {"type": "UserAssigned", "userAssignedIdentities": {IDENTITY: {}}}
    assert "identity" not in build_container_group(stand_in_image.ref, CONTRACT, _environment(), LOCATION).serialize()


def test_a_malformed_or_unknown_identity_is_refused_as_arm_refuses_it(identity_twin, stand_in_image):
    twin, client, built = identity_twin
    unknown = IDENTITY.replace("id-trainer", "id-someone-else")
    for name, identity_id, code in (("run-malformed", "id-trainer", "LinkedInvalidPropertyId"),
                                    ("run-unknown", unknown, "FailedIdentityOperation")):
        spec = build_container_group(stand_in_image.ref, CONTRACT, _environment(), LOCATION, identity_id=identity_id)
        with pytest.raises(HttpResponseError) as refused:
            client.container_groups.begin_create_or_update(RESOURCE_GROUP, name, spec)
        assert refused.value.status_code == 400 and refused.value.error.code == code
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment(), LOCATION, identity_id=IDENTITY)
    spec.identity.type = "SystemAssigned, UserAssigned"
    with pytest.raises(HttpResponseError) as refused:
        client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-system", spec)
    assert refused.value.error.code == "FailedIdentityOperation"
    assert twin.stats()["created"] == 0 and built == []


def test_the_groups_sidecar_calls_key_vault_with_its_identitys_token(identity_twin, stand_in_image):
    twin, client, built = identity_twin
    spec = build_container_group(stand_in_image.ref, CONTRACT, _environment(), LOCATION, identity_id=IDENTITY)
    client.container_groups.begin_create_or_update(RESOURCE_GROUP, "run-identity", spec).result()
    wait_for(lambda: built)
    assert built == [IDENTITY_TOKEN]
    client.container_groups.begin_delete(RESOURCE_GROUP, "run-identity").result()
