"""The trainer's key release goes through its container group's user-assigned identity, as on
Azure: the SKR sidecar calls Key Vault with the identity's token, and the vault (with the local
stack's role assignments, as infra/modules/rbac.bicep makes them) lets only the trainer's
identity release. Attacks refused, with nothing released: a group without an identity (its
sidecar gets no token, so Key Vault is never asked), a group whose identity lacks the release
role (403 ForbiddenByRbac), and the trainer's identity on a group whose attestation the key's
release policy does not admit (roles do not bypass the policy)."""
from __future__ import annotations

import json

import pytest
from azure.keyvault.keys import KeyReleasePolicy
from azure.mgmt.containerinstance import ContainerInstanceManagementClient

from local_emulator import images
from local_emulator import vault_rbac as rbac
from local_emulator.aci import AciTwin, skr_sidecar_factory
from local_emulator.attestation import MaaTwin
from local_emulator.keyvault import KeyVaultTwin
from local_emulator.stack import TRAINER_IDENTITY_ID, add_party, local_vault_access
from shared.container_group import TRAINER_CONTAINER_NAME, build_container_group, training_hostdata
from shared.credentials import StaticTokenCredential
from shared.release_policy import build_release_policy, policy_to_json
from tests.aci.conftest import LOCATION, RESOURCE_GROUP, SUBSCRIPTION, wait_for
from tests.aci.stand_in_trainer import write_stand_in
from tests.keys.conftest import key_client

pytestmark = pytest.mark.timeout(180)

CONTRACT = "7e" * 32
APP, TRAINER, PARTY, STRANGER = "app-token", "trainer-identity-token", "party-token", "stranger-identity-token"
# An identity that exists in the subscription but holds no role on the vault.
STRANGER_ID = TRAINER_IDENTITY_ID.replace("id-trainer-local", "id-someone-else")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tls, hardware_root):
    """(vault, ACI client, the pinned stand-in image, a modified one) with a KEK the party
    created for the pinned image's group under CONTRACT."""
    folder = tmp_path_factory.mktemp("release-identity")
    access = local_vault_access(APP, TRAINER)
    add_party(access, PARTY)
    access.add_principal(STRANGER)
    vault = KeyVaultTwin(folder / "keyvault", tls, access).start()
    maa = MaaTwin(folder / "maa", tls, [hardware_root.public_pem]).start()
    aci = AciTwin(folder / "aci", folder / "images", tls.server_context(), APP,
                  skr_sidecar_factory(hardware_root, str(tls.ca_path), None), kill_grace_seconds=2.0,
                  identities={TRAINER_IDENTITY_ID: TRAINER, STRANGER_ID: STRANGER}).start()
    source = write_stand_in(folder / "stand-in-src")
    pinned = images.build_image(source, packages=("trainer_container",), images_dir=folder / "images")
    (source / "trainer_container" / "__main__.py").write_text(
        (source / "trainer_container" / "__main__.py").read_text() + "\n# one changed line\n")
    modified = images.build_image(source, packages=("trainer_container",), images_dir=folder / "images")
    policy = KeyReleasePolicy(policy_to_json(build_release_policy(maa.url, training_hostdata(pinned.ref, CONTRACT))),
                              immutable=True)
    with key_client(vault.url, PARTY, tls) as party:
        party.create_rsa_key("kek", size=2048, hardware_protected=True, exportable=True, release_policy=policy)
    client = ContainerInstanceManagementClient(StaticTokenCredential(APP), SUBSCRIPTION, base_url=aci.url,
                                               connection_verify=str(tls.ca_path))
    try:
        yield {"vault": vault, "maa": maa, "client": client, "pinned": pinned, "modified": modified}
    finally:
        client.close()
        aci.stop()
        maa.stop()
        vault.stop()


@pytest.fixture(scope="module")
def outcome(world):
    """Four groups run at once, each asking its sidecar for the KEK: (what each trainer printed,
    the vault's releases and RBAC denials during the run)."""
    vault = world["vault"]
    releases_before, denials_before = len(vault.releases), len(vault.access.denials)
    groups = {"run-trainer": (world["pinned"], TRAINER_IDENTITY_ID),         # the control: released
              "run-no-identity": (world["pinned"], None),
              "run-stranger": (world["pinned"], STRANGER_ID),
              "run-modified": (world["modified"], TRAINER_IDENTITY_ID)}
    environment = {"CCR_CONTRACT": json.dumps({"release": "kek"}), "CCR_MAA_URL": world["maa"].url,
                   "CCR_KEYVAULT_URL": vault.url}
    client = world["client"]
    pollers = [client.container_groups.begin_create_or_update(
        RESOURCE_GROUP, name, build_container_group(image.ref, CONTRACT, environment, LOCATION, identity_id=identity))
        for name, (image, identity) in groups.items()]
    for poller in pollers:
        poller.result()
    printed = {}
    for name in groups:
        def finished(name=name):
            text = client.containers.list_logs(RESOURCE_GROUP, name, TRAINER_CONTAINER_NAME).content or ""
            return text if "\nready" in text else None
        printed[name] = dict(line.split("=", 1) for line in wait_for(finished, timeout=90).splitlines() if "=" in line)
    for poller in [client.container_groups.begin_delete(RESOURCE_GROUP, name) for name in groups]:
        poller.result()
    return printed, vault.releases[releases_before:], vault.access.denials[denials_before:]


def _refused(printed: dict) -> str:
    """The sidecar's refusal as the trainer got it; nothing was released to it."""
    assert printed["release_status"] == "403" and "released_kty" not in printed
    return json.loads(printed["release_error"])


def test_the_trainers_identity_on_the_pinned_group_gets_the_key_and_nothing_else_is_released(outcome):
    printed, releases, _ = outcome
    assert printed["run-trainer"]["release_status"] == "200" and printed["run-trainer"]["released_kty"] == "RSA"
    assert sorted(releases) == [("kek", "granted"), ("kek", "refused"), ("kek", "refused")]   # one grant only


def test_a_group_without_identity_gets_no_token_and_never_reaches_key_vault(outcome):
    printed, releases, _ = outcome
    assert "retrieving authentication token failed" in _refused(printed["run-no-identity"])
    assert len(releases) == 3          # the trainer's, the stranger's and the modified group's; not this one


def test_a_group_whose_identity_lacks_the_release_role_is_refused_by_rbac(world, outcome):
    printed, _, denials = outcome
    reason = _refused(printed["run-stranger"])
    assert "status equal to 403" in reason and rbac.RELEASE in reason
    vault = world["vault"]
    stranger = vault.access.principal(f"Bearer {STRANGER}")
    assert denials == [(stranger, rbac.RELEASE, vault.access.key_scope("kek"))]   # and nobody else


def test_the_trainers_identity_on_a_group_the_policy_does_not_admit_is_refused(world, outcome):
    """Roles do not bypass the release policy: the identity passes RBAC, the attestation fails it."""
    printed, _, denials = outcome
    reason = _refused(printed["run-modified"])
    assert "release policy not satisfied" in reason and rbac.RELEASE not in reason
    trainer = world["vault"].access.principal(f"Bearer {TRAINER}")
    assert trainer not in {who for who, _, _ in denials}
