"""`ccr` as a party: with its did:web key and CCR_FUNCTIONS_URL, and a storage connection that
reaches nothing, it publishes under its own name, fetches its run's output and follows its runs,
all through the clean room (bearer token, per-blob SAS URLs)."""
from __future__ import annotations

import io
import json
import os
import secrets
import zipfile


from shared import package, storage_names
from shared.run_records import RunRecords
from tests.auth.conftest import blob_service, run

def test_publish_goes_under_the_partys_name_through_a_create_only_sas(capsys, tmp_path, as_party, azurite):
    (tmp_path / "t.csv").write_text("pseudonym,age\nab,3\n")
    code, published, err = run(capsys, "tdp", "publish", "--input", str(tmp_path / "t.csv"), "--dataset", "icmr",
                               *as_party("icmr"))
    assert code == 0, err
    assert published["blob"].startswith("datasets/icmr/icmr/") and "sig=" not in published["url"]
    container, name = published["blob"].split("/", 1)
    stored = blob_service(azurite).get_blob_client(container, name).download_blob().readall()
    assert package.read_header(stored).key_id == published["key_id"]
    code, model, err = run(capsys, "tdc", "publish-model", "--model", str(_onnx(tmp_path)), "--training",
                           str(_training(tmp_path)), *as_party("tdc"))
    assert code == 0, err
    assert model["model"]["blob"].startswith("models/tdc/")


def test_the_tdc_fetches_its_output_and_a_provider_cannot(capsys, tmp_path, as_party, azurite, stored):
    """The output of a run of contract A (TDC `tdc`, provider `icmr`)."""
    run_id = f"run-{secrets.token_hex(8)}"
    contract = stored["a"]
    records = RunRecords(blob_service(azurite))
    records.create(run_id, contract["payload"]["contract_id"], contract["digest"])
    records.finish(run_id, {"status": "succeeded"})
    key, key_id = os.urandom(32), f"output-{secrets.token_hex(4)}"
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / f"{key_id}.key.json").write_text(json.dumps({"key_id": key_id, "k": key.hex()}))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as members:
        for member in ("model.onnx", "metrics.json", "privacy.json"):
            members.writestr(member, b"{}")
    (tmp_path / "out.zip").write_bytes(archive.getvalue())
    package.encrypt_file(tmp_path / "out.zip", tmp_path / "out.ccr", key, key_id, "application/vnd.ccr.output+zip")
    blob_service(azurite).get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(run_id)).upload_blob(
        (tmp_path / "out.ccr").read_bytes())

    code, fetched, err = run(capsys, "tdc", "fetch", "--run-id", run_id, "--out", str(tmp_path / "got.zip"),
                             *as_party("tdc"))
    assert code == 0, err
    assert (tmp_path / "got.zip").read_bytes() == archive.getvalue() and fetched["run_id"] == run_id
    code, _, err = run(capsys, "tdc", "fetch", "--run-id", run_id, "--out", str(tmp_path / "no.zip"),
                       *as_party("icmr"))
    assert code == 1 and "no read access" in err and "HTTP 403" in err and not (tmp_path / "no.zip").exists()


def test_runs_shows_a_party_only_its_own(capsys, as_party, stored):
    code, listed, err = run(capsys, "runs", "list", *as_party("icmr"))
    assert code == 0, err
    ids = {entry["run_id"] for entry in listed["runs"]}
    assert stored["a"]["run_id"] in ids and stored["b"]["run_id"] not in ids
    code, shown, _ = run(capsys, "runs", "show", stored["a"]["run_id"], *as_party("icmr"))
    assert code == 0 and shown["contract_id"] == stored["a"]["payload"]["contract_id"]
    code, _, err = run(capsys, "runs", "show", stored["b"]["run_id"], *as_party("icmr"))
    assert code == 1 and f"no such run: {stored['b']['run_id']}" in err
    code, _, err = run(capsys, "runs", "list")
    assert code == 1 and "who are you? pass --did" in err
    code, _, err = run(capsys, "runs", "list", "--did", as_party("icmr")[1])
    assert code == 1 and "pass --did and --key" in err


def _onnx(tmp_path):
    from local_emulator import covid_reference
    path = tmp_path / "model.onnx"
    path.write_bytes(covid_reference.covid_onnx())
    return path


def _training(tmp_path):
    from local_emulator import covid_reference
    path = tmp_path / "training.json"
    path.write_text(json.dumps(covid_reference.covid_training_config()))
    return path
