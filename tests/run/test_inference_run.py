"""Confidential batch inference on the loan scenario, end to end on one stack.

The contract names the bank (and the TDC) as inference requesters and forbids the weights to leave:
the training run gives the TDC its metrics and privacy report only, and keeps the model inside.
The bank grants its inference keys (to the contract's inference group only) and uploads a batch
of complete feature rows: its arrival starts one inference run, which restores the kept model in
a confidential group of its own, and the bank alone fetches and decrypts the predictions, one per
row of its batch. The run is recorded for every party of the contract to see (who asked, how many
rows); the same batch arriving again starts nothing more. A batch uploaded by the bureau, which
the contract does not name, starts nothing; a batch
with a column the model does not take ends with a clear error and no predictions, the batch kept."""
from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pandas as pd
import pytest

from ccr.common import CliError
from ccr.party import clean_room
from local_emulator.covid_scenario import _environment
from local_emulator.loan_scenario import LoanScenario, applicants
from local_emulator.stack import wait_for
from orchestrations.inference_admission import refusal_name
from shared import inference_requests, package, storage_names
from shared import did as dids
from shared.did import DEFAULT_KEY_ID
from tests.run.conftest import groups_created, remaining_groups, run_record
from tests.run.test_continued_training import _blob, _service

ROWS = 2_000
BATCH_ROWS = 300   # bank customers drawn; the batch is their joined rows (fewer)


def _arrival(stack, blob: str, timeout: float = 60, nth: int = 1) -> str:
    """The host's log line answering the `nth` arrival of `blob`."""
    def line():
        lines = [text for text in stack.host.logs().splitlines() if f"inference batch {blob} arrived" in text]
        return lines[nth - 1] if len(lines) >= nth else None
    return wait_for(line, timeout, what=f"the arrival of {blob}")


@pytest.fixture(scope="module")
def trained(stack, tmp_path_factory):
    """The contract (bank and TDC as requesters, weights_leave false) trained once; the bank's
    inference keys granted (the TDC's never)."""
    scenario = LoanScenario(stack, tmp_path_factory.mktemp("loan-inference"), rows=ROWS, seed=41,
                            contract_id="loan-inference", echo=lambda _: None, inference_requesters=("bank", "tdc"),
                            withhold_weights=True,
                            training_overrides={"epochs": 1})  # the model only has to exist
    try:
        scenario.raw_table("bank")
        scenario.build_trainer_image()
        scenario.prepare_and_publish_datasets()
        scenario.publish_model()
        contract = scenario.write_contract()
        scenario.sign_and_submit(contract)
        granted = scenario.grant_inference_keys("bank")
        notice = scenario.notice_of(scenario.run_id, 180)
        yield scenario, contract, notice, granted
    finally:
        scenario.close()


def _batch(scenario, name: str, rows: int = BATCH_ROWS, seed: int = 5, **extra) -> Path:
    """Complete feature rows (a fresh synthetic draw) with row ids; `extra` columns added."""
    frame, _ = applicants(rows, seed, name)
    for column, value in extra.items():
        frame[column] = value
    path = scenario.workdir / f"{name}.csv"
    frame.to_csv(path, index=False)
    return path


def _submit(scenario, contract: Path, name: str, party: str = "bank", **extra) -> dict:
    return scenario.ccr("infer", "submit", "--contract", str(contract), "--input", str(_batch(scenario, name, **extra)),
                        "--batch", name, "--keys-dir", str(scenario.keys_dir(party)), party=party)


def _finished(stack, run_id: str, timeout: float = 180) -> dict:
    return wait_for(lambda: (lambda r: r if r and r.get("finished") else None)(run_record(stack, run_id)), timeout,
                    what=f"inference run {run_id}")


def test_weights_leave_false_withholds_the_model_from_the_tdc(trained):
    scenario, _, notice, _ = trained
    assert notice["status"] == "succeeded", notice
    output = scenario.workdir / "output.zip"
    fetched = scenario.ccr("tdc", "fetch", "--run-id", scenario.run_id, "--out", str(output),
                           "--keys-dir", str(scenario.keys_dir("tdc")), party="tdc")
    assert fetched["members"] == ["metrics.json", "privacy.json"]          # no model.onnx
    assert scenario.run_record(scenario.run_id)["status"] == "succeeded"


@pytest.fixture(scope="module")
def scored(stack, trained):
    scenario, contract, _, _ = trained
    submitted = _submit(scenario, contract, "first")
    record = _finished(stack, submitted["run_id"])
    return scenario, contract, submitted, record


def test_a_named_requesters_batch_gets_its_predictions_only_it_can_decrypt(stack, scored):
    scenario, contract, submitted, record = scored
    sent = pd.read_csv(scenario.workdir / "first.csv", dtype={"row_id": str})
    assert record["status"] == "succeeded", record.get("reason")
    assert record["rows"] == len(sent) > 0 and record["workload"] == "inference"
    out = scenario.workdir / "predictions.csv"
    scenario.ccr("infer", "fetch", "--contract", str(contract), "--run-id", submitted["run_id"], "--out", str(out),
                 "--keys-dir", str(scenario.keys_dir("bank")), party="bank")
    predictions = pd.read_csv(out, dtype={"row_id": str})
    assert predictions["row_id"].tolist() == sent["row_id"].tolist()      # exactly its rows, in its order
    assert predictions["probability"].between(0, 1).all() and set(predictions["label"]) <= {0, 1}
    path = inference_requests.predictions_path(submitted["run_id"])
    encrypted = _blob(stack, path)
    for party in ("tdc", "bureau"):  # nobody else even gets a SAS for it, nor holds its key
        with _environment(scenario.party_environment(party)):
            session = clean_room(argparse.Namespace(did=None, key=None, key_id=DEFAULT_KEY_ID, url=None))
            with pytest.raises(CliError, match="readable only by the requester"):
                session.sas(path, "read")
        for key_file in scenario.keys_dir(party).glob("*.key.json"):
            with pytest.raises(package.PackageError):
                package.decrypt_stream(io.BytesIO(encrypted), io.BytesIO(),
                                       bytes.fromhex(json.loads(key_file.read_text())["k"]))
    assert groups_created(stack, submitted["run_id"]) == 1 and remaining_groups(stack) == []


def test_the_inference_run_is_recorded_for_the_parties_to_see(scored):
    scenario, _, submitted, _ = scored
    seen = scenario.run_record(submitted["run_id"])           # the TDC (model owner), through the status API
    assert seen["workload"] == "inference" and seen["rows"] == len(pd.read_csv(scenario.workdir / "first.csv"))
    assert seen["requester"] == scenario.identities["bank"]["did"]


def test_the_same_batch_arriving_again_starts_nothing_more(stack, scored):
    scenario, _, submitted, _ = scored
    blob = _service(stack).get_blob_client(*submitted["batch"].split("/", 1))
    blob.upload_blob(blob.download_blob().readall(), overwrite=True)   # a second BlobCreated for the path
    assert "run already exists" in _arrival(stack, submitted["batch"], nth=2)
    assert groups_created(stack, submitted["run_id"]) == 1


def test_a_batch_from_a_party_the_contract_does_not_name_starts_nothing(stack, scored):
    scenario, contract, _, _ = scored
    payload = json.loads(contract.read_text())
    digest = scenario.digest
    bureau = dids.did_name(scenario.identities["bureau"]["did"])
    path = inference_requests.batch_path(bureau, digest, "probe")   # what the bureau's own SAS allows
    encrypted = io.BytesIO()  # under the key id a requester's batch would name: only the uploader differs
    package.encrypt_stream(io.BytesIO(_batch(scenario, "probe").read_bytes()), encrypted, b"\x01" * 32,
                           inference_requests.key_id(payload["contract_id"], scenario.identities["bureau"]["did"],
                                                     inference_requests.INPUT), "text/csv", None)
    _service(stack).get_blob_client(*path.split("/", 1)).upload_blob(encrypted.getvalue())
    assert "is not a requester the contract names: nothing started" in _arrival(stack, path)
    run_id = inference_requests.run_id(payload["contract_id"], digest, path)
    assert run_record(stack, run_id) is None and groups_created(stack, run_id) == 0
    assert not _service(stack).get_blob_client(*inference_requests.predictions_path(run_id).split("/", 1)).exists()
    refusal = json.loads(_blob(stack, f"{storage_names.RUNS}/{refusal_name(path)}"))
    assert refusal["started"] is False and "not a requester" in refusal["reason"]


def test_a_requester_that_granted_no_inference_keys_gets_nothing_deployed(stack, scored):
    """The TDC is a named requester too, but never ran `ccr infer grant`: its batch is admitted,
    and the run fails at the grants, before any container group exists."""
    scenario, contract, _, _ = scored
    submitted = _submit(scenario, contract, "ungranted", party="tdc")
    record = _finished(stack, submitted["run_id"])
    assert record["status"] == "failed" and record["failed_phase"] == "gathering_key_grants"
    assert "no key grant for inference input key of" in record["reason"]
    assert groups_created(stack, submitted["run_id"]) == 0


def test_a_bad_batch_ends_with_a_clear_error_no_output_and_the_batch_kept(stack, scored):
    scenario, contract, _, _ = scored
    submitted = _submit(scenario, contract, "with-target", loan_status=1)
    record = _finished(stack, submitted["run_id"])
    assert record["status"] == "failed"
    assert "batch has column(s) the model does not take: loan_status" in record["reason"]
    assert not _service(stack).get_blob_client(
        *inference_requests.predictions_path(submitted["run_id"]).split("/", 1)).exists()
    assert _service(stack).get_blob_client(*submitted["batch"].split("/", 1)).exists()   # nothing lost
    assert remaining_groups(stack) == []
