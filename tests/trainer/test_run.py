"""The trainer as the container runs it: encrypted inputs in Azurite, keys through the SKR
sidecar API, the completion event to an Event Grid topic."""
from __future__ import annotations

import hashlib
import json
import uuid
import zipfile

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
from onnx import numpy_helper

from shared import package, storage_names
from shared.pipeline import JoinSpec
from local_emulator import covid_reference as covid_model
from tests.trainer.harness import KeyReleaseStandIn, Stage, blob_urls, environment, run_trainer_process
from trainer_container import run as trainer_run
from trainer_container.dp_sgd import STATISTICS_NOISE_MULTIPLIER, noise_generator
from trainer_container.features import split_and_scale
from trainer_container.join import join_datasets

CONTRACT_ID = "covid-test"


def raw_tables() -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(covid_model.COVID_DATA / file) for name, file in covid_model.RAW_FILES.items()}


def run_in_process(monkeypatch, stage, topic, contract, **extra_env):
    """(exit code, progress lines, the key-release stand-in) of `trainer_run.main` in this process."""
    sidecar = KeyReleaseStandIn(stage.keys).start()
    try:
        for name, value in {**environment(stage, sidecar, topic, contract), **extra_env}.items():
            monkeypatch.setenv(name, value)
        lines = []
        return trainer_run.main(lines.append), lines, sidecar
    finally:
        sidecar.stop()


def output_blob_exists(stage) -> bool:
    return stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id)).exists()


def test_covid_end_to_end_with_canaries(tmp_path, azurite, topic):
    """Planted identifiers (join keys, names, ids) must not appear anywhere that leaves."""
    tables, canaries = raw_tables(), []
    mobiles = tables["icmr"]["icmr_patient_mobilenumber"]
    pseudonyms = {m: f"CANARYKEY{uuid.uuid4().hex}" for m in mobiles}
    canaries += list(pseudonyms.values())[:50]
    for name, key in covid_model.RAW_JOIN_KEYS.items():
        tables[name][key] = tables[name][key].map(pseudonyms)
    for name, column in (("cowin", "beneficiary_name"), ("index", "pname"), ("icmr", "srfnumber")):
        marks = [f"CANARY{name}{uuid.uuid4().hex}" for _ in range(len(tables[name]))]
        tables[name][column] = marks
        canaries += marks[:50]
    stage = Stage(tmp_path, azurite, CONTRACT_ID)
    contract = stage.contract(tables, covid_model.covid_training_config(), covid_model.covid_join_spec())
    sidecar = KeyReleaseStandIn(stage.keys).start()
    try:
        done = run_trainer_process(environment(stage, sidecar, topic, contract))
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "joined 2119 rows: 1695 training, 424 validation, 10 features" in done.stdout
    assert sum("epoch" in line and "epsilon" in line for line in done.stdout.splitlines()) == 5

    [event] = topic.events
    assert event["eventType"] == "CCR.Trainer.Completed" and event["subject"] == f"runs/{stage.run_id}"
    data = event["data"]
    assert data["status"] == "succeeded" and data["privacy"]["epsilon"] <= 1.5
    assert data["metrics_summary"]["accuracy"] >= 0.85

    encrypted = stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id))
    assert data["output_blob"] == encrypted.url
    (tmp_path / "out.ccr").write_bytes(encrypted.download_blob().readall())
    output_key = stage.keys[contract["tdc"]["output"]["key_kid"]]
    manifest = package.decrypt_file(tmp_path / "out.ccr", tmp_path / "out.zip", output_key)
    assert manifest.sha256 == data["output_sha256"]
    assert hashlib.sha256((tmp_path / "out.zip").read_bytes()).hexdigest() == data["output_sha256"]
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert sorted(archive.namelist()) == ["metrics.json", "model.onnx", "privacy.json"]
        contents = {name: archive.read(name) for name in archive.namelist()}
    metrics, privacy = json.loads(contents["metrics.json"]), json.loads(contents["privacy.json"])
    assert metrics["validation"]["accuracy"] >= 0.85 and privacy["epsilon"] <= 1.5
    assert privacy["train_rows"] == 1695 and privacy["validation_rows"] == 424
    assert privacy["feature_scaling"]["noise_multiplier"] == 6.0 and "public" in privacy["feature_scaling"]["bounds"]
    session = onnxruntime.InferenceSession(contents["model.onnx"], providers=["CPUExecutionProvider"])
    assert session.run(None, {"features": np.zeros((3, 10), np.float32)})[0].shape == (3, 1)
    assert_scaling_noise_is_secret(tmp_path, contents["model.onnx"])

    leaving = [done.stdout, done.stderr, *(b.decode() for b in topic.raw),
               *(c.decode("latin-1") for c in contents.values())]
    for canary in canaries:
        assert not any(canary in text for text in leaving)
    assert not any("sig=" in text for text in leaving)  # the SAS URLs never leave either
    assert not any(str(m) in done.stdout for m in list(mobiles)[:50])


def assert_scaling_noise_is_secret(tmp_path, onnx_bytes):
    """The released scaling constants are neither the exact statistics nor what the TDC could
    recompute: the noise is not derived from the training config's seed, which the TDC chose."""
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(onnx_bytes).graph.initializer}
    released = initializers["0.mean"]
    spec = JoinSpec.from_dict(covid_model.covid_join_spec())
    table = join_datasets(spec, {name: tmp_path / f"{name}.in" for name in covid_model.RAW_FILES})  # as staged
    config = covid_model.covid_training_config()
    for seed in range(config["seed"] - 2, config["seed"] + 3):
        guess = split_and_scale(table, spec.feature_columns, spec.target, config["validation_split"], config["seed"],
                                config["feature_bounds"], noise_generator(seed),
                                STATISTICS_NOISE_MULTIPLIER).standardizer
        assert not np.allclose(released, guess.mean, rtol=0, atol=1e-4)
    rows = table.loc[:, list(spec.feature_columns)].to_numpy(dtype=np.float64)
    exact = rows[np.random.default_rng(config["seed"]).permutation(len(rows))[424:]].mean(0)  # the training split
    assert not np.allclose(released, exact, rtol=0, atol=1e-4)
    half = np.array([high - low for low, high in map(config["feature_bounds"].get, spec.feature_columns)]) / 2
    assert np.all(np.abs(released - exact) < 5 * 6.0 * np.sqrt(20) / 1695 * half)  # noise of the mechanism's scale


def test_budget_over_the_contract_fails_before_any_dataset_is_read(tmp_path, azurite, topic, monkeypatch):
    stage = Stage(tmp_path, azurite, "covid-budget")
    contract = stage.contract(raw_tables(), covid_model.covid_training_config(epsilon=3.0),
                              covid_model.covid_join_spec(), threshold=1.5)
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, contract)
    assert code != 0
    assert [r["kid"] for r in sidecar.requests] == [contract["tdc"]["model"]["key_kid"]]  # no dataset key
    assert not any(line.startswith("phase: datasets") for line in lines)
    [event] = topic.events
    assert event["eventType"] == "CCR.Trainer.Failed"
    assert event["data"]["error_class"] == "PrivacyBudgetError" and "3.0" in event["data"]["message"]
    assert not output_blob_exists(stage)


def test_dataset_digest_mismatch_fails_before_its_key_is_released(tmp_path, azurite, topic, monkeypatch):
    stage = Stage(tmp_path, azurite, "covid-digest")
    contract = stage.contract(raw_tables(), covid_model.covid_training_config(), covid_model.covid_join_spec())
    cowin = contract["tdps"][1]["datasets"][0]
    cowin["sha256"] = hashlib.sha256(b"another table").hexdigest()
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, contract)
    assert code != 0
    assert cowin["key_kid"] not in [r["kid"] for r in sidecar.requests]
    [event] = topic.events
    assert event["data"] == {"run_id": stage.run_id, "status": "failed", "error_class": "DigestMismatch",
                             "message": "cowin: package digest differs from the contract"}
    assert not output_blob_exists(stage)


def test_missing_join_column_fails_naming_it(tmp_path, azurite, topic, monkeypatch):
    tables = raw_tables()
    tables["index"] = tables["index"].drop(columns=["potravel"])
    stage = Stage(tmp_path, azurite, "covid-column")
    contract = stage.contract(tables, covid_model.covid_training_config(), covid_model.covid_join_spec())
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, contract)
    assert code != 0 and lines[-1] == "failed: JoinError: dataset index has no column potravel"
    assert topic.events[0]["data"]["message"] == "dataset index has no column potravel"
    assert not output_blob_exists(stage)


def test_missing_settings_fail_with_a_clear_message(monkeypatch):
    monkeypatch.delenv("CCR_RUN_ID", raising=False)
    lines = []
    assert trainer_run.main(lines.append) != 0
    assert lines == ["failed: SettingsError: environment variable CCR_RUN_ID is not set"]


def test_remaining_budget_below_the_ask_fails_before_any_dataset_is_read(tmp_path, azurite, topic, monkeypatch):
    stage = Stage(tmp_path, azurite, "covid-remaining")
    contract = stage.contract(raw_tables(), covid_model.covid_training_config(epsilon=1.5),
                              covid_model.covid_join_spec(), threshold=1.5)
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, contract, CCR_EPSILON_BUDGET="0.4")
    assert code != 0 and "remaining budget is 0.4" in lines[-1]
    assert [r["kid"] for r in sidecar.requests] == [contract["tdc"]["model"]["key_kid"]]
    assert topic.events[0]["data"]["error_class"] == "PrivacyBudgetError"


def test_a_blob_without_a_sas_url_fails_before_anything_is_read(tmp_path, azurite, topic, monkeypatch):
    stage = Stage(tmp_path, azurite, "covid-no-url")
    contract = stage.contract(raw_tables(), covid_model.covid_training_config(), covid_model.covid_join_spec())
    urls = blob_urls(stage, contract)
    del urls[contract["tdc"]["model"]["blob"]]
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, contract, CCR_BLOB_URLS=json.dumps(urls))
    assert code != 0
    assert lines[-1] == f"failed: SettingsError: CCR_BLOB_URLS has no URL for blob {contract['tdc']['model']['blob']}"
    assert sidecar.requests == []  # no key asked for
    assert topic.events[0]["data"]["error_class"] == "SettingsError"
    assert not output_blob_exists(stage)


@pytest.mark.parametrize("value", ["not json", '["a list"]', '{"datasets/x.ccr": 1}'])
def test_malformed_blob_urls_are_a_clear_settings_error(monkeypatch, value):
    for name, setting in {"CCR_RUN_ID": "run-0123456789abcdef", "CCR_CONTRACT": "{}", "CCR_BLOB_URLS": value,
                          "CCR_SKR_URL": "http://127.0.0.1:9", "CCR_MAA_URL": "https://maa.test"}.items():
        monkeypatch.setenv(name, setting)
    lines = []
    assert trainer_run.main(lines.append) == 2
    assert lines == ["failed: SettingsError: CCR_BLOB_URLS is not a JSON object of blob paths to URLs"]


def test_missing_feature_bounds_fail_before_any_dataset_is_read(tmp_path, azurite, topic, monkeypatch):
    stage = Stage(tmp_path, azurite, "covid-bounds")
    training = covid_model.covid_training_config()
    del training["feature_bounds"]["age"], training["feature_bounds"]["labcode"]
    contract = stage.contract(raw_tables(), training, covid_model.covid_join_spec())
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, contract)
    assert code != 0
    assert lines[-1] == "failed: PipelineConfigError: feature_bounds has no bounds for feature column(s) age, labcode"
    assert [r["kid"] for r in sidecar.requests] == [contract["tdc"]["model"]["key_kid"]]  # no dataset key
    assert not any(line.startswith("phase: datasets") for line in lines)
    assert topic.events[0]["data"]["error_class"] == "PipelineConfigError"
    assert not output_blob_exists(stage)


def test_epsilon_below_the_scaling_statistics_cost_fails_before_any_dataset_is_read(tmp_path, azurite, topic,
                                                                                     monkeypatch):
    stage = Stage(tmp_path, azurite, "covid-tiny-epsilon")
    contract = stage.contract(raw_tables(), covid_model.covid_training_config(epsilon=0.0001),
                              covid_model.covid_join_spec())
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, contract)
    assert code != 0 and "epsilon 0.0001 is too small to release even the feature scaling statistics" in lines[-1]
    assert [r["kid"] for r in sidecar.requests] == [contract["tdc"]["model"]["key_kid"]]
    assert topic.events[0]["data"]["error_class"] == "PrivacyBudgetError"
    assert not output_blob_exists(stage)


def test_statistics_noise_is_chosen_at_the_runs_delta_not_the_contracts(tmp_path, azurite, topic, monkeypatch):
    """Delta 1e-2 in the contract, 1/1695 for the run: noise chosen at 1e-2 (24) would spend
    0.09 of a 0.1 target at the run's delta, leaving DP-SGD nothing; chosen at 1/1695 it fits."""
    stage = Stage(tmp_path, azurite, "covid-loose-delta")
    contract = stage.contract(raw_tables(), covid_model.covid_training_config(epsilon=0.1, epochs=1),
                              covid_model.covid_join_spec())
    contract["privacy"]["delta"] = 1e-2
    code, lines, _ = run_in_process(monkeypatch, stage, topic, contract)
    assert code == 0, lines[-1]
    privacy = topic.events[0]["data"]["privacy"]
    assert privacy["delta"] == pytest.approx(1 / 1695) and privacy["epsilon"] <= 0.1
    assert privacy["feature_scaling"]["noise_multiplier"] == 48.0

