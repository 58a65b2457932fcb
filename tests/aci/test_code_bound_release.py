"""Key release is bound to the trainer's code: a key pinned to the hostdata of image A's group
is released inside that group and refused inside a group running a modified image B, although
B's group is a valid confidential group with its own correct policy."""
from __future__ import annotations

import json
import os

import pytest
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyReleasePolicy

from local_emulator import images
from local_emulator.keyvault import KeyVaultTwin
from local_emulator.vault_rbac import CRYPTO_OFFICER, one_principal
from shared.container_group import TRAINER_CONTAINER_NAME, build_container_group, training_hostdata
from shared.credentials import StaticTokenCredential
from shared.release_policy import build_release_policy, policy_to_json
from tests.aci.conftest import LOCATION, RESOURCE_GROUP, wait_for

CONTRACT = "c0" * 32          # any fixed contract digest

pytestmark = pytest.mark.timeout(120)   # a hung twin fails fast instead of stalling the suite


def _release_status(client, name: str) -> tuple[str, str | None]:
    def finished():
        text = client.containers.list_logs(RESOURCE_GROUP, name, TRAINER_CONTAINER_NAME).content or ""
        return text if "ready" in text else None
    values = dict(line.split("=", 1) for line in wait_for(finished, timeout=60).splitlines() if "=" in line)
    return values["release_status"], values.get("released_kty")


def test_only_the_pinned_trainer_image_gets_the_key(tmp_path, client, tls, token, maa, images_dir, stand_in_image):
    vault = KeyVaultTwin(tmp_path / "keyvault", tls, one_principal(token, CRYPTO_OFFICER)).start()
    try:
        keys = KeyClient(vault_url=vault.url, credential=StaticTokenCredential(token),
                         verify_challenge_resource=False, connection_verify=str(tls.ca_path))
        policy = build_release_policy(maa.url, training_hostdata(stand_in_image.ref, CONTRACT))
        key = keys.import_key("tdp-data", JsonWebKey(kty="oct-HSM", k=os.urandom(32), key_ops=["encrypt", "decrypt"]),
                              exportable=True, release_policy=KeyReleasePolicy(policy_to_json(policy), immutable=True))

        source = tmp_path / "stand-in-src"
        (source / "trainer_container" / "__main__.py").write_text(
            (source / "trainer_container" / "__main__.py").read_text() + "\n# one changed line\n")
        modified = images.build_image(source, packages=("trainer_container",), images_dir=images_dir)
        assert modified.digest != stand_in_image.digest

        environment = {"CCR_CONTRACT": json.dumps({"release": key.name}), "CCR_MAA_URL": maa.url,
                       "CCR_KEYVAULT_URL": vault.url}
        for name, image in (("run-pinned", stand_in_image), ("run-modified", modified)):
            spec = build_container_group(image.ref, CONTRACT, environment, LOCATION)
            client.container_groups.begin_create_or_update(RESOURCE_GROUP, name, spec).result()

        assert _release_status(client, "run-pinned") == ("200", "oct")
        assert _release_status(client, "run-modified") == ("403", None)
        keys.close()
    finally:
        vault.stop()
