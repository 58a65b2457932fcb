"""The `ccr` tool: help everywhere, one clear line and a non-zero exit for every bad argument
(with nothing uploaded or imported), and the publish / fetch paths against Azurite and the
Key Vault twin through the official SDK clients."""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from azure.keyvault.keys import KeyClient

from ccr.cli import _user_error, main
from shared import azure_clients, package, storage_names
from shared.container_group import trainer_hostdata
from shared.credentials import StaticTokenCredential
from shared.release_policy import build_release_policy
from local_emulator import covid_reference as covid_model
from tests.parties.conftest import MAA_URL

ROOT = Path(__file__).resolve().parents[2]
COVID = covid_model.COVID_DATA
IMAGE = "ccr-trainer@sha256:" + "ab" * 32
HOSTDATA = "cd" * 32


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


COMMANDS = [[], ["tdp"], ["tdp", "prepare"], ["tdp", "pseudonym-key"], ["tdp", "publish"], ["tdc"],
            ["tdc", "publish-model"], ["tdc", "fetch"], ["keys"], ["keys", "policy"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "ccr")
def test_every_command_has_help(capsys, command):
    code, out, _ = run(capsys, *command, "--help")
    assert code == 0 and out.startswith(f"usage: ccr {' '.join(command)}".rstrip())


@pytest.fixture
def key_file(tmp_path) -> Path:
    path = tmp_path / "pseudonym.key"
    path.write_text("5a" * 32 + "\n")
    return path


def test_prepare_and_pseudonym_key(capsys, tmp_path, key_file):
    code, out, _ = run(capsys, "tdp", "pseudonym-key", "--output", str(tmp_path / "shared.key"))
    assert code == 0 and stat.S_IMODE((tmp_path / "shared.key").stat().st_mode) == 0o600
    assert len(bytes.fromhex((tmp_path / "shared.key").read_text())) == 32
    code, _, err = run(capsys, "tdp", "pseudonym-key", "--output", str(tmp_path / "shared.key"))
    assert code == 1 and "never overwritten" in err
    code, out, _ = run(capsys, "tdp", "prepare", "--config", str(ROOT / "configs/covid/cowin.json"),
                       "--input", str(COVID / "poc_data_cowin_data.csv"), "--output", str(tmp_path / "cowin.csv"),
                       "--pseudonym-key-file", str(tmp_path / "shared.key"))
    result = json.loads(out)
    assert code == 0 and result["rows"] == 2119 and result["columns"] == ["pseudonym", "age", "gender", "vaccine_name"]
    assert (tmp_path / "cowin.csv").read_text().count("\n") == 2120


def _write_inputs(tmp: Path) -> None:
    (tmp / "bad.onnx").write_bytes(b"not onnx")
    (tmp / "model.onnx").write_bytes(covid_model.covid_onnx())
    (tmp / "hinge.json").write_text(json.dumps(covid_model.covid_training_config(loss="hinge")))
    (tmp / "training.json").write_text(json.dumps(covid_model.covid_training_config()))
    (tmp / "short.key").write_text("00" * 8)
    (tmp / "table.csv").write_text("pseudonym,age\nab,3\n")


def _bad_cases(tmp: Path, key_file: Path) -> dict[str, tuple[list[str], str]]:
    prepare = ["tdp", "prepare", "--config", str(ROOT / "configs/covid/icmr.json"),
               "--input", str(COVID / "poc_data_icmr_data.csv"), "--output", str(tmp / "out.csv")]
    publish = ["tdp", "publish", "--input", str(tmp / "table.csv"), "--contract-id", "c1", "--dataset", "icmr"]
    model = ["tdc", "publish-model", "--model", str(tmp / "model.onnx"), "--training", str(tmp / "training.json"),
             "--contract-id", "c1", "--trainer-image", IMAGE]
    return {
        "config missing": (["tdp", "prepare", "--config", str(tmp / "none.json")] + prepare[4:]
                           + ["--pseudonym-key-file", str(key_file)], "config file not found"),
        "no pseudonym key": (prepare, "no pseudonym key"),
        "short pseudonym key": (prepare + ["--pseudonym-key-file", str(tmp / "short.key")], "at least 32 bytes"),
        "unreadable key file": (prepare + ["--pseudonym-key-file", str(tmp / "nope.key")], "cannot read"),
        "output directory missing": (prepare[:-1] + [str(tmp / "no/dir/out.csv"), "--pseudonym-key-file",
                                                     str(key_file)], "does not exist"),
        "input missing": (prepare[:5] + [str(tmp / "none.csv")] + prepare[6:] + ["--pseudonym-key-file",
                                                                              str(key_file)], "input file not found"),
        "bad hostdata": (publish + ["--hostdata", "xyz"], "hostdata must be"),
        "bad hostdata file": (publish + ["--hostdata-file", str(tmp / "none.txt")], "--hostdata-file"),
        "bad trainer image": (publish + ["--trainer-image", "nginx:latest"], "--trainer-image"),
        "bad contract id": (publish[:5] + ["../x"] + publish[6:] + ["--hostdata", HOSTDATA], "--contract-id"),
        "bad dataset": (publish[:7] + ["a/b"] + ["--hostdata", HOSTDATA], "--dataset"),
        "publish input missing": (["tdp", "publish", "--input", str(tmp / "none.csv")] + publish[4:]
                                  + ["--hostdata", HOSTDATA], "--input"),
        "bad key name": (publish + ["--hostdata", HOSTDATA, "--key-name", "no_underscores"], "--key-name"),
        "invalid onnx": (model[:3] + [str(tmp / "bad.onnx")] + model[4:], "not a valid ONNX model"),
        "training loss not allowed": (model[:5] + [str(tmp / "hinge.json")] + model[6:], "loss must be one of"),
        "same key names": (model + ["--model-key-name", "k1", "--output-key-name", "k1"], "different names"),
        "bad run id": (["tdc", "fetch", "--run-id", "a/../b", "--output", str(tmp / "o.zip")], "--run-id"),
        "fetch output directory missing": (["tdc", "fetch", "--run-id", "r1", "--output",
                                            str(tmp / "no/o.zip")], "does not exist"),
    }


BAD_CASES = sorted(_bad_cases(Path("/nonexistent"), Path("/nonexistent")))


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_arguments_fail_cleanly_before_any_service_call(capsys, tmp_path, key_file, no_services, case):
    _write_inputs(tmp_path)
    argv, expected = _bad_cases(tmp_path, key_file)[case]
    before = set(os.listdir(tmp_path))
    code, out, err = run(capsys, *argv)
    assert code == 1 and out == ""
    assert err.startswith("ccr: error: ") and expected in err and err.count("\n") == 1, err
    assert "cannot reach" not in err  # refused before contacting Storage or Key Vault
    assert set(os.listdir(tmp_path)) == before  # nothing written (no key file, no output)


def test_missing_authority_and_required_pin(capsys, monkeypatch, no_services):
    monkeypatch.delenv("CCR_MAA_URL")
    code, _, err = run(capsys, "keys", "policy", "--hostdata", HOSTDATA)
    assert code == 1 and "no attestation authority" in err
    code, _, err = run(capsys, "keys", "policy")
    assert code == 2 and "one of the arguments --trainer-image --hostdata --hostdata-file is required" in err


def test_keys_policy_pins_the_trainer(capsys, no_services):
    code, out, _ = run(capsys, "keys", "policy", "--trainer-image", IMAGE)
    assert code == 0 and json.loads(out) == build_release_policy(MAA_URL, trainer_hostdata(IMAGE))


def test_user_errors_never_show_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ccr", "tdp", "prepare", "--config", str(tmp_path / "none.json"),
                             "--input", "x.csv", "--output", str(tmp_path / "o.csv")],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"ccr: error: {tmp_path / 'none.json'}: config file not found"


def test_unreachable_service_errors_never_show_a_sas_signature():
    from azure.core.exceptions import ServiceRequestError
    error = ServiceRequestError("HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
                                "/devstoreaccount1/datasets/c/icmr.ccr?sv=2021-08-06&sig=c2VjcmV0%2Bc2ln&se=x")
    message = _user_error(error)
    assert message.startswith("cannot reach the service: ") and "/datasets/c/icmr.ccr?sv=2021-08-06" in message
    assert "c2VjcmV0" not in message and "sig=<redacted>&se=x" in message


# --- against Azurite and the Key Vault twin ------------------------------------------------

def _vault_key(vault, name: str) -> bytes:
    """The key material as the twin stored it (test-only view: real Key Vault never shows it)."""
    record = vault.store.get(name, None)
    encoded = record["material"]["k"]
    return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))


def _stored_key(vault, name: str):
    """The key as Key Vault's SDK reads it back (public view and properties)."""
    with KeyClient(vault.url, StaticTokenCredential(vault.token), verify_challenge_resource=False,
                   connection_verify=vault.ca_path) as client:
        return client.get_key(name)


def _download(blob_path: str, destination: Path) -> None:
    container, name = blob_path.split("/", 1)
    with open(destination, "wb") as out:
        azure_clients.blob_service().get_blob_client(container, name).download_blob().readinto(out)


def test_tdp_publish_encrypts_uploads_and_imports_a_bound_key(capsys, tmp_path, key_file, services, vault):
    prepared = tmp_path / "icmr.csv"
    assert run(capsys, "tdp", "prepare", "--config", str(ROOT / "configs/covid/icmr.json"), "--input",
               str(COVID / "poc_data_icmr_data.csv"), "--output", str(prepared),
               "--pseudonym-key-file", str(key_file))[0] == 0
    code, out, err = run(capsys, "tdp", "publish", "--input", str(prepared), "--contract-id", "covid-1",
                         "--dataset", "icmr", "--trainer-image", IMAGE)
    assert code == 0, err
    result = json.loads(out)
    assert result["blob"] == f"{storage_names.DATASETS}/{storage_names.dataset_blob('covid-1', 'icmr')}"
    assert result["sha256"] == hashlib.sha256(prepared.read_bytes()).hexdigest()
    _download(result["blob"], tmp_path / "icmr.ccr")
    header = package.read_header((tmp_path / "icmr.ccr").read_bytes())
    assert header.key_id == result["key_kid"] and header.manifest.sha256 == result["sha256"]
    assert header.manifest.schema["columns"][0] == "pseudonym"
    stored = _stored_key(vault, "covid-1-icmr")
    assert stored.id == result["key_kid"] and stored.key_type == "oct-HSM"
    assert stored.properties.exportable is True
    policy = json.loads(stored.properties.release_policy.encoded_policy)
    assert policy == build_release_policy(MAA_URL, trainer_hostdata(IMAGE))
    key = _vault_key(vault, "covid-1-icmr")
    for text in (out, err):
        assert key.hex() not in text and base64.urlsafe_b64encode(key).decode().rstrip("=") not in text
    package.decrypt_file(tmp_path / "icmr.ccr", tmp_path / "plain.csv", key)
    assert (tmp_path / "plain.csv").read_bytes() == prepared.read_bytes()


def test_refused_publish_imports_and_uploads_nothing(capsys, tmp_path, services, vault):
    (tmp_path / "t.csv").write_text("pseudonym,age\nab,3\n")
    keys_before = vault.store.names()
    code, _, err = run(capsys, "tdp", "publish", "--input", str(tmp_path / "t.csv"), "--contract-id", "refused",
                       "--dataset", "icmr", "--hostdata", "00")
    assert code == 1 and "hostdata" in err
    assert vault.store.names() == keys_before
    blobs = azure_clients.blob_service().get_container_client(storage_names.DATASETS)
    assert not blobs.exists() or not list(blobs.list_blobs(name_starts_with="refused/"))


def test_tdc_publish_model_then_fetch_output(capsys, tmp_path, services, vault):
    (tmp_path / "model.onnx").write_bytes(covid_model.covid_onnx())
    (tmp_path / "training.json").write_text(json.dumps(covid_model.covid_training_config()))
    code, out, err = run(capsys, "tdc", "publish-model", "--model", str(tmp_path / "model.onnx"),
                         "--training", str(tmp_path / "training.json"), "--contract-id", "covid-2",
                         "--hostdata", HOSTDATA)
    assert code == 0, err
    result = json.loads(out)
    key_file = Path(result["output_key_file"])
    assert key_file.parent == tmp_path / "keys" and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert json.loads(key_file.read_text())["kid"] == result["output_key_kid"]
    output_key = bytes.fromhex(json.loads(key_file.read_text())["k"])
    assert output_key == _vault_key(vault, "covid-2-output") and output_key.hex() not in out
    for name in ("covid-2-model", "covid-2-output"):
        properties = _stored_key(vault, name).properties
        assert properties.exportable and json.loads(properties.release_policy.encoded_policy) == \
            build_release_policy(MAA_URL, HOSTDATA)

    model = result["model"]
    assert model["blob"] == f"{storage_names.MODELS}/{storage_names.model_blob('covid-2')}"
    _download(model["blob"], tmp_path / "model.ccr")
    package.decrypt_file(tmp_path / "model.ccr", tmp_path / "model.zip", _vault_key(vault, "covid-2-model"))
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        assert sorted(archive.namelist()) == ["model.onnx", "training.json"]
        assert archive.read("model.onnx") == (tmp_path / "model.onnx").read_bytes()
        assert json.loads(archive.read("training.json")) == covid_model.covid_training_config()

    # the trainer's side: output zip encrypted with the released output key, uploaded
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", b"trained")
        archive.writestr("metrics.json", "{}")
        archive.writestr("privacy.json", "{}")
    (tmp_path / "out.zip").write_bytes(buffer.getvalue())
    package.encrypt_file(tmp_path / "out.zip", tmp_path / "out.ccr", output_key, result["output_key_kid"],
                         "application/vnd.ccr.output+zip")
    outputs = azure_clients.blob_service().get_container_client(storage_names.OUTPUTS)
    if not outputs.exists():
        outputs.create_container()
    outputs.upload_blob(storage_names.output_blob("run-1"), (tmp_path / "out.ccr").read_bytes(), overwrite=True)

    code, out, err = run(capsys, "tdc", "fetch", "--run-id", "run-1", "--output", str(tmp_path / "fetched.zip"))
    assert code == 0, err
    assert json.loads(out)["members"] == ["model.onnx", "metrics.json", "privacy.json"]
    assert (tmp_path / "fetched.zip").read_bytes() == buffer.getvalue()

    code, _, err = run(capsys, "tdc", "fetch", "--run-id", "run-1", "--output", str(tmp_path / "again.zip"),
                       "--keys-dir", str(tmp_path / "elsewhere"))
    assert code == 1 and "no local copy of key" in err and not (tmp_path / "again.zip").exists()
    code, _, err = run(capsys, "tdc", "fetch", "--run-id", "run-404", "--output", str(tmp_path / "none.zip"))
    assert code == 1 and "does not exist" in err and not (tmp_path / "none.zip").exists()
