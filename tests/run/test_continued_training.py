"""Continued training on the loan scenario, end to end on one stack.

A contract that allows continued training gets a state KEK in the control plane's vault at
acceptance; its first run keeps its model state there, encrypted under a fresh data key wrapped
under that KEK, and names the state's digest in its attested outcome. Neither the TDC, a
provider nor the control plane can release the KEK: only the contract's attested trainer.
While that run is going, the bank publishes and declares version 2 of its dataset (same people,
the data key it granted): exactly one continued run starts, waits for the first run's model,
and trains from it (its digest in the attested outcome), charged to the same population as the
first run. The same version arriving again starts nothing more; an undeclared version starts
nothing; a version declared as new people is charged to a population of its own."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient

from local_emulator.covid_scenario import _environment
from local_emulator.loan_scenario import LoanScenario
from local_emulator.stack import wait_for
from shared import azure_clients, continuation, key_grants, model_states, package
from shared import contract as contracts
from shared.privacy_budget import PrivacyBudget
from shared.container_group import training_hostdata
from shared.release_policy import evaluate, PolicyNotSatisfied, policy_from_json
from tests.run.conftest import groups_created, remaining_groups, run_record

ROWS = 3_000


@pytest.fixture(scope="module")
def first_run(stack, tmp_path_factory):
    """The contract's first run, with the bank's version 2 arriving while it is still going."""
    scenario = LoanScenario(stack, tmp_path_factory.mktemp("loan-continued"), rows=ROWS, seed=31,
                            contract_id="loan-continued", echo=lambda _: None, continued_training=True,
                            lifetime_runs=3)
    try:
        scenario.raw_table("bank")
        scenario.build_trainer_image()
        scenario.prepare_and_publish_datasets()
        scenario.publish_model()
        scenario.sign_and_submit(scenario.write_contract())
        version_2 = scenario.publish_version("bank", _bank_rows(scenario, 2, 0.8), 2)
        notice = scenario.notice_of(scenario.run_id, 120)
        result = {"notice": notice, "run": scenario.run_record(scenario.run_id), "version_2": version_2,
                  "output": scenario.fetch_output(scenario.run_id),
                  "evaluation": scenario.evaluate(scenario.workdir / "trained.onnx")}
        yield scenario, result
    finally:
        scenario.close()


def _service(stack) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(stack.settings["CCR_STORAGE_CONNECTION"])


def _blob(stack, path: str) -> bytes:
    container, _, name = path.partition("/")
    return _service(stack).get_blob_client(container, name).download_blob().readall()


def _bank_rows(scenario, version: int, share: float) -> Path:
    """A later version of the bank's prepared table: a share of the same customers' rows (the
    same people, so no new population)."""
    table = pd.read_csv(scenario.workdir / "bank.prepared.csv", dtype=str)
    path = scenario.workdir / f"bank.v{version}.csv"
    table.sample(frac=share, random_state=version).to_csv(path, index=False)
    return path


def _arrival_logged(stack, blob: str, timeout: float = 60) -> str:
    """The host's log line answering the arrival of `blob` (datasets/...)."""
    def line():
        return next((text for text in stack.host.logs().splitlines() if f"input {blob} arrived" in text), None)
    return wait_for(line, timeout, what=f"the arrival of {blob}")


def _continued_run_id(scenario, version: int) -> str:
    return continuation.run_id(scenario.contract_id, scenario.digest, scenario.identities["bank"]["did"], "bank",
                               version)


def test_the_first_run_keeps_its_model_state_encrypted_under_the_contracts_state_key(stack, first_run):
    scenario, result = first_run
    record = result["run"]
    assert result["notice"]["status"] == "succeeded" and record["status"] == "succeeded", result["notice"]
    digest = record["model_state_sha256"]
    assert isinstance(digest, str) and len(digest) == 64
    kept = _blob(stack, model_states.package_path(scenario.digest, scenario.run_id))
    header = package.read_header(kept)
    assert header.key_id == model_states.state_key_id(scenario.run_id)
    assert header.manifest.content_type == model_states.CONTENT_TYPE
    wrapped = _blob(stack, model_states.wrapped_key_path(scenario.digest, scenario.run_id)).decode()
    key_grants.check_header(wrapped, model_states.kek_name(scenario.digest), header.key_id)
    # the TDC's output is what it was: the exported model, metrics and privacy report only
    assert set(result["output"]) >= {"privacy"} and result["evaluation"]["model_auc"] > 0.7
    # its group is gone (the continued run's, started as soon as this model was kept, may be up)
    assert f"ccr-{scenario.run_id}" not in remaining_groups(stack)


def test_the_state_key_admits_only_this_contracts_trainer_and_its_policy_is_immutable(stack, first_run):
    scenario, _ = first_run
    with _environment(stack.settings):
        key = azure_clients.key_client().get_key(model_states.kek_name(scenario.digest))
    policy = key.properties.release_policy
    assert key.properties.exportable and policy.immutable
    rules = policy_from_json(policy.encoded_policy)
    image = json.loads((scenario.workdir / "contract.json").read_text())["workloads"]["training"]["image"]
    claims = {"x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": "azure-compliant-uvm",
              "x-ms-sevsnpvm-is-debuggable": False}
    evaluate(rules, stack.maa.url, {**claims, "x-ms-sevsnpvm-hostdata": training_hostdata(image, scenario.digest)})
    with pytest.raises(PolicyNotSatisfied):  # another contract's trainer, same image
        evaluate(rules, stack.maa.url, {**claims, "x-ms-sevsnpvm-hostdata": training_hostdata(image, "0" * 64)})


@pytest.mark.parametrize("who", ["app", "tdc", "bank"])
def test_no_party_and_not_the_control_plane_can_release_the_state_key(stack, first_run, who):
    scenario, _ = first_run
    token = stack.settings["CCR_ACCESS_TOKEN"] if who == "app" else stack.party_token(who)
    with _environment({**stack.settings, "CCR_ACCESS_TOKEN": token}), azure_clients.key_client() as vault:
        with pytest.raises(HttpResponseError) as refused:
            vault.release_key(model_states.kek_name(scenario.digest), "a-forged-attestation-token")
    assert refused.value.status_code == 403


@pytest.fixture(scope="module")
def continued(stack, first_run):
    """The continued run version 2 started (while the first run was going): to its notice."""
    scenario, result = first_run
    run_id = _continued_run_id(scenario, 2)
    notice = scenario.notice_of(run_id, 180)
    return scenario, result["version_2"], notice, scenario.run_record(run_id)


def test_a_declared_version_starts_one_continued_run_from_the_kept_model(stack, first_run, continued):
    scenario, published, notice, record = continued
    first = first_run[1]["run"]
    assert notice["status"] == "succeeded" and record["status"] == "succeeded", record.get("reason")
    assert published["version"] == 2 and published["key_id"] == scenario.published["bank"]["key_id"]
    assert record["previous_model_sha256"] == first["model_state_sha256"]          # the kept model, attested
    assert record["model_state_sha256"] not in (None, first["model_state_sha256"])  # and training moved it
    # it arrived while the first run was going, and waited for the first run's model
    assert record["created"] < first["finished"] and "waiting_for_previous_model" in record["phases"]
    assert groups_created(stack, record["run_id"]) == 1 and remaining_groups(stack) == []


def test_the_continued_runs_budget_adds_to_the_first_runs_for_the_same_people(stack, first_run, continued):
    scenario, _, _, record = continued
    first = first_run[1]["run"]
    bank = contracts.dataset_identity(scenario.identities["bank"]["did"], {"name": "bank"})
    charged = PrivacyBudget(_service(stack)).runs(bank)
    assert set(charged) == {first["run_id"], record["run_id"]}
    assert all(entry["state"] == "spent" for entry in charged.values())
    assert charged[first["run_id"]]["epsilon"] == first["privacy_budget_spent"]["bank"]
    assert charged[record["run_id"]]["epsilon"] == record["privacy_budget_spent"]["bank"] > 0


def test_the_same_version_arriving_again_starts_nothing_more(stack, continued):
    scenario, published, _, record = continued
    again = published["blob"].replace(".v2.ccr", ".v2-again.ccr")
    container, _, name = again.partition("/")
    _service(stack).get_blob_client(container, name).upload_blob(_blob(stack, published["blob"]))
    assert "run already exists" in _arrival_logged(stack, again)
    assert groups_created(stack, record["run_id"]) == 1
    assert [n["run_id"] for n in scenario.inbox.notices].count(record["run_id"]) == 1


def test_an_undeclared_version_starts_nothing(stack, continued):
    scenario = continued[0]
    published = scenario.publish_version("bank", _bank_rows(scenario, 3, 0.7), 3, declare=False)
    assert "declared no version for this package: nothing started" in _arrival_logged(stack, published["blob"])
    assert run_record(stack, _continued_run_id(scenario, 3)) is None
    assert groups_created(stack, _continued_run_id(scenario, 3)) == 0


def test_a_version_of_new_individuals_is_charged_to_its_own_population_only(stack, continued):
    """Version 4, declared as new people: it continues from version 2's model (version 3 was
    never declared) and its bank budget is its own; the bank's own population keeps two runs."""
    scenario, _, _, version_2 = continued
    published = scenario.publish_version("bank", _bank_rows(scenario, 4, 0.8), 4, new_individuals=True)
    assert published["version"] == 4
    run_id = _continued_run_id(scenario, 4)
    notice = scenario.notice_of(run_id, 180)
    record = scenario.run_record(run_id)
    assert notice["status"] == "succeeded" and record["previous_model_sha256"] == version_2["model_state_sha256"]
    bank = contracts.dataset_identity(scenario.identities["bank"]["did"], {"name": "bank"})
    budget = PrivacyBudget(_service(stack))
    assert run_id not in budget.runs(bank) and len(budget.runs(bank)) == 2
    own = budget.runs(f"{bank}@v4")
    assert set(own) == {run_id} and own[run_id]["state"] == "spent"
    assert own[run_id]["epsilon"] == record["privacy_budget_spent"]["bank"] > 0
    bureau = contracts.dataset_identity(scenario.identities["bureau"]["did"], {"name": "bureau"})
    assert len(budget.runs(bureau)) == 3   # the bureau's rows are the same people every time: they compose
