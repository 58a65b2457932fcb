"""Who may ask for an inference, and with which keys (shared/inference_requests.py), and what a
party's storage credential reaches for it (shared/party_sas.py): pure checks, no stack.

The dishonest parties: a provider the contract does not name as requester uploading a batch, or
asking to read another requester's predictions; a requester writing a batch under another
party's name; the training group or a non-requester granting a requester's inference keys."""
from __future__ import annotations

import json

import pytest

from shared import contract as contracts
from shared import did as dids
from shared import inference_requests as requests_
from shared import key_grants, party_sas
from shared.container_group import inference_hostdata, policy_template_sha256, training_hostdata
from shared.release_policy import PolicyNotSatisfied, evaluate
from tests.contracts.conftest import IMAGE, identities, payload  # noqa: F401 - fixtures

DIGEST = "ab" * 32
CLAIMS = {"x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": "azure-compliant-uvm",
          "x-ms-sevsnpvm-is-debuggable": False}
AUTHORITY = "https://maa.test"


@pytest.fixture
def inferring(payload):  # noqa: F811
    """The contract with an inference slot naming its first provider as the only requester."""
    payload["workloads"]["inference"] = {
        "image": IMAGE, "policy_template_sha256": policy_template_sha256(IMAGE, workload="inference"),
        "requesters": [payload["tdps"][0]["did"]], "weights_leave": False, "deadline_seconds": 300, "max_rows": 100}
    return contracts.validate_payload(payload)


def _names(contract: dict) -> tuple[str, str]:
    return dids.did_name(contract["tdps"][0]["did"]), dids.did_name(contract["tdps"][1]["did"])


def test_the_inference_group_has_its_own_host_data_and_template(inferring):
    assert inference_hostdata(IMAGE, DIGEST) != training_hostdata(IMAGE, DIGEST)
    assert policy_template_sha256(IMAGE, workload="inference") != policy_template_sha256(IMAGE)


def test_a_requesters_keys_are_released_to_the_inference_group_only(inferring):
    policy = key_grants.inference_release_policy(AUTHORITY, inferring, DIGEST)
    evaluate(policy, AUTHORITY, {**CLAIMS, "x-ms-sevsnpvm-hostdata": inference_hostdata(IMAGE, DIGEST)})
    for other in (training_hostdata(IMAGE, DIGEST), inference_hostdata(IMAGE, "cd" * 32)):
        with pytest.raises(PolicyNotSatisfied):
            evaluate(policy, AUTHORITY, {**CLAIMS, "x-ms-sevsnpvm-hostdata": other})


def test_the_state_key_admits_both_workloads_of_this_contract_and_nothing_else(inferring):
    policy = key_grants.state_release_policy(AUTHORITY, inferring, DIGEST)
    for admitted in (training_hostdata(IMAGE, DIGEST), inference_hostdata(IMAGE, DIGEST)):
        evaluate(policy, AUTHORITY, {**CLAIMS, "x-ms-sevsnpvm-hostdata": admitted})
    for refused in (training_hostdata(IMAGE, "cd" * 32), inference_hostdata(IMAGE, "cd" * 32)):
        with pytest.raises(PolicyNotSatisfied):
            evaluate(policy, AUTHORITY, {**CLAIMS, "x-ms-sevsnpvm-hostdata": refused})
    with pytest.raises(PolicyNotSatisfied):  # debuggable: pinned in every entry
        evaluate(policy, AUTHORITY, {**CLAIMS, "x-ms-sevsnpvm-is-debuggable": True,
                                     "x-ms-sevsnpvm-hostdata": inference_hostdata(IMAGE, DIGEST)})


def test_weights_leave_and_kept_state_follow_the_contract(payload):  # noqa: F811
    assert contracts.weights_leave(payload) and not contracts.keeps_model_state(payload)
    payload["workloads"]["inference"] = {"weights_leave": False}
    assert not contracts.weights_leave(payload) and contracts.keeps_model_state(payload)
    payload["workloads"]["inference"]["weights_leave"] = True
    assert contracts.weights_leave(payload)


def test_only_a_named_requester_is_one(inferring):
    requester, outsider = _names(inferring)
    assert requests_.requester(inferring, requester) == inferring["tdps"][0]["did"]
    assert requests_.requester(inferring, outsider) is None
    assert requests_.requester(inferring, dids.did_name(inferring["tdc"]["did"])) is None


@pytest.mark.parametrize("path", ["inference-batches/a/b.ccr", f"datasets/icmr/{DIGEST}/b.ccr",
                                  "inference-batches/icmr/not-a-digest/b.ccr", f"inference-batches/icmr/{DIGEST}/b.csv",
                                  f"inference-batches/../{DIGEST}/b.ccr"])
def test_a_path_that_is_not_a_batch_path_names_no_request(path):
    assert requests_.parse_batch_path(path) is None


def test_a_request_must_be_the_batchs_own_run_under_a_named_requester(inferring):
    requester, outsider = _names(inferring)
    mine = requests_.batch_path(requester, DIGEST, "b1")
    run = requests_.run_id(inferring["contract_id"], DIGEST, mine)
    good = requests_.Request(mine, inferring["tdps"][0]["did"], "run-0000000000000000")
    assert requests_.checked(good.to_json(), inferring, DIGEST, run) == good
    theirs = requests_.batch_path(outsider, DIGEST, "b1")
    cases = {
        requests_.Request(theirs, inferring["tdps"][1]["did"], "run-0").to_json():
            "the batch's uploader is not a requester the contract names",
        requests_.Request(mine, inferring["tdps"][1]["did"], "run-0").to_json():
            "the batch's uploader is not a requester the contract names",
        requests_.Request(requests_.batch_path(requester, "cd" * 32, "b1"), inferring["tdps"][0]["did"],
                          "run-0").to_json(): "the batch is not an inference batch of this contract",
        b"{not json": "the inference request is not a valid request document"}
    for document, reason in cases.items():
        with pytest.raises(requests_.RequestError, match=reason):
            requests_.checked(document, inferring, DIGEST, run)
    with pytest.raises(requests_.RequestError, match="its run id differs"):  # another batch's run
        requests_.checked(good.to_json(), inferring, DIGEST, requests_.run_id(inferring["contract_id"], DIGEST, theirs))


def test_a_party_writes_batches_only_under_its_own_name(inferring):
    requester, outsider = _names(inferring)
    did = inferring["tdps"][0]["did"]
    own = requests_.batch_path(requester, DIGEST, "b1")
    assert party_sas.check(did, own, "create") == own
    with pytest.raises(party_sas.SasRefused, match="only under its own name"):
        party_sas.check(did, requests_.batch_path(outsider, DIGEST, "b1"), "create")


def test_predictions_are_readable_by_their_requester_only(inferring):
    did, other = inferring["tdps"][0]["did"], inferring["tdps"][1]["did"]
    path = requests_.predictions_path("run-0123456789abcdef")
    of_run = {"run-0123456789abcdef": did}.get
    assert party_sas.check(did, path, "read", requester_of_run=of_run) == path
    for who, permission in ((other, "read"), (inferring["tdc"]["did"], "read"), (did, "create")):
        with pytest.raises(party_sas.SasRefused):
            party_sas.check(who, path, permission, requester_of_run=of_run, tdc_of_run=lambda run: who)


def test_only_a_requester_writes_its_inference_grants(inferring):
    did, other = inferring["tdps"][0]["did"], inferring["tdps"][1]["did"]
    digest = contracts.payload_digest(contracts.canonical_json(inferring))
    for subject in requests_.grant_subjects(inferring, did):
        path = key_grants.grant_path(digest, subject.subject)
        assert party_sas.check(did, path, "create", inferring) == path
        with pytest.raises(party_sas.SasRefused, match="not one of yours"):
            party_sas.check(other, path, "create", inferring)
    for subject in requests_.grant_subjects(inferring, other):  # not a requester: no inference grants at all
        with pytest.raises(party_sas.SasRefused, match="not one of yours"):
            party_sas.check(other, key_grants.grant_path(digest, subject.subject), "create", inferring)


@pytest.mark.parametrize("command", ["grant", "submit", "fetch"])
def test_ccr_infer_refuses_a_caller_the_contract_does_not_name(inferring, tmp_path, capsys, command):
    from ccr.cli import main
    contract = tmp_path / "contract.json"
    contract.write_text(json.dumps(inferring))
    (tmp_path / "batch.csv").write_text("row_id,x\n1,2\n")
    extra = {"grant": [], "submit": ["--input", str(tmp_path / "batch.csv"), "--batch", "b1"],
             "fetch": ["--run-id", "run-0123456789abcdef", "--out", str(tmp_path / "p.csv")]}[command]
    outsider = inferring["tdps"][1]["did"]
    code = main(["infer", command, "--contract", str(contract), "--did", outsider, "--keys-dir", str(tmp_path / "k"),
                 *extra])
    assert code == 1
    assert f"does not name {outsider} as an inference requester" in capsys.readouterr().err
    assert not (tmp_path / "k").exists() and not (tmp_path / "p.csv").exists()   # no key made, nothing written


def test_the_inference_group_runs_its_own_command_under_its_own_policy():
    from shared.cce_policy import hostdata_of, policy_containers
    from shared.container_group import INFERENCE_COMMAND, TRAINER_COMMAND, build_container_group
    group = build_container_group(IMAGE, DIGEST, {"CCR_RUN_ID": "run-0123456789abcdef"}, "westeurope",
                                  workload="inference")
    policy = group.confidential_compute_properties.cce_policy
    assert group.containers[0].command == list(INFERENCE_COMMAND)
    assert hostdata_of(policy) == inference_hostdata(IMAGE, DIGEST)
    commands = {container.command for container in policy_containers(policy)}
    assert INFERENCE_COMMAND in commands and TRAINER_COMMAND not in commands  # the policy admits no training
