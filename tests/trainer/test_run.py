"""The trainer as the container runs it: a signed schema-2 contract whose envelope it verifies
against the measured digest (DID documents over HTTPS), encrypted inputs in Azurite, data keys
through per-contract grants whose KEKs come from the SKR sidecar API, the completion event to
an Event Grid topic."""
from __future__ import annotations

import base64
import copy
import json
import re
import uuid
import zipfile

import blake3
import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
from onnx import numpy_helper

from shared import key_grants, package, storage_names
from shared.pipeline import JoinSpec
from local_emulator import covid_reference as covid_model
from tests.trainer.harness import (VALIDATION_SPLIT, KeyReleaseStandIn, RequestRecorder, Stage, blob_urls, digest_of,
                                   environment, outcome, replace_payload, run_trainer_process)
from trainer_container import run as trainer_run
from trainer_container.join import join_datasets

CONTRACT_ID = "covid-test"
DIGEST_DIFFERS = ("the contract handed to the trainer is not the one its container policy was measured with "
                  "(CCR_CONTRACT_DIGEST differs)")


def raw_tables() -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(covid_model.COVID_DATA / file) for name, file in covid_model.RAW_FILES.items()}


@pytest.fixture
def stage_of(tmp_path, azurite, did_host):
    def make(contract_id: str, folder: str | None = None) -> Stage:
        where = tmp_path / folder if folder else tmp_path
        where.mkdir(exist_ok=True)
        return Stage(where, azurite, contract_id, dids=did_host)
    return make


@pytest.fixture
def tripwire():
    """Where blob URLs point when the trainer must download nothing: records every request."""
    server = RequestRecorder().start()
    yield server
    server.stop()


def tripwire_urls(tripwire, stage, signed) -> str:
    """CCR_BLOB_URLS with every blob of the run on the tripwire."""
    return json.dumps({path: f"{tripwire.url}/{path}" for path in blob_urls(stage, signed)})


def run_in_process(monkeypatch, stage, topic, signed, **extra_env):
    """(exit code, progress lines, the key-release stand-in) of `trainer_run.main` in this process."""
    sidecar = KeyReleaseStandIn(stage.keks, stage.kek_vaults).start()
    try:
        for name, value in {**environment(stage, sidecar, topic, signed), **extra_env}.items():
            monkeypatch.setenv(name, value)
        lines = []
        return trainer_run.main(lines.append), lines, sidecar
    finally:
        sidecar.stop()


def released(sidecar) -> list[str]:
    """The KEK names the trainer asked the sidecar for, in order."""
    return [r["kid"] for r in sidecar.requests]


def output_blob_exists(stage) -> bool:
    return stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id)).exists()


def assert_failed(code, lines, topic, stage, error_class: str, message: str) -> None:
    """A clear failure: the exit code, the last progress line and the one Failed event agree."""
    assert code != 0
    assert lines[-1] == f"failed: {error_class}: {message}"
    [event] = topic.events
    assert event["eventType"] == "CCR.Trainer.Failed"
    assert failure(event) == {"run_id": stage.run_id, "status": "failed", "error_class": error_class,
                             "message": message}
    assert not output_blob_exists(stage)


def failure(event) -> dict:
    """The attested failure outcome's run, status, error class and message."""
    return {k: outcome(event).get(k) for k in ("run_id", "status", "error_class", "message")}


def key_material(stage, *signed) -> list[str]:
    """Values no message may carry: data keys, KEK names, contract digests, SAS signatures."""
    values = ["sig="]
    for dek in stage.deks.values():
        values += [dek.hex(), base64.b64encode(dek).decode(), base64.urlsafe_b64encode(dek).decode().rstrip("=")]
    values += list(stage.keks)
    for contract in signed:
        values.append(contract.digest)
        values += [key_grants.kek_name(contract.digest, s.subject) for s in key_grants.subjects(contract.payload)]
    return values


def assert_names_no_value(text: str, values: list[str]) -> None:
    for value in values:
        assert value not in text


def test_covid_end_to_end_with_canaries(stage_of, tmp_path, topic):
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
    stage = stage_of(CONTRACT_ID)
    signed = stage.sign(stage.contract(tables, covid_model.covid_training_config(), covid_model.covid_join_spec()))
    sidecar = KeyReleaseStandIn(stage.keks, stage.kek_vaults).start()
    try:
        done = run_trainer_process(environment(stage, sidecar, topic, signed))
    finally:
        sidecar.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    assert not re.search(r"\b2119\b", done.stdout)  # the joined count is private
    assert [line for line in done.stdout.splitlines() if line.startswith("epoch")] == [
        f"epoch {e}/5 done" for e in range(1, 6)]  # no per-epoch value
    # every key came through its owner's grant to this contract: one KEK each, from the grantor's vault
    assert sorted((r["kid"], r["akv_endpoint"], r["maa_endpoint"]) for r in sidecar.requests) == sorted(
        (key_grants.kek_name(signed.digest, s.subject), s.key_vault.removeprefix("https://"), "maa.test")
        for s in key_grants.subjects(signed.payload))

    [event] = topic.events
    assert event["eventType"] == "CCR.Trainer.Completed" and event["subject"] == f"runs/{stage.run_id}"
    data = outcome(event)
    assert data["status"] == "succeeded" and data["privacy"]["epsilon"] <= 1.5
    assert "metrics_summary" not in data  # metrics travel only inside the encrypted output
    assert set(data["phase_seconds"]) >= {"contract", "join", "training", "evaluation", "output"}
    # one attested progress event per epoch: the epoch counter and the accountant's epsilon so far
    steps = [json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
             for p in (e["data"]["progress"].split(".")[1] for e in topic.progress)]
    assert [(s["statement"], s["run_id"], s["epoch"], s["epochs"]) for s in steps] == [
        ("progress", stage.run_id, e, 5) for e in range(1, 6)]
    assert {e["eventType"] for e in topic.progress} == {"CCR.Trainer.Progress"}
    assert len({e["data"]["attestation"] for e in topic.progress}) == 1  # one token for the run
    spent = [s["epsilon_spent"] for s in steps]
    assert 0 < spent[0] < spent[-1] <= data["privacy"]["epsilon"] and spent == sorted(spent)
    assert all(isinstance(seconds, int) for seconds in data["phase_seconds"].values())

    encrypted = stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id))
    assert data["output_blob"] == encrypted.url
    (tmp_path / "out.ccr").write_bytes(encrypted.download_blob().readall())
    manifest = package.decrypt_file(tmp_path / "out.ccr", tmp_path / "out.zip", stage.output_key(signed))
    assert manifest.blake3 == data["output_blake3"] and "output_sha256" not in data
    assert blake3.blake3((tmp_path / "out.zip").read_bytes()).hexdigest() == data["output_blake3"]
    with zipfile.ZipFile(tmp_path / "out.zip") as archive:
        assert sorted(archive.namelist()) == ["metrics.json", "model.onnx", "privacy.json"]
        contents = {name: archive.read(name) for name in archive.namelist()}
    metrics, privacy = json.loads(contents["metrics.json"]), json.loads(contents["privacy.json"])
    assert metrics["validation"]["accuracy"] >= 0.85 and privacy["epsilon"] <= 1.5
    assert "train_rows" not in privacy and "validation_rows" not in privacy and metrics["onnx_check"] == "passed"
    assert [m["mechanism"] for m in privacy["mechanisms"]] == [
        "joined_row_count", "scaling_statistics", "dp_sgd", "confusion_counts"]
    assert "public" in privacy["feature_scaling"]["bounds"]
    session = onnxruntime.InferenceSession(contents["model.onnx"], providers=["CPUExecutionProvider"])
    assert session.run(None, {"features": np.zeros((3, 10), np.float32)})[0].shape == (3, 1)
    assert_scaling_noise_is_secret(tmp_path, contents["model.onnx"])

    leaving = [done.stdout, done.stderr, *(b.decode() for b in topic.raw),
               *(c.decode("latin-1") for c in contents.values())]
    for canary in canaries:
        assert not any(canary in text for text in leaving)
    assert not any("sig=" in text for text in leaving)  # the SAS URLs never leave either
    assert not any(str(m) in done.stdout for m in list(mobiles)[:50])
    for value in key_material(stage):  # nor a data key or a KEK's name
        assert not any(value in text for text in leaving)


def assert_scaling_noise_is_secret(tmp_path, onnx_bytes):
    """The released scaling constants are not the exact statistics of any split: every one
    carries noise (the noise comes from a key the trainer drew from the OS, which nobody holds)."""
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(onnx_bytes).graph.initializer}
    released_mean = initializers["0.mean"]
    spec = JoinSpec.from_dict(covid_model.covid_join_spec())
    table = join_datasets(spec, {name: tmp_path / f"{name}.in" for name in covid_model.RAW_FILES})  # as staged
    rows = table.loc[:, list(spec.feature_columns)].to_numpy(dtype=np.float64)
    bounds = covid_model.covid_training_config()["feature_bounds"]
    half = np.array([high - low for low, high in map(bounds.get, spec.feature_columns)]) / 2
    exact = rows.mean(0)  # the training split's mean is within a few rows' worth of this
    assert not np.allclose(released_mean, exact, rtol=0, atol=1e-4)
    assert np.all(np.abs(released_mean - exact) < 5 * 13 * np.sqrt(21) / 1695 * half + 0.05 * half)


# ---------------------------------------------------------------- consent: refused before any key


def test_a_contract_other_than_the_measured_one_is_refused_before_any_key(stage_of, topic, tripwire, monkeypatch):
    """A deployer hands the trainer other terms (here a contract every party signed too, with a
    larger epsilon) than the digest its container policy was measured with."""
    stage = stage_of("covid-other-terms")
    payload = stage.contract(raw_tables(), covid_model.covid_training_config(), covid_model.covid_join_spec())
    measured = stage.sign(payload)
    other_terms = copy.deepcopy(payload)
    stage.ask(other_terms, 3.0)
    other = stage.sign(other_terms, grant=False)
    assert other.digest != measured.digest
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, measured, CCR_CONTRACT=other.envelope_b64,
                                          CCR_BLOB_URLS=tripwire_urls(tripwire, stage, measured))
    assert_failed(code, lines, topic, stage, "ConsentError", DIGEST_DIFFERS)
    assert sidecar.requests == [] and tripwire.requests == []  # no key asked for, nothing downloaded
    assert not any(line.startswith("phase: model") for line in lines)
    assert_names_no_value(DIGEST_DIFFERS, key_material(stage, measured, other))


def test_an_envelope_missing_a_providers_signature_is_refused_before_any_key(stage_of, topic, tripwire,
                                                                             monkeypatch):
    stage = stage_of("covid-unsigned-provider")
    payload = stage.contract(raw_tables(), covid_model.covid_training_config(), covid_model.covid_join_spec())
    signed = stage.sign(payload, parties=[party for party in stage.identities if party != "cowin"])
    assert signed.digest == digest_of(payload)  # the measured contract, lacking one signature
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed,
                                          CCR_BLOB_URLS=tripwire_urls(tripwire, stage, signed))
    message = f"the contract is not signed by every party: MissingSigner: not signed by {stage.identities['cowin'].did}"
    assert_failed(code, lines, topic, stage, "ConsentError", message)
    assert sidecar.requests == [] and tripwire.requests == []
    assert_names_no_value(message, key_material(stage, signed))


@pytest.mark.parametrize("measured", ["altered", "signed"])
def test_a_payload_altered_after_signing_is_refused_before_any_key(stage_of, topic, tripwire, monkeypatch, measured):
    """The TDC raises every epsilon in the signed envelope. Measured with the altered digest,
    the signatures do not match; measured with the signed one, the digest does not."""
    stage = stage_of(f"covid-altered-{measured}")
    payload = stage.contract(raw_tables(), covid_model.covid_training_config(), covid_model.covid_join_spec())
    signed = stage.sign(payload)
    altered = copy.deepcopy(payload)
    stage.ask(altered, 10.0)
    envelope = replace_payload(signed.envelope, altered)
    digest = digest_of(altered) if measured == "altered" else signed.digest
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed,
                                          CCR_CONTRACT=base64.b64encode(envelope).decode(),
                                          CCR_CONTRACT_DIGEST=digest,
                                          CCR_BLOB_URLS=tripwire_urls(tripwire, stage, signed))
    message = DIGEST_DIFFERS if measured == "signed" else (
        f"the contract is not signed by every party: BadSignature: signature by {stage.identities['tdc'].did} "
        "does not match the payload and its DID key (contract altered or signed with another key)")
    assert_failed(code, lines, topic, stage, "ConsentError", message)
    assert sidecar.requests == [] and tripwire.requests == []
    assert_names_no_value(message, key_material(stage, signed) + [digest_of(altered)])


# ---------------------------------------------------------------- terms and budget: refused before data


def test_budget_over_the_contract_fails_before_any_dataset_is_read(stage_of, topic, monkeypatch):
    stage = stage_of("covid-budget")
    signed = stage.sign(stage.contract(raw_tables(), covid_model.covid_training_config(epsilon=3.0),
                                       covid_model.covid_join_spec(), threshold=1.5))
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed)
    assert code != 0
    assert released(sidecar) == [stage.kek(signed, "model")]  # no dataset key
    assert not any(line.startswith("phase: datasets") for line in lines)
    [event] = topic.events
    assert event["eventType"] == "CCR.Trainer.Failed"
    assert outcome(event)["error_class"] == "PrivacyBudgetError" and "3.0" in outcome(event)["message"]
    assert not output_blob_exists(stage)


@pytest.mark.parametrize("config_epsilon", [1.5, 0.5])
def test_a_config_asking_another_epsilon_than_the_contract_is_refused_before_any_dataset_key(
        stage_of, topic, monkeypatch, config_epsilon):
    """The run's epsilon is the smallest the contract asks of a dataset (not a lifetime budget,
    here 5.0 for every dataset), reserved exactly: a config asking more, or less, is refused."""
    stage = stage_of(f"covid-asked-epsilon-{config_epsilon}")
    signed = stage.sign(stage.contract(raw_tables(), covid_model.covid_training_config(epsilon=config_epsilon),
                                       covid_model.covid_join_spec(), threshold=5.0, epsilon={"cowin": 1.0}))
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed)
    message = (f"training config asks for epsilon {config_epsilon}, the contract reserved 1.0 for this run: "
               "they must be equal")
    assert_failed(code, lines, topic, stage, "PrivacyBudgetError", message)
    assert released(sidecar) == [stage.kek(signed, "model")]  # the model's key only: no dataset key
    assert not any(line.startswith("phase: datasets") for line in lines)
    assert_names_no_value(message, key_material(stage, signed))


def test_dataset_digest_mismatch_fails_before_its_key_is_released(stage_of, topic, monkeypatch):
    stage = stage_of("covid-digest")
    payload = stage.contract(raw_tables(), covid_model.covid_training_config(), covid_model.covid_join_spec())
    cowin = payload["tdps"][1]["datasets"][0]
    cowin["blake3"] = blake3.blake3(b"another table").hexdigest()
    signed = stage.sign(payload)
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed)
    assert code != 0
    assert stage.kek(signed, "dataset cowin") not in released(sidecar)
    [event] = topic.events
    assert failure(event) == {"run_id": stage.run_id, "status": "failed", "error_class": "DigestMismatch",
                             "message": "cowin: package digest differs from the contract"}
    assert not output_blob_exists(stage)


def test_a_grant_naming_another_data_key_is_refused_before_its_kek_is_asked_for(stage_of, topic, monkeypatch):
    """icmr's grant to this contract, rewritten to wrap cowin's data key and say so."""
    stage = stage_of("covid-wrong-grant")
    signed = stage.sign(stage.contract(raw_tables(), covid_model.covid_training_config(),
                                       covid_model.covid_join_spec()))
    icmr, cowin = stage.subject(signed, "dataset icmr"), stage.subject(signed, "dataset cowin")
    stage.grant(signed, icmr, dek=stage.deks[cowin.key_id], key_id=cowin.key_id)
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed)
    message = "grant wraps another data key than the contract names"
    assert_failed(code, lines, topic, stage, "GrantError", message)
    assert stage.kek(signed, "dataset icmr") not in released(sidecar)
    assert stage.kek(signed, "output key") not in released(sidecar)
    assert not any(line.startswith("phase: join") for line in lines)
    assert_names_no_value(message, key_material(stage, signed) + [icmr.key_id, cowin.key_id])


def fixed_noise_count(offset: float):
    """trainer_container.run's noisy_count, charged as usual but with its noise fixed at
    `offset` (the real noise is secret and random: this pins which side of the threshold the
    noisy count falls)."""
    def count(n, noise_multiplier, noise, accountant):
        real_noisy_count(n, noise_multiplier, noise, accountant)
        return n + offset
    return count


real_noisy_count = trainer_run.noisy_count


def test_a_join_below_the_contracts_minimum_is_refused_with_one_message_whatever_the_count(stage_of, topic,
                                                                                           monkeypatch):
    """The decision is the noisy count's. Joins of 2119 rows just above (minimum 2118) and just
    below (2120) the threshold, whose noisy counts both fall under it, and one of 40 rows far
    below, give byte-identical refusals that carry no count; no output key is asked for."""
    monkeypatch.setattr(trainer_run, "noisy_count", fixed_noise_count(-3.0))
    outcomes, counts, progress = [], [], []
    cases = (("above", raw_tables(), 2118), ("below", raw_tables(), 2120),
             ("far", {**raw_tables(), "icmr": raw_tables()["icmr"].head(40)}, 2118))
    for folder, tables, minimum in cases:
        stage = stage_of(f"covid-min-rows-{folder}", folder)
        signed = stage.sign(stage.contract(tables, covid_model.covid_training_config(),
                                           covid_model.covid_join_spec(), min_joined_rows=minimum))
        topic.events.clear()
        code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed)
        message = f"the join has fewer rows than the contract's minimum ({minimum})"
        assert_failed(code, lines, topic, stage, "JoinError", message)
        assert "phase: join" in lines and stage.kek(signed, "output key") not in released(sidecar)
        spec = JoinSpec.from_dict(covid_model.covid_join_spec())
        counts.append(len(join_datasets(spec, {n: stage.tmp / f"{n}.in" for n in covid_model.RAW_FILES})))
        outcomes.append((minimum, lines[-1], outcome(topic.events[0])["message"], outcome(topic.events[0])["error_class"]))
        progress += lines
    assert counts == [2119, 2119, 40]
    assert outcomes[0] == outcomes[2]  # 2119 rows and 40 rows: the same bytes
    assert outcomes[0][1:] == tuple(text.replace("2120", "2118") for text in outcomes[1][1:])
    for count in (2119, 40, 2116, 37):  # nor the noisy counts
        assert not re.search(rf"\b{count}\b", json.dumps(outcomes))
        assert not any(re.search(rf"\b{count}\b", line) for line in progress)


def test_missing_join_column_fails_naming_it(stage_of, topic, monkeypatch):
    tables = raw_tables()
    tables["index"] = tables["index"].drop(columns=["potravel"])
    stage = stage_of("covid-column")
    signed = stage.sign(stage.contract(tables, covid_model.covid_training_config(), covid_model.covid_join_spec()))
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed)
    assert code != 0 and lines[-1] == "failed: JoinError: dataset index has no column potravel"
    assert outcome(topic.events[0])["message"] == "dataset index has no column potravel"
    assert not output_blob_exists(stage)


# ---------------------------------------------------------------- settings


def test_missing_settings_fail_with_a_clear_message(monkeypatch):
    monkeypatch.delenv("CCR_RUN_ID", raising=False)
    lines = []
    assert trainer_run.main(lines.append) != 0
    assert lines == ["failed: SettingsError: environment variable CCR_RUN_ID is not set"]


def test_a_blob_without_a_sas_url_fails_before_anything_is_read(stage_of, topic, monkeypatch):
    stage = stage_of("covid-no-url")
    signed = stage.sign(stage.contract(raw_tables(), covid_model.covid_training_config(),
                                       covid_model.covid_join_spec()))
    urls, model = blob_urls(stage, signed), signed.payload["tdc"]["model"]["blob"]
    del urls[model]
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed, CCR_BLOB_URLS=json.dumps(urls))
    assert code != 0
    assert lines[-1] == f"failed: SettingsError: CCR_BLOB_URLS has no URL for blob {model}"
    assert sidecar.requests == []  # no key asked for
    assert outcome(topic.events[0])["error_class"] == "SettingsError"
    assert not output_blob_exists(stage)


VALID_SETTINGS = {"CCR_RUN_ID": "run-0123456789abcdef", "CCR_CONTRACT": base64.b64encode(b"an envelope").decode(),
                  "CCR_CONTRACT_DIGEST": "0" * 64, "CCR_BLOB_URLS": "{}", "CCR_SKR_URL": "http://127.0.0.1:9",
                  "CCR_MAA_URL": "https://maa.test", "CCR_RUN_NONCE": "0" * 32}


@pytest.mark.parametrize("value", ["not json", '["a list"]', '{"datasets/x.ccr": 1}'])
def test_malformed_blob_urls_are_a_clear_settings_error(monkeypatch, value):
    for name, setting in {**VALID_SETTINGS, "CCR_BLOB_URLS": value}.items():
        monkeypatch.setenv(name, setting)
    lines = []
    assert trainer_run.main(lines.append) == 2
    assert lines == ["failed: SettingsError: CCR_BLOB_URLS is not a JSON object of blob paths to URLs"]


@pytest.mark.parametrize("name, value, message", [
    ("CCR_CONTRACT", '{"contract_id": "c"}', "CCR_CONTRACT is not base64 of a contract envelope"),
    ("CCR_CONTRACT_DIGEST", "ABC", "CCR_CONTRACT_DIGEST is not a sha256 hex digest"),
    ("CCR_CONTRACT_DIGEST", "", "environment variable CCR_CONTRACT_DIGEST is not set"),
])
def test_a_malformed_contract_or_digest_is_a_clear_settings_error(monkeypatch, name, value, message):
    for setting, text in {**VALID_SETTINGS, name: value}.items():
        monkeypatch.setenv(setting, text)
    lines = []
    assert trainer_run.main(lines.append) == 2
    assert lines == [f"failed: SettingsError: {message}"]


def test_missing_feature_bounds_fail_before_any_dataset_is_read(stage_of, topic, monkeypatch):
    stage = stage_of("covid-bounds")
    training = covid_model.covid_training_config()
    del training["feature_bounds"]["age"], training["feature_bounds"]["labcode"]
    signed = stage.sign(stage.contract(raw_tables(), training, covid_model.covid_join_spec()))
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed)
    assert code != 0
    assert lines[-1] == "failed: PipelineConfigError: feature_bounds has no bounds for feature column(s) age, labcode"
    assert released(sidecar) == [stage.kek(signed, "model")]  # no dataset key
    assert not any(line.startswith("phase: datasets") for line in lines)
    assert outcome(topic.events[0])["error_class"] == "PipelineConfigError"
    assert not output_blob_exists(stage)


def test_a_config_carrying_the_validation_split_is_refused_before_any_dataset_is_read(stage_of, topic, monkeypatch):
    """The split is a contract term (evaluation.validation_split): the TDC cannot choose it."""
    stage = stage_of("covid-config-split")
    signed = stage.sign(stage.contract(raw_tables(), covid_model.covid_training_config(validation_split=0.5),
                                       covid_model.covid_join_spec()))
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed)
    assert code != 0 and lines[-1].startswith("failed: PipelineConfigError: validation_split is a term of the contract")
    assert released(sidecar) == [stage.kek(signed, "model")]
    assert outcome(topic.events[0])["error_class"] == "PipelineConfigError"
    assert not output_blob_exists(stage)


def test_epsilon_below_the_scaling_statistics_cost_fails_before_any_dataset_is_read(stage_of, topic, monkeypatch):
    stage = stage_of("covid-tiny-epsilon")
    signed = stage.sign(stage.contract(raw_tables(), covid_model.covid_training_config(epsilon=0.0001),
                                       covid_model.covid_join_spec(), epsilon=0.0001))
    code, lines, sidecar = run_in_process(monkeypatch, stage, topic, signed)
    assert code != 0 and "epsilon 0.0001 is too small to release even the row count, scaling statistics" in lines[-1]
    assert released(sidecar) == [stage.kek(signed, "model")]
    assert outcome(topic.events[0])["error_class"] == "PrivacyBudgetError"
    assert not output_blob_exists(stage)


def test_the_runs_delta_is_capped_from_the_noisy_count(stage_of, topic, monkeypatch):
    """Delta 1e-2 in the contract: the run's delta is 1 / (estimated training rows), the estimate
    from the noisy count (here pinned at n + 1), and the fixed mechanisms' noise is chosen again
    at that delta so that the total still fits a target of 0.1."""
    monkeypatch.setattr(trainer_run, "noisy_count", fixed_noise_count(1.0))
    stage = stage_of("covid-loose-delta")
    signed = stage.sign(stage.contract(raw_tables(), covid_model.covid_training_config(epsilon=0.1, epochs=1),
                                       covid_model.covid_join_spec(), epsilon=0.1, delta=1e-2))
    code, lines, _ = run_in_process(monkeypatch, stage, topic, signed)
    assert code == 0, lines[-1]
    privacy = outcome(topic.events[0])["privacy"]
    assert privacy["delta"] == pytest.approx(1 / (2120 * (1 - VALIDATION_SPLIT))) and privacy["epsilon"] <= 0.1
