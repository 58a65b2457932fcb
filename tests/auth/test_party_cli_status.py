"""Following a contract and its run as a party (issue 14): `ccr contract status` (signers,
inputs present and missing, the run, what next), `ccr runs watch` (a line per phase change),
`ccr tdc fetch --wait`, a failed run's reason instead of a missing blob, and a run that is
`running` while it trains. Against the real app on the local host (this folder's one host)."""
from __future__ import annotations

import io
import json
import os
import secrets
import threading
import time
import zipfile

from shared import package, storage_names
from shared.run_records import RunRecords
from tests.auth.conftest import blob_service, run


def _contract_file(tmp_path, stored, label: str = "a"):
    path = tmp_path / f"contract-{label}.json"
    path.write_text(json.dumps(stored[label]["payload"]))
    return path


def test_contract_status_names_signers_missing_inputs_and_next_step(capsys, tmp_path, as_party, stored, azurite,
                                                                      parties):
    contract = stored["a"]
    code, status, err = run(capsys, "contract", "status", "--contract", str(_contract_file(tmp_path, stored)),
                            *as_party("icmr"))
    assert code == 0, err
    assert status["accepted"] and status["digest"] == contract["digest"]
    assert sorted(status["signers"]) == sorted(parties[p].did for p in ("tdc", "icmr", "cowin"))
    assert status["missing"] == [item["blob"] for item in status["inputs"]] and len(status["missing"]) == 3
    assert status["next"].startswith("waiting for 3 input(s)")
    # one input arrives: it is present, the others still missing
    model = contract["payload"]["tdc"]["model"]["blob"]
    container, name = model.split("/", 1)
    models = blob_service(azurite).get_container_client(container)
    if not models.exists():   # the session's Azurite: another test file may not have made it first
        models.create_container()
    models.upload_blob(name, b"x", overwrite=True)
    code, status, err = run(capsys, "contract", "status", "--contract", str(_contract_file(tmp_path, stored)),
                            "--query", "inputs[?present].blob", *as_party("tdc"))
    assert code == 0 and status == [model], err


def test_contract_status_of_another_partys_contract_reveals_nothing(capsys, tmp_path, as_party, stored):
    code, status, err = run(capsys, "contract", "status", "--contract", str(_contract_file(tmp_path, stored, "b")),
                            *as_party("icmr"))
    assert code == 0, err
    assert status["accepted"] is False and "inputs" not in status and "signers" not in status
    assert "submit the fully signed envelope" in status["next"]


def _output(tmp_path) -> tuple[bytes, str]:
    """An output package under a fresh TDC output key (kept in the party's keys dir)."""
    key, key_id = os.urandom(32), f"output-{secrets.token_hex(4)}"
    (tmp_path / "keys").mkdir(exist_ok=True)
    (tmp_path / "keys" / f"{key_id}.key.json").write_text(json.dumps({"key_id": key_id, "k": key.hex()}))
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as members:
        for member in ("model.onnx", "metrics.json", "privacy.json"):
            members.writestr(member, b"{}")
    (tmp_path / "out.zip").write_bytes(archive.getvalue())
    package.encrypt_file(tmp_path / "out.zip", tmp_path / "out.ccr", key, key_id, "application/vnd.ccr.output+zip")
    return archive.getvalue(), str(tmp_path / "out.ccr")


def _new_run(azurite, stored) -> tuple[RunRecords, str]:
    records, run_id = RunRecords(blob_service(azurite)), f"run-{secrets.token_hex(8)}"
    records.create(run_id, stored["a"]["payload"]["contract_id"], stored["a"]["digest"])
    return records, run_id


def test_a_run_is_running_from_its_first_phase(azurite, stored):
    records, run_id = _new_run(azurite, stored)
    assert records.get(run_id)["status"] == "pending"
    assert records.enter_phase(run_id, "training")["status"] == "running"
    assert records.finish(run_id, {"status": "failed"})["status"] == "failed"


def test_fetch_of_a_failed_run_reports_its_reason(capsys, tmp_path, as_party, azurite, stored):
    records, run_id = _new_run(azurite, stored)
    records.enter_phase(run_id, "training")
    code, _, err = run(capsys, "tdc", "fetch", "--run-id", run_id, "--out", str(tmp_path / "o.zip"), *as_party("tdc"))
    assert code == 1 and "is running (phase training)" in err and "--wait" in err
    records.finish(run_id, {"status": "failed", "failed_phase": "training",
                            "reason": "trainer failed: MissingColumn: feature column 'x' is missing"})
    code, _, err = run(capsys, "tdc", "fetch", "--run-id", run_id, "--out", str(tmp_path / "o.zip"), *as_party("tdc"))
    assert code == 1 and "failed in phase training: trainer failed: MissingColumn" in err
    assert "does not exist" not in err and not (tmp_path / "o.zip").exists()


def test_watch_and_fetch_wait_follow_the_phases_until_the_run_ends(capsys, tmp_path, as_party, azurite, stored):
    records, run_id = _new_run(azurite, stored)
    expected, encrypted = _output(tmp_path)
    blob_service(azurite).get_blob_client(storage_names.OUTPUTS, storage_names.output_blob(run_id)).upload_blob(
        open(encrypted, "rb").read())

    def advance():
        for phase in ("validating", "deploying", "training"):
            time.sleep(0.6)
            records.enter_phase(run_id, phase)
        time.sleep(0.6)
        records.finish(run_id, {"status": "succeeded"})
    mover = threading.Thread(target=advance)
    mover.start()
    code, fetched, err = run(capsys, "tdc", "fetch", "--run-id", run_id, "--out", str(tmp_path / "got.zip"),
                             "--wait", "--interval", "0.2", *as_party("tdc"))
    mover.join()
    assert code == 0, err
    assert (tmp_path / "got.zip").read_bytes() == expected and fetched["run_id"] == run_id
    lines = [line for line in err.splitlines() if line.startswith(f"ccr: {run_id}: ")]
    assert lines[0].endswith("admitted (pending)") and lines[-1].endswith("finished (succeeded)")
    assert any(line.endswith("training (running)") for line in lines)
    assert len(lines) == len(set(lines))   # one line per change, not per poll

    code, _, err = run(capsys, "runs", "watch", run_id, "--interval", "0.2", *as_party("icmr"))
    assert code == 0 and err.count(f"ccr: {run_id}: ") == 1
    failed_records, failed = _new_run(azurite, stored)
    failed_records.finish(failed, {"status": "failed", "failed_phase": "deploying", "reason": "quota"})
    code, _, err = run(capsys, "runs", "watch", failed, *as_party("tdc"))
    assert code == 1 and "failed in phase deploying: quota" in err

