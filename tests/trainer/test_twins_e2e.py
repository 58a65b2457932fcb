"""The COVID reference end to end through the real twins: the providers de-identify with
configs/covid (keyed-HMAC pseudonym join key), encrypt, upload to Azurite and import their
keys into the Key Vault twin with a release policy bound to the trainer's CCE policy; the
trainer gets every key through the SKR sidecar twin (simulated SEV-SNP report, MAA twin
token, Key Vault release wrapped to the sidecar's ephemeral key). A key bound to another
policy (a changed trainer) is never released and the run fails with nothing uploaded."""
from __future__ import annotations

import json
import secrets
import uuid
from pathlib import Path

import pytest
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyReleasePolicy

from local_emulator import tls as loopback_tls
from local_emulator.attestation import MaaTwin
from local_emulator.keyvault import KeyVaultTwin
from local_emulator.sevsnp import HardwareRoot
from local_emulator.skr_sidecar import SkrSidecar
from shared import package, storage_names
from shared.cce_policy import hostdata_of
from shared.container_group import training_cce_policy
from shared.credentials import StaticTokenCredential
from shared.release_policy import build_release_policy, policy_to_json
from local_emulator import covid_reference as covid_model
from tests.trainer.harness import Stage, environment, run_trainer_process

CONTRACT_DIGEST = "c0" * 32       # any fixed contract digest: the policy is bound to it
TRAINER_POLICY = training_cce_policy(f"ccr-trainer@sha256:{'a' * 64}", CONTRACT_DIGEST)
OTHER_POLICY = training_cce_policy(f"ccr-trainer@sha256:{'b' * 64}", CONTRACT_DIGEST)


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """TLS on loopback, Key Vault, MAA and the SKR sidecar bound to the trainer's policy."""
    folder = tmp_path_factory.mktemp("twins")
    tls = loopback_tls.load_or_create(folder)
    token = secrets.token_urlsafe(24)
    root = HardwareRoot.load_or_create(folder)
    vault = KeyVaultTwin(folder / "keyvault", tls, token).start()
    maa = MaaTwin(folder / "maa", tls, [root.public_pem]).start()
    sidecar = SkrSidecar(root, TRAINER_POLICY, str(tls.ca_path), token).start()
    client = KeyClient(vault_url=vault.url, credential=StaticTokenCredential(token),
                       verify_challenge_resource=False, connection_verify=str(tls.ca_path))
    yield {"tls": tls, "vault": vault, "maa": maa, "sidecar": sidecar, "client": client}
    client.close()
    for twin in (sidecar, maa, vault):
        twin.stop()


def key_importer(twins, bound_policy_for=lambda name: TRAINER_POLICY):
    def new_key(name):
        material = secrets.token_bytes(32)
        policy = build_release_policy(twins["maa"].url, hostdata_of(bound_policy_for(name)))
        key = twins["client"].import_key(f"{name}-{uuid.uuid4().hex[:12]}",
                                         JsonWebKey(kty="oct-HSM", k=material, key_ops=["encrypt", "decrypt"]),
                                         exportable=True,
                                         release_policy=KeyReleasePolicy(policy_to_json(policy), immutable=True))
        return key.id, material
    return new_key


def run_trainer(stage, twins, topic, contract):
    return run_trainer_process({**environment(stage, twins["sidecar"], topic, contract,
                                              maa_url=twins["maa"].url), "CCR_CA_BUNDLE": str(twins["tls"].ca_path)})


def test_covid_reference_through_the_twins(tmp_path, azurite, twins, topic):
    tables = covid_model.deidentified_covid(tmp_path, secrets.token_bytes(32))
    stage = Stage(tmp_path, azurite, "covid-twins", new_key=key_importer(twins))
    contract = stage.contract(tables, covid_model.covid_training_config(),
                              covid_model.covid_join_spec(covid_model.DEID_JOIN_KEYS))
    done = run_trainer(stage, twins, topic, contract)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "joined 2119 rows: 1695 training, 424 validation, 10 features" in done.stdout
    [event] = topic.events
    assert event["eventType"] == "CCR.Trainer.Completed"
    assert event["data"]["metrics_summary"]["accuracy"] >= 0.85 and event["data"]["privacy"]["epsilon"] <= 1.5
    blob = stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id))
    (tmp_path / "out.ccr").write_bytes(blob.download_blob().readall())
    output_key = stage.keys[contract["tdc"]["output"]["key_kid"]]
    assert package.decrypt_file(tmp_path / "out.ccr", tmp_path / "out.zip", output_key).sha256 == \
        event["data"]["output_sha256"]
    pseudonym = Path(tables["icmr"]).read_text().splitlines()[1].split(",")[0]
    assert pseudonym not in done.stdout + done.stderr + json.dumps(topic.events)


def test_a_key_bound_to_another_trainer_is_not_released(tmp_path, azurite, twins, topic):
    tables = covid_model.deidentified_covid(tmp_path, secrets.token_bytes(32))
    bound = lambda name: OTHER_POLICY if name == "index" else TRAINER_POLICY
    stage = Stage(tmp_path, azurite, "covid-other-trainer", new_key=key_importer(twins, bound))
    contract = stage.contract(tables, covid_model.covid_training_config(),
                              covid_model.covid_join_spec(covid_model.DEID_JOIN_KEYS))
    done = run_trainer(stage, twins, topic, contract)
    assert done.returncode != 0
    [event] = topic.events
    assert event["eventType"] == "CCR.Trainer.Failed" and event["data"]["error_class"] == "KeyReleaseError"
    assert "HTTP 403" in event["data"]["message"]
    assert not stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id)).exists()
    assert "phase: join" not in done.stdout
