"""The inference workload inside the container, driven directly (`trainer_container.infer`), after
one training run of a contract whose inference slot names requesters and forbids the weights to
leave (`weights_leave: false`).

The training run keeps its model state inside (under the contract's state KEK) and gives the
TDC its metrics and privacy report only. An inference run then restores that state, never the
TDC's package, and scores a requester's batch: its predictions decrypt only with that
requester's output key and have exactly its rows. A batch of a party the contract does not name
as requester, or a bad batch, is refused with a clear error before any prediction, and nothing is
written."""
from __future__ import annotations

import io
import json
import secrets
import zipfile
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from local_emulator import covid_reference as covid_model
from orchestrations.deployment import trainer_keeps, trainer_reads
from shared import did as dids
from shared import inference_requests, key_grants, model_states, package, storage_names
from shared.blob_sas import trainer_blob_urls
from shared.container_group import policy_template_sha256
from shared.pipeline import JoinSpec
from tests.trainer.harness import (EVENT_KEY, TRAINER_IMAGE, EventGridTopic, KeyReleaseStandIn, Stage, environment,
                                   outcome)
from trainer_container import infer
from trainer_container import run as trainer_run

CONTRACT_ID = "covid-inference"
STATE_VAULT = "https://control.vault.test"
MAX_ROWS = 500
REQUESTER, OUTSIDER = "icmr", "cowin"   # a provider the contract names as requester; one it does not


def _raw_tables() -> dict[str, pd.DataFrame]:
    return {name: pd.read_csv(covid_model.COVID_DATA / file) for name, file in covid_model.RAW_FILES.items()}


@contextmanager
def _trainer_env(values: dict):
    with pytest.MonkeyPatch.context() as patch:
        for name, value in values.items():
            patch.setenv(name, value)
        yield


def _expiry() -> datetime:
    return datetime.now(timezone.utc) + timedelta(hours=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, azurite, did_host):
    """One training run of an inference contract (weights_leave false): (stage, signed, topic,
    outcome, the TDC's decrypted output zip members)."""
    stage = Stage(tmp_path_factory.mktemp("inference"), azurite, CONTRACT_ID, dids=did_host)
    for container in (storage_names.MODEL_STATES, storage_names.INFERENCE_BATCHES, storage_names.PREDICTIONS):
        if not stage.blobs.get_container_client(container).exists():
            stage.blobs.create_container(container)
    payload = stage.contract(_raw_tables(), covid_model.covid_training_config(epochs=1, batch_size=256),
                             covid_model.covid_join_spec())  # one short epoch: the model only has to exist
    payload["workloads"]["inference"] = {
        "image": TRAINER_IMAGE, "policy_template_sha256": policy_template_sha256(TRAINER_IMAGE, workload="inference"),
        "requesters": [stage.identities["tdc"].did, stage.identities[REQUESTER].did], "weights_leave": False,
        "deadline_seconds": 600, "max_rows": MAX_ROWS}
    signed = stage.sign(payload)
    state_kek = model_states.kek_name(signed.digest)
    stage.keks[state_kek] = rsa.generate_private_key(public_exponent=65537, key_size=key_grants.KEK_BITS)
    stage.kek_vaults[state_kek] = "control.vault.test"
    urls = trainer_blob_urls(stage.blobs, trainer_reads(payload, signed.digest),
                             storage_names.output_path(stage.run_id), _expiry(),
                             kept=trainer_keeps(payload, signed.digest, stage.run_id))
    topic, sidecar = EventGridTopic(EVENT_KEY).start(), KeyReleaseStandIn(stage.keks, stage.kek_vaults).start()
    try:
        env = {**environment(stage, sidecar, topic, signed), "CCR_BLOB_URLS": json.dumps(urls),
               "CCR_KEYVAULT_URL": STATE_VAULT}
        with _trainer_env(env):
            lines = []
            code = trainer_run.main(lines.append)
        assert code == 0, lines
        [event] = topic.events
        topic.events.clear()
        output = stage.blobs.get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(stage.run_id))
        encrypted = stage.tmp / "output.ccr"
        encrypted.write_bytes(output.download_blob().readall())
        package.decrypt_file(encrypted, stage.tmp / "output.zip", stage.output_key(signed))
        with zipfile.ZipFile(stage.tmp / "output.zip") as archive:
            members = {name: archive.read(name) for name in archive.namelist()}
        yield stage, signed, topic, outcome(event), members
    finally:
        sidecar.stop()
        topic.stop()


def test_weights_leave_false_gives_the_tdc_no_model_and_keeps_it_inside(trained):
    stage, signed, _, result, members = trained
    assert result["status"] == "succeeded"
    assert sorted(members) == ["metrics.json", "privacy.json"]           # no model.onnx at all
    assert json.loads(members["metrics.json"])["weights"].startswith("withheld")
    assert not any(b"onnx" in data.lower() and b"Gemm" in data for data in members.values())
    kept = stage.blobs.get_blob_client(*model_states.package_path(signed.digest, stage.run_id).split("/", 1))
    assert package.read_header(kept.download_blob().readall()).key_id == model_states.state_key_id(stage.run_id)
    assert len(result["model_state_sha256"]) == 64


# --- inference runs ----------------------------------------------------------------------

def _feature_columns() -> tuple[str, ...]:
    return JoinSpec.from_dict(covid_model.covid_join_spec()).feature_columns


def _batch_csv(rows: int, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({column: rng.integers(0, 3, rows).astype(float) for column in _feature_columns()})
    frame.insert(0, "row_id", [f"req-{seed}-{i}" for i in range(rows)])
    return frame


def _requester_keys(stage, signed, party: str) -> dict[str, bytes]:
    """The party grants its inference batch and output keys to the contract (as it would when
    signing): DEKs it keeps, KEKs in its vault."""
    keys = {}
    for subject in inference_requests.grant_subjects(signed.payload, stage.identities[party].did):
        stage.deks.setdefault(subject.key_id, secrets.token_bytes(key_grants.DEK_BYTES))
        stage.grant(signed, subject)
        keys[subject.key_id] = stage.deks[subject.key_id]
    return keys


def _upload_batch(stage, signed, party: str, frame: pd.DataFrame | bytes, name: str, key_id: str | None = None) -> str:
    """The party's encrypted batch under its own name; `key_id` another key than its inference key."""
    did = stage.identities[party].did
    key_id = key_id or inference_requests.key_id(CONTRACT_ID, did, inference_requests.INPUT)
    key = stage.deks.setdefault(key_id, secrets.token_bytes(key_grants.DEK_BYTES))
    plain = frame if isinstance(frame, bytes) else frame.to_csv(index=False).encode()
    encrypted = io.BytesIO()
    package.encrypt_stream(io.BytesIO(plain), encrypted, key, key_id, "text/csv", None)
    path = inference_requests.batch_path(dids.did_name(did), signed.digest, name)
    stage.blobs.get_blob_client(*path.split("/", 1)).upload_blob(encrypted.getvalue(), overwrite=True)
    return path


def _infer(stage, signed, topic, batch: str, requester_did: str) -> tuple[int, list[str], dict, KeyReleaseStandIn]:
    """The control plane's request for `batch` (as `requester_did`) and one inference run on it,
    in this process; (exit code, progress lines, attested outcome, the key-release stand-in)."""
    run_id = inference_requests.run_id(CONTRACT_ID, signed.digest, batch)
    request = inference_requests.request_path(signed.digest, run_id)
    stage.blobs.get_blob_client(*request.split("/", 1)).upload_blob(
        inference_requests.Request(batch, requester_did, stage.run_id).to_json(), overwrite=True)
    subjects = inference_requests.grant_subjects(signed.payload, requester_did)
    reads = [batch, request, *model_states.paths(signed.digest, stage.run_id),
             *(key_grants.grant_path(signed.digest, s.subject) for s in subjects)]
    urls = trainer_blob_urls(stage.blobs, reads, inference_requests.predictions_path(run_id), _expiry())
    sidecar = KeyReleaseStandIn(stage.keks, stage.kek_vaults).start()
    try:
        env = {**environment(stage, sidecar, topic, signed), "CCR_RUN_ID": run_id, "CCR_BLOB_URLS": json.dumps(urls),
               "CCR_KEYVAULT_URL": STATE_VAULT}
        with _trainer_env(env):
            lines = []
            code = infer.main(lines.append)
    finally:
        sidecar.stop()
    [event] = topic.events
    topic.events.clear()
    return code, lines, outcome(event), sidecar


def _predictions_blob(stage, run_id: str):
    return stage.blobs.get_blob_client(*inference_requests.predictions_path(run_id).split("/", 1))


def test_a_requesters_batch_gets_predictions_only_it_can_decrypt_with_exactly_its_rows(trained):
    stage, signed, topic, _, _ = trained
    keys = _requester_keys(stage, signed, REQUESTER)
    did = stage.identities[REQUESTER].did
    frame = _batch_csv(120)
    batch = _upload_batch(stage, signed, REQUESTER, frame, "first")
    code, lines, result, sidecar = _infer(stage, signed, topic, batch, did)
    assert code == 0, lines
    run_id = inference_requests.run_id(CONTRACT_ID, signed.digest, batch)
    assert result["status"] == "succeeded" and result["rows"] == 120 and result["workload"] == "inference"
    assert result["batch"] == batch and result["batch_commitment"] and result["privacy"]["epsilon"] == 0.0
    # the model the training run kept, restored inside: its digest is attested
    assert result["model_state_sha256"] == trained[3]["model_state_sha256"]
    encrypted = stage.tmp / "predictions.ccr"
    encrypted.write_bytes(_predictions_blob(stage, run_id).download_blob().readall())
    output_id = inference_requests.key_id(CONTRACT_ID, did, inference_requests.OUTPUT)
    assert package.read_header(encrypted.read_bytes()).key_id == output_id
    for other in (stage.output_key(signed), keys[inference_requests.key_id(CONTRACT_ID, did, "input")]):
        with pytest.raises(package.PackageError):  # not the TDC's output key, not the batch key
            package.decrypt_file(encrypted, stage.tmp / "wrong.csv", other)
    package.decrypt_file(encrypted, stage.tmp / "predictions.csv", keys[output_id])
    predictions = pd.read_csv(stage.tmp / "predictions.csv", dtype={"row_id": str})
    assert list(predictions.columns) == ["row_id", "probability", "label"]
    assert predictions["row_id"].tolist() == frame["row_id"].tolist()      # its rows, in its order, no other
    assert predictions["probability"].between(0, 1).all() and set(predictions["label"]) <= {0, 1}
    # keys released: the state KEK and this requester's two inference KEKs, nothing of the training's
    names = {r["kid"] for r in sidecar.requests}
    assert names == {model_states.kek_name(signed.digest),
                     *(key_grants.kek_name(signed.digest, s.subject)
                       for s in inference_requests.grant_subjects(signed.payload, did))}
    assert not any(str(value) in "\n".join(lines) for value in frame["row_id"][:20])


def test_a_batch_under_a_party_the_contract_does_not_name_is_refused_before_any_key(trained):
    stage, signed, topic, _, _ = trained
    batch = _upload_batch(stage, signed, OUTSIDER, _batch_csv(10), "probe")
    # the control plane would never ask; a request naming the outsider anyway is refused inside
    code, lines, result, sidecar = _infer(stage, signed, topic, batch, stage.identities[OUTSIDER].did)
    assert code != 0 and result["status"] == "failed" and result["error_class"] == "RequestError"
    assert result["message"] == "the batch's uploader is not a requester the contract names"
    assert sidecar.requests == [] and not result["data_read"]
    assert not _predictions_blob(stage, inference_requests.run_id(CONTRACT_ID, signed.digest, batch)).exists()
    assert inference_requests.requester(signed.payload, dids.did_name(stage.identities[OUTSIDER].did)) is None


def test_a_requester_naming_another_partys_batch_is_refused(trained):
    stage, signed, topic, _, _ = trained
    batch = _upload_batch(stage, signed, REQUESTER, _batch_csv(10, seed=5), "someone-elses")
    code, _, result, sidecar = _infer(stage, signed, topic, batch, stage.identities["tdc"].did)
    assert result["error_class"] == "RequestError" and sidecar.requests == []


@pytest.mark.parametrize("bad, message", [
    (lambda f: f.assign(target=1.0), "batch has column(s) the model does not take: target"),
    (lambda f: f.drop(columns=[_feature_columns()[0]]), f"batch has no column {_feature_columns()[0]}"),
    (lambda f: f.assign(**{_feature_columns()[1]: "yes"}), f"batch column {_feature_columns()[1]} must hold numbers only"),
    (lambda f: pd.concat([f] * 5, ignore_index=True), f"batch has more rows than the contract's max_rows ({MAX_ROWS})"),
])
def test_a_bad_batch_ends_with_a_clear_error_no_output_and_the_batch_kept(trained, bad, message):
    stage, signed, topic, _, _ = trained
    _requester_keys(stage, signed, REQUESTER)
    name = f"bad-{secrets.token_hex(3)}"
    batch = _upload_batch(stage, signed, REQUESTER, bad(_batch_csv(120, seed=7)), name)
    code, lines, result, _ = _infer(stage, signed, topic, batch, stage.identities[REQUESTER].did)
    assert code != 0 and result["error_class"] == "InferenceError" and result["message"].startswith(message), lines
    run_id = inference_requests.run_id(CONTRACT_ID, signed.digest, batch)
    assert not _predictions_blob(stage, run_id).exists()
    assert stage.blobs.get_blob_client(*batch.split("/", 1)).exists()     # nothing lost


def test_a_batch_under_another_key_is_refused_before_any_key(trained):
    stage, signed, topic, _, _ = trained
    batch = _upload_batch(stage, signed, REQUESTER, _batch_csv(10), "other-key", key_id="some-other-key")
    code, _, result, sidecar = _infer(stage, signed, topic, batch, stage.identities[REQUESTER].did)
    assert result["error_class"] == "InferenceError" and "inference key" in result["message"]
    assert sidecar.requests == []
