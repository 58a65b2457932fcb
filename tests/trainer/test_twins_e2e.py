"""The COVID reference end to end through the real twins: the providers de-identify with
configs/covid (keyed-HMAC pseudonym join key), encrypt, upload to Azurite, sign the contract and
grant their data keys to it through KEKs in the Key Vault twin whose release policy pins that
contract's trainer group; the trainer gets every KEK through the SKR sidecar twin (simulated
SEV-SNP report for the group's per-contract policy, MAA twin token, Key Vault release wrapped
to the sidecar's ephemeral key) and unwraps the data keys. A grant bound to another policy (a
changed trainer) is never released and the run fails with nothing uploaded."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import pytest
from azure.keyvault.keys import KeyClient, KeyReleasePolicy
from cryptography.hazmat.primitives.asymmetric import rsa

from local_emulator import covid_reference as covid_model
from local_emulator.attestation import MaaTwin
from local_emulator.keyvault import KeyVaultTwin
from local_emulator.vault_rbac import CRYPTO_OFFICER, one_principal
from local_emulator.sevsnp import HardwareRoot
from local_emulator.skr_sidecar import SkrSidecar
from shared import attested_progress, key_grants, package, storage_names
from shared.container_group import training_cce_policy, training_hostdata
from shared.credentials import StaticTokenCredential
from shared.release_policy import build_release_policy, policy_to_json
from tests.trainer.harness import TRAINER_IMAGE, Stage, environment, outcome, run_trainer_process

OTHER_IMAGE = f"ccr-trainer@sha256:{'b' * 64}"


@pytest.fixture(scope="module")
def twins(tmp_path_factory, did_host):
    """Key Vault and MAA on the same loopback CA as the DID host (the trainer trusts one CA)."""
    folder = tmp_path_factory.mktemp("twins")
    token = secrets.token_urlsafe(24)
    root = HardwareRoot.load_or_create(folder)
    vault = KeyVaultTwin(folder / "keyvault", did_host.tls, one_principal(token, CRYPTO_OFFICER)).start()
    maa = MaaTwin(folder / "maa", did_host.tls, [root.public_pem]).start()
    client = KeyClient(vault_url=vault.url, credential=StaticTokenCredential(token),
                       verify_challenge_resource=False, connection_verify=did_host.ca_bundle)
    yield {"root": root, "token": token, "vault": vault, "maa": maa, "client": client, "ca": did_host.ca_bundle}
    client.close()
    for twin in (maa, vault):
        twin.stop()


def vault_keks(twins, image_for=lambda subject: TRAINER_IMAGE):
    """Each grant's KEK created in the Key Vault twin, released only to the group of
    `image_for(subject)` running this contract."""
    def new_kek(subject, kek, signed):
        policy = build_release_policy(twins["maa"].url, training_hostdata(image_for(subject), signed.digest))
        key = twins["client"].create_rsa_key(kek, size=key_grants.KEK_BITS, hardware_protected=True,
                                             exportable=True,
                                             release_policy=KeyReleasePolicy(policy_to_json(policy), immutable=True))
        return rsa.RSAPublicNumbers(int.from_bytes(key.key.e, "big"), int.from_bytes(key.key.n, "big")).public_key()
    return new_kek


def run_through_the_twins(tmp_path, azurite, twins, did_host, topic, image_for=lambda subject: TRAINER_IMAGE):
    tables = covid_model.deidentified_covid(tmp_path, secrets.token_bytes(32))
    stage = Stage(tmp_path, azurite, f"covid-twins-{secrets.token_hex(3)}", dids=did_host,
                  new_kek=vault_keks(twins, image_for), vault_url=lambda party: twins["vault"].url)
    payload = stage.contract(tables, covid_model.covid_training_config(),
                             covid_model.covid_join_spec(covid_model.DEID_JOIN_KEYS))
    signed = stage.sign(payload)
    sidecar = SkrSidecar(twins["root"], training_cce_policy(TRAINER_IMAGE, signed.digest), twins["ca"], twins["token"],
                         allowed_uid=os.getuid()).start()   # this test runs the trainer as its own uid
    try:
        done = run_trainer_process(environment(stage, sidecar, topic, signed, maa_url=twins["maa"].url))
    finally:
        sidecar.stop()
    return tables, stage, signed, done


def test_covid_reference_through_the_twins(tmp_path, azurite, twins, did_host, topic):
    releases_before = len(twins["vault"].releases)
    tables, stage, signed, done = run_through_the_twins(tmp_path, azurite, twins, did_host, topic)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2119" not in done.stdout  # the joined count is private
    [event] = topic.events
    assert event["eventType"] == "CCR.Trainer.Completed"
    assert "metrics_summary" not in outcome(event) and outcome(event)["privacy"]["epsilon"] <= 1.5
    keks = {key_grants.kek_name(signed.digest, s.subject) for s in key_grants.subjects(signed.payload)}
    assert sorted(twins["vault"].releases[releases_before:]) == sorted((kek, "granted") for kek in keks)
    blob = stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id))
    (tmp_path / "out.ccr").write_bytes(blob.download_blob().readall())
    assert package.decrypt_file(tmp_path / "out.ccr", tmp_path / "out.zip", stage.output_key(signed)).blake3 == \
        outcome(event)["output_blake3"]
    # one progress event per epoch, each verified as the app verifies it (token from the MAA twin)
    hostdata = training_hostdata(TRAINER_IMAGE, signed.digest)
    progress = [attested_progress.verify(e["data"], stage.run_id, stage.nonce, hostdata, twins["maa"].url, 1.5,
                                         twins["ca"]) for e in topic.progress]
    assert [(p["epoch"], p["epochs"]) for p in progress] == [(e, 5) for e in range(1, 6)]
    pseudonym = Path(tables["icmr"]).read_text().splitlines()[1].split(",")[0]
    assert pseudonym not in done.stdout + done.stderr + json.dumps(topic.events) + json.dumps(topic.progress)


def test_a_grant_bound_to_another_trainer_is_not_released(tmp_path, azurite, twins, did_host, topic):
    other = lambda subject: OTHER_IMAGE if subject.label == "dataset index" else TRAINER_IMAGE
    releases_before = len(twins["vault"].releases)
    _, stage, signed, done = run_through_the_twins(tmp_path, azurite, twins, did_host, topic, other)
    assert done.returncode != 0
    [event] = topic.events
    assert event["eventType"] == "CCR.Trainer.Failed" and outcome(event)["error_class"] == "KeyReleaseError"
    assert "HTTP 403" in outcome(event)["message"]
    index_kek = stage.kek(signed, "dataset index")
    assert (index_kek, "refused") in twins["vault"].releases[releases_before:]
    assert (index_kek, "granted") not in twins["vault"].releases[releases_before:]
    assert not stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id)).exists()
    assert "phase: join" not in done.stdout
