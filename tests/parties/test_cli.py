"""The `ccr` tool: help everywhere, one clear line and a non-zero exit for every bad argument
(with nothing uploaded or imported), and the publish / grant / fetch paths against Azurite and
the Key Vault twin through the official SDK clients."""
from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import blake3
import pytest
from azure.keyvault.keys import KeyClient

from ccr.cli import _user_error, main
from jwcrypto import jwk

from shared import azure_clients, key_grants, package, storage_names
from shared import contract as contracts
from shared import did as dids
from shared.container_group import training_hostdata
from shared.credentials import StaticTokenCredential
from shared.release_policy import build_release_policy
from local_emulator import covid_reference as covid_model
from tests.contracts.conftest import contract_payload
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
            ["tdc", "publish-model"], ["tdc", "fetch"], ["keys"], ["keys", "policy"], ["contract", "grant"]]
TDC, TDP = "did:web:127.0.0.1%3A8443:tdc", "did:web:127.0.0.1%3A8443:icmr"


def _payload(tmp: Path, vault_url: str = "https://127.0.0.1:9", **dataset) -> Path:
    """A schema-2 contract naming one dataset (fields from `dataset`) and the TDC's packages."""
    payload = contract_payload(TDC, {"icmr": dids.Identity.generate(TDP)})
    payload["workloads"]["training"]["image"] = IMAGE
    entry = payload["tdps"][0]["datasets"][0]
    if any(name in dataset for name in package.COMMITMENTS.values()):  # the package's own pin replaces the fixture's
        for name in package.COMMITMENTS.values():
            entry.pop(name, None)
    entry.update(dataset)
    for party in (payload["tdc"], payload["tdps"][0]):
        party["key_vault"] = vault_url
    path = tmp / f"contract-{len(list(tmp.glob('contract-*')))}.json"
    path.write_text(json.dumps(contracts.validate_payload(payload)))
    return path


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
    code, out, _ = run(capsys, "tdp", "pseudonym-key", "--out", str(tmp_path / "shared.key"))
    assert code == 0 and stat.S_IMODE((tmp_path / "shared.key").stat().st_mode) == 0o600
    assert len(bytes.fromhex((tmp_path / "shared.key").read_text())) == 32
    code, _, err = run(capsys, "tdp", "pseudonym-key", "--out", str(tmp_path / "shared.key"))
    assert code == 1 and "never overwritten" in err
    code, out, _ = run(capsys, "tdp", "prepare", "--config", str(ROOT / "configs/covid/cowin.json"),
                       "--input", str(COVID / "poc_data_cowin_data.csv"), "--out", str(tmp_path / "cowin.csv"),
                       "--pseudonym-key-file", str(tmp_path / "shared.key"))
    result = json.loads(out)
    assert code == 0 and result["rows"] == 2119 and result["columns"] == ["pseudonym", "age", "gender", "vaccine_name"]
    assert (tmp_path / "cowin.csv").read_text().count("\n") == 2120


def _write_inputs(tmp: Path) -> None:
    (tmp / "bad.onnx").write_bytes(b"not onnx")
    (tmp / "model.onnx").write_bytes(covid_model.covid_onnx())
    (tmp / "hinge.json").write_text(json.dumps(covid_model.covid_training_config(loss="hinge")))
    (tmp / "training.json").write_text(json.dumps(covid_model.covid_training_config()))
    (tmp / "split.json").write_text(json.dumps(covid_model.covid_training_config(validation_split=0.2)))
    (tmp / "payload.json").write_text("{}")
    _payload(tmp).rename(tmp / "contract.json")
    (tmp / "short.key").write_text("00" * 8)
    (tmp / "table.csv").write_text("pseudonym,age\nab,3\n")


def _bad_cases(tmp: Path, key_file: Path) -> dict[str, tuple[list[str], str]]:
    prepare = ["tdp", "prepare", "--config", str(ROOT / "configs/covid/icmr.json"),
               "--input", str(COVID / "poc_data_icmr_data.csv"), "--out", str(tmp / "out.csv")]
    publish = ["tdp", "publish", "--input", str(tmp / "table.csv"), "--dataset", "icmr"]
    model = ["tdc", "publish-model", "--model", str(tmp / "model.onnx"), "--training", str(tmp / "training.json")]
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
        "bad dataset": (publish[:5] + ["a/b"], "--dataset"),
        "publish input missing": (["tdp", "publish", "--input", str(tmp / "none.csv")] + publish[4:], "--input"),
        "publish without an identity": (publish, "who are you? pass --did"),
        "publish under a malformed DID": (publish + ["--did", "did:key:z6Mk"], "is not a did:web identifier"),
        "publish-model without an identity": (model, "who are you? pass --did"),
        "invalid onnx": (model[:3] + [str(tmp / "bad.onnx")] + model[4:], "not a valid ONNX model"),
        "training loss not allowed": (model[:5] + [str(tmp / "hinge.json")] + model[6:], "loss must be one of"),
        "validation split is the contract's": (model[:5] + [str(tmp / "split.json")] + model[6:],
                                               "validation_split is a term of the contract"),
        "policy of a malformed contract": (["keys", "policy", "--contract", str(tmp / "payload.json")],
                                           "schema_version must be 2"),
        "grant by a non-party": (["contract", "grant", "--contract", str(tmp / "contract.json"), "--did",
                                  "did:web:127.0.0.1%3A8443:outsider"], "not a party"),
        "grant of a key not held": (["contract", "grant", "--contract", str(tmp / "contract.json"), "--did", TDP],
                                    "no local copy of key icmr-1"),
        "bad run id": (["tdc", "fetch", "--run-id", "a/../b", "--out", str(tmp / "o.zip")], "--run-id"),
        "fetch output directory missing": (["tdc", "fetch", "--run-id", "r1", "--out",
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


def test_missing_authority(capsys, monkeypatch, tmp_path, no_services):
    monkeypatch.delenv("CCR_MAA_URL")
    code, _, err = run(capsys, "keys", "policy", "--contract", str(_payload(tmp_path)))
    assert code == 1 and "no attestation authority" in err
    code, _, err = run(capsys, "keys", "policy")
    assert code == 2 and "the following arguments are required: --contract" in err


def test_keys_policy_pins_this_contracts_trainer_group(capsys, tmp_path, no_services):
    first, second = _payload(tmp_path), _payload(tmp_path, epsilon=1.0)
    policies = []
    for path in (first, second):
        code, out, _ = run(capsys, "keys", "policy", "--contract", str(path))
        result = json.loads(out)
        digest = contracts.payload_digest(contracts.canonical_json(json.loads(path.read_text())))
        assert code == 0 and result["contract_digest"] == digest
        assert result["policy"] == build_release_policy(MAA_URL, training_hostdata(IMAGE, digest))
        policies.append(result["policy"])
    assert policies[0] != policies[1]  # another contract, even by one term: other host data


def test_user_errors_never_show_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "ccr", "tdp", "prepare", "--config", str(tmp_path / "none.json"),
                             "--input", "x.csv", "--out", str(tmp_path / "o.csv")],
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


def _kek_private(vault, name: str) -> dict:
    """The KEK's private JWK as the twin stored it (test-only view: real Key Vault never shows it)."""
    pem = vault.store.get(name, None)["material"]["pem"].encode()
    return jwk.JWK.from_pem(pem).export_private(as_dict=True)


def test_tdp_publish_encrypts_uploads_and_keeps_the_key(capsys, tmp_path, key_file, services, vault):
    prepared = tmp_path / "icmr.csv"
    assert run(capsys, "tdp", "prepare", "--config", str(ROOT / "configs/covid/icmr.json"), "--input",
               str(COVID / "poc_data_icmr_data.csv"), "--out", str(prepared),
               "--pseudonym-key-file", str(key_file))[0] == 0
    keys_before = vault.store.names()
    code, out, err = run(capsys, "tdp", "publish", "--input", str(prepared), "--dataset", "icmr", "--did", TDP)
    assert code == 0, err
    result = json.loads(out)
    assert result["blob"] == f"{storage_names.DATASETS}/{storage_names.dataset_blob('icmr', 'icmr', result['key_id'])}"
    assert result["key_id"].startswith("icmr-") and result["blake3"] == blake3.blake3(prepared.read_bytes()).hexdigest()
    assert vault.store.names() == keys_before  # nothing reaches Key Vault before a contract is signed
    key_file = tmp_path / "keys" / f"{result['key_id']}.key.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = bytes.fromhex(json.loads(key_file.read_text())["k"])
    _download(result["blob"], tmp_path / "icmr.ccr")
    header = package.read_header((tmp_path / "icmr.ccr").read_bytes())
    assert header.key_id == result["key_id"] and header.version == 2 and header.manifest.blake3 == result["blake3"]
    assert "sha256" not in result  # the published pin names its hash
    assert header.manifest.schema["columns"][0] == "pseudonym"
    for text in (out, err):
        assert key.hex() not in text and base64.urlsafe_b64encode(key).decode().rstrip("=") not in text
    package.decrypt_file(tmp_path / "icmr.ccr", tmp_path / "plain.csv", key)
    assert (tmp_path / "plain.csv").read_bytes() == prepared.read_bytes()
    again = json.loads(run(capsys, "tdp", "publish", "--input", str(prepared), "--dataset", "icmr", "--did", TDP)[1])
    assert again["blob"] != result["blob"] and again["key_id"] != result["key_id"]  # never overwrites an upload


def test_grant_binds_the_data_key_to_one_contract(capsys, tmp_path, services, vault):
    """The provider's consent: a KEK in its vault released only to this contract's trainer
    group, and its data key wrapped under that KEK; another contract gets another KEK."""
    (tmp_path / "t.csv").write_text("pseudonym,age\nab,3\n")
    published = json.loads(run(capsys, "tdp", "publish", "--input", str(tmp_path / "t.csv"), "--dataset", "icmr",
                               "--did", TDP)[1])
    data_key = bytes.fromhex(json.loads((tmp_path / "keys" / f"{published['key_id']}.key.json").read_text())["k"])
    fields = {k: published[k] for k in ("blob", "blake3", "key_id")}
    keks = []
    for contract in (_payload(tmp_path, vault.url, **fields), _payload(tmp_path, vault.url, epsilon=1.0, **fields)):
        code, out, err = run(capsys, "contract", "grant", "--contract", str(contract), "--did", TDP)
        assert code == 0, err
        payload = json.loads(contract.read_text())
        digest = contracts.payload_digest(contracts.canonical_json(payload))
        (granted,) = json.loads(out)["granted"]
        subject = f"dataset:{TDP}/icmr"
        assert granted["kek"] == key_grants.kek_name(digest, subject) and granted["key_id"] == published["key_id"]
        stored = _stored_key(vault, granted["kek"])
        assert stored.key_type == "RSA-HSM" and stored.properties.exportable
        assert json.loads(stored.properties.release_policy.encoded_policy) == \
            build_release_policy(MAA_URL, training_hostdata(IMAGE, digest))
        wrapped = azure_clients.blob_service().get_blob_client(
            storage_names.GRANTS, key_grants.grant_blob(digest, subject)).download_blob().readall().decode()
        assert key_grants.unwrap(wrapped, _kek_private(vault, granted["kek"]), granted["kek"],
                                 published["key_id"]) == data_key
        assert data_key.hex() not in out + err
        keks.append(granted["kek"])
        # granting again (a retry) reuses the KEK: the earlier grant still matches it
        versions = len(vault.store.versions(granted["kek"]))
        assert run(capsys, "contract", "grant", "--contract", str(contract), "--did", TDP)[0] == 0
        assert len(vault.store.versions(granted["kek"])) == versions
    assert keks[0] != keks[1]


def test_tdc_publish_model_then_fetch_output(capsys, tmp_path, services, vault):
    (tmp_path / "model.onnx").write_bytes(covid_model.covid_onnx())
    (tmp_path / "training.json").write_text(json.dumps(covid_model.covid_training_config()))
    keys_before = vault.store.names()
    code, out, err = run(capsys, "tdc", "publish-model", "--model", str(tmp_path / "model.onnx"),
                         "--training", str(tmp_path / "training.json"), "--did", TDC)
    assert code == 0, err
    result = json.loads(out)
    key_file = Path(result["output_key_file"])
    assert key_file.parent == tmp_path / "keys" and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert json.loads(key_file.read_text())["key_id"] == result["output_key_id"]
    output_key = bytes.fromhex(json.loads(key_file.read_text())["k"])
    assert output_key.hex() not in out and vault.store.names() == keys_before

    model = result["model"]
    assert model["blob"] == f"{storage_names.MODELS}/{storage_names.model_blob('tdc', model['key_id'])}"
    model_key = bytes.fromhex(json.loads((tmp_path / "keys" / f"{model['key_id']}.key.json").read_text())["k"])
    _download(model["blob"], tmp_path / "model.ccr")
    package.decrypt_file(tmp_path / "model.ccr", tmp_path / "model.zip", model_key)
    with zipfile.ZipFile(tmp_path / "model.zip") as archive:
        assert sorted(archive.namelist()) == ["model.onnx", "training.json"]
        assert archive.read("model.onnx") == (tmp_path / "model.onnx").read_bytes()
        assert json.loads(archive.read("training.json")) == covid_model.covid_training_config()

    # the trainer's side: output zip encrypted with the (granted) output key, uploaded
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", b"trained")
        archive.writestr("metrics.json", "{}")
        archive.writestr("privacy.json", "{}")
    (tmp_path / "out.zip").write_bytes(buffer.getvalue())
    package.encrypt_file(tmp_path / "out.zip", tmp_path / "out.ccr", output_key, result["output_key_id"],
                         "application/vnd.ccr.output+zip")
    outputs = azure_clients.blob_service().get_container_client(storage_names.OUTPUTS)
    if not outputs.exists():
        outputs.create_container()
    outputs.upload_blob(storage_names.output_blob("run-1"), (tmp_path / "out.ccr").read_bytes(), overwrite=True)

    code, out, err = run(capsys, "tdc", "fetch", "--run-id", "run-1", "--out", str(tmp_path / "fetched.zip"))
    assert code == 0, err
    assert json.loads(out)["members"] == ["model.onnx", "metrics.json", "privacy.json"]
    assert (tmp_path / "fetched.zip").read_bytes() == buffer.getvalue()

    code, _, err = run(capsys, "tdc", "fetch", "--run-id", "run-1", "--out", str(tmp_path / "again.zip"),
                       "--keys-dir", str(tmp_path / "elsewhere"))
    assert code == 1 and "no local copy of key" in err and not (tmp_path / "again.zip").exists()
    code, _, err = run(capsys, "tdc", "fetch", "--run-id", "run-404", "--out", str(tmp_path / "none.zip"))
    assert code == 1 and "does not exist" in err and not (tmp_path / "none.zip").exists()
