"""Continued training on the loan scenario: the trained model state stays in the clean room.

A contract that allows continued training gets a state KEK in the control plane's vault at
acceptance; its first run keeps its model state there, encrypted under a fresh data key wrapped
under that KEK, and names the state's digest in its attested outcome. Neither the TDC, a
provider nor the control plane can release the KEK: only the contract's attested trainer."""
from __future__ import annotations

import json

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobServiceClient

from local_emulator.covid_scenario import _environment
from local_emulator.loan_scenario import LoanScenario
from shared import azure_clients, key_grants, model_states, package
from shared.container_group import training_hostdata
from shared.release_policy import evaluate, PolicyNotSatisfied, policy_from_json
from tests.run.conftest import remaining_groups

ROWS = 3_000


@pytest.fixture(scope="module")
def first_run(stack, tmp_path_factory):
    scenario = LoanScenario(stack, tmp_path_factory.mktemp("loan-continued"), rows=ROWS, seed=31,
                            contract_id="loan-continued", echo=lambda _: None, continued_training=True)
    try:
        yield scenario, scenario.run(timeout=120)
    finally:
        scenario.close()


def _blob(stack, path: str) -> bytes:
    container, _, name = path.partition("/")
    service = BlobServiceClient.from_connection_string(stack.settings["CCR_STORAGE_CONNECTION"])
    return service.get_blob_client(container, name).download_blob().readall()


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
    assert remaining_groups(stack) == []


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
