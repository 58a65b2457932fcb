"""Runs that must fail, each with a clear reason, the TDC told, and never a container group
left behind; and contracts that must be refused without starting anything."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from ccr.common import contract_policy, create_kek, load_local_key, upload_text
from ccr.contract import grant_keys
from local_emulator.covid_scenario import CommandFailed, _environment
from local_emulator.registry import is_registry_reference
from shared import contract as contracts
from shared import did as dids
from shared import azure_clients, events, key_grants, storage_names
from shared.privacy_budget import PrivacyBudget
from local_emulator.stack import wait_for
from shared.run_records import run_id_for
from tests.run.conftest import groups_created, remaining_groups, run_record


def _submit(scenario) -> dict:
    scenario.create_identities()
    scenario.sign_and_submit(scenario.write_contract())
    notice = scenario.wait_for_notice(180)
    assert notice["run_id"] == scenario.run_id
    return notice


def _assert_failed_before_deploying_any_trainer(stack, notice, phase: str, reason: str) -> dict:
    assert notice["status"] == "failed" and reason in notice["reason"], notice
    record = run_record(stack, notice["run_id"])
    assert record["status"] == "failed" and record["failed_phase"] == phase
    assert set(record["privacy_budget_spent"].values()) == {0.0}  # nothing trained: budget given back
    return record


def _assert_failed_before_deploying(stack, scenario, notice, phase: str, reason: str) -> dict:
    record = _assert_failed_before_deploying_any_trainer(stack, notice, phase, reason)
    assert groups_created(stack, scenario.run_id) == 0
    return record


def test_tampered_input_fails_validation_and_deploys_nothing(stack, scenario_factory):
    scenario = scenario_factory()
    scenario.publish_inputs()
    genuine = scenario.published["icmr"]
    tampered = scenario.workdir / "icmr.tampered.csv"
    lines = (scenario.workdir / "icmr.prepared.csv").read_text().splitlines()
    tampered.write_text("\n".join(lines[:-1]) + "\n")  # one row quietly removed
    other = scenario.ccr("tdp", "publish", "--input", str(tampered), "--dataset", "icmr",
                         "--keys-dir", str(scenario.keys_dir("icmr")), party="icmr")
    blobs = BlobServiceClient.from_connection_string(stack.settings["CCR_STORAGE_CONNECTION"])
    replaced = blobs.get_blob_client(*storage_names_split(genuine["blob"]))
    replaced.upload_blob(blobs.get_blob_client(*storage_names_split(other["blob"])).download_blob().readall(),
                         overwrite=True)  # the package the contract pins, swapped in place

    notice = _submit(scenario)
    _assert_failed_before_deploying(stack, scenario, notice, "validating", "does not match the contract")
    # the notices went out as their own retried activities, then were recorded; the outcome stands
    record = wait_for(lambda: (lambda r: r if r.get("notification") else None)(run_record(stack, scenario.run_id)),
                      60, what="the notification on the run record")
    assert record["notification"] == {"event": {"delivered": True}, "webhook": {"delivered": True, "status": 200}}
    assert record["status"] == "failed" and record["failed_phase"] == "validating"


def test_a_package_corrupted_partway_fails_in_the_trainer_and_returns_the_reservation(stack, scenario_factory):
    """One ciphertext byte of a dataset flipped past its header: the control plane's header check
    passes, the trainer is deployed, and its authenticated decryption refuses the package before
    any join. The attested outcome says no data was read, so the reservation goes back whole
    (a corrected retry is not refused as 'budget exhausted')."""
    scenario = scenario_factory()
    scenario.publish_inputs()
    blobs = BlobServiceClient.from_connection_string(stack.settings["CCR_STORAGE_CONNECTION"])
    package = blobs.get_blob_client(*storage_names_split(scenario.published["cowin"]["blob"]))
    body = bytearray(package.download_blob().readall())
    body[-64] ^= 0x01
    package.upload_blob(bytes(body), overwrite=True)

    notice = _submit(scenario)
    assert notice["status"] == "failed" and "failed authentication" in notice["reason"], notice
    record = run_record(stack, scenario.run_id)
    assert record["failed_phase"] == "training" and groups_created(stack, scenario.run_id) == 1
    assert record["privacy_budget_spent"] == {"icmr": 0.0, "cowin": 0.0, "index": 0.0}
    with _environment(stack.settings):
        azure_clients.blob_service.cache_clear()
        budget = PrivacyBudget(azure_clients.blob_service())
        for provider, dataset in contracts.datasets(json.loads((scenario.workdir / "contract.json").read_text())):
            assert scenario.run_id not in budget.runs(contracts.dataset_identity(provider, dataset))


def storage_names_split(path: str) -> tuple[str, str]:
    container, _, name = path.partition("/")
    return container, name


def test_a_provider_that_signed_without_granting_stops_the_run_before_any_reservation(stack, scenario_factory):
    scenario = scenario_factory()
    scenario.publish_inputs()
    scenario.create_identities()
    scenario.sign_and_submit(scenario.write_contract(), without_grant=("cowin",))
    notice = scenario.wait_for_notice(180)
    record = _assert_failed_before_deploying(
        stack, scenario, notice, "gathering_key_grants",
        f"no key grant for dataset cowin (granted by {scenario.identities['cowin']['did']})")
    assert "reserving_budget" not in record["phases"]  # consent first: nothing was reserved


def test_a_grant_bound_to_another_trainer_group_stops_the_run(stack, scenario_factory):
    """cowin's KEK for this contract exists and wraps its real data key, but its release policy
    pins other host data (another trainer image): the control plane refuses before reserving
    or deploying anything."""
    scenario = scenario_factory()
    scenario.publish_inputs()
    scenario.create_identities()
    path = scenario.write_contract()
    payload = json.loads(path.read_text())
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    cowin = scenario.identities["cowin"]["did"]
    subject = f"dataset:{cowin}/cowin"
    other = {**payload, "workloads": {"training": {**payload["workloads"]["training"],
                                                   "image": "ccr-trainer@sha256:" + "ab" * 32}}}
    with _environment({**stack.settings, "CCR_ACCESS_TOKEN": stack.party_token("cowin")}):   # cowin's own token
        kek = key_grants.kek_name(digest, subject)
        public = create_kek(payload["tdps"][1]["key_vault"], kek,
                            contract_policy(stack.settings["CCR_MAA_URL"], other, digest))
        data_key = load_local_key(scenario.keys_dir("cowin"), scenario.published["cowin"]["key_id"])
        upload_text(storage_names.GRANTS, key_grants.grant_blob(digest, subject),
                    key_grants.wrap(data_key, public, kek, scenario.published["cowin"]["key_id"]))
    scenario.sign_and_submit(path, without_grant=("cowin",))
    notice = scenario.wait_for_notice(180)
    _assert_failed_before_deploying(stack, scenario, notice, "gathering_key_grants",
                                    "does not admit this contract's trainer group")


def test_a_contract_written_for_another_skr_sidecar_is_refused_before_any_reservation(stack, scenario_factory):
    """Every party signed and granted, for a group with another SKR sidecar than the platform's
    (CCR_SKR_SIDECAR_IMAGE): the run stops at its first step, nothing reserved or deployed."""
    scenario = scenario_factory()
    scenario.publish_inputs()
    scenario.create_identities()
    other = "registry.example/aci/skr@sha256:" + "5e" * 32
    path = scenario.write_contract(skr_sidecar_image=other)
    assert json.loads(path.read_text())["workloads"]["training"]["skr_sidecar_image"] == other
    scenario.sign_and_submit(path)
    notice = scenario.wait_for_notice(180)
    record = _assert_failed_before_deploying(stack, scenario, notice, "validating",
                                             f"the contract was written for SKR sidecar {other}")
    assert "CCR_SKR_SIDECAR_IMAGE" in notice["reason"] and "reserving_budget" not in record["phases"]


def test_trainer_past_its_deadline_is_killed_and_its_group_deleted(stack, scenario_factory):
    scenario = scenario_factory(deadline_seconds=3)
    scenario.publish_inputs()
    notice = _submit(scenario)
    assert notice["status"] == "failed" and "deadline of 3 s" in notice["reason"], notice
    record = run_record(stack, notice["run_id"])
    assert record["failed_phase"] == "training"
    assert groups_created(stack, scenario.run_id) == 1
    assert f"ccr-{notice['run_id']}" not in remaining_groups(stack)
    # the trainer may have touched the data: its reservation stays spent
    assert set(record["privacy_budget_spent"].values()) == {1.5}


def test_forged_completion_events_are_ignored_and_only_the_attested_outcome_counts(stack, scenario_factory):
    """Anyone holding the topic key can publish "completion" events. A forged failure published
    while the run is still validating (before any trainer exists) and a forged success claiming
    epsilon -50 and a made-up output while it trains are both ignored: the run ends with the
    trainer's own attested outcome, and the budget is charged what that outcome says."""
    scenario = scenario_factory()
    scenario.publish_inputs()
    scenario.create_identities()
    contract = scenario.write_contract()
    run_id = scenario.run_id
    with _environment(stack.settings):
        events.publish(events.TRAINER_FAILED, f"runs/{run_id}", {
            "run_id": run_id, "status": "failed", "error_class": "KeyReleaseError", "message": "forged"})
    scenario.sign_and_submit(contract)
    wait_for(lambda: (run_record(stack, run_id) or {}).get("phase") == "training", 120, what="training to start")
    with _environment(stack.settings):
        events.publish(events.TRAINER_COMPLETED, f"runs/{run_id}", {
            "run_id": run_id, "status": "succeeded", "output_blake3": "0" * 64,
            "output_blob": f"{stack.settings['CCR_FUNCTIONS_URL']}/elsewhere/output.ccr",
            "metrics_summary": {"accuracy": 0.99}, "privacy": {"epsilon": -50, "delta": 1e-5}})

    notice = scenario.wait_for_notice(180)
    assert notice["status"] == "succeeded", notice
    output = scenario.fetch_output(run_id)
    record = run_record(stack, run_id)
    assert record["privacy_budget_spent"] == {name: output["privacy"]["epsilon"] for name in ("icmr", "cowin", "index")}
    assert 0 < output["privacy"]["epsilon"] <= 1.5 and notice["output_blake3"] == output["blake3"]
    assert len(scenario.inbox.notices) == 1
    assert "completion event ignored" in stack.host.logs()


def test_modified_trainer_image_is_refused_and_the_tdc_told(stack, scenario_factory):
    scenario = scenario_factory()
    scenario.publish_inputs()
    if is_registry_reference(scenario.trainer_image):   # the OCI image: its code layer, in the registry
        repository, digest = scenario.trainer_image.split("/", 1)[1].split("@")
        blobs = stack.registry_dir / repository / "blobs" / "sha256"
        manifest = json.loads((blobs / digest.split(":")[1]).read_text())
        archive = blobs / manifest["layers"][-1]["digest"].split(":")[1]
    else:
        archive = stack.state_dir / "images" / f"sha256-{scenario.trainer_image.rsplit(':', 1)[1]}.tar"
    genuine = archive.read_bytes()
    archive.unlink()                          # (a registry blob is a hard link into the build cache)
    archive.write_bytes(genuine[:-1024] + b"\1" + genuine[-1023:])  # someone swapped the trainer's code
    try:
        notice = _submit(scenario)
    finally:
        archive.unlink()
        archive.write_bytes(genuine)
    record = _assert_failed_before_deploying_any_trainer(stack, notice, "deploying", "was refused")
    assert f"ccr-{notice['run_id']}" not in remaining_groups(stack)
    assert record.get("output_blob") is None


# --- contracts refused at the webhook ---------------------------------------------------------

@pytest.fixture
def ready_contract(stack, scenario_factory):
    """Inputs published, identities registered, keys granted: only a good envelope is missing."""
    scenario = scenario_factory()
    scenario.publish_inputs()
    scenario.create_identities()
    payload = json.loads(scenario.write_contract().read_text())
    for party, identity in scenario.identities.items():
        with _environment({**stack.settings, "CCR_ACCESS_TOKEN": stack.party_token(party)}):  # its own token
            grant_keys(payload, identity["did"], scenario.keys_dir(party), stack.settings["CCR_MAA_URL"])
    keys = {party: dids.Identity(identity["did"], dids.load_private_key(Path(identity["key_file"])))
            for party, identity in scenario.identities.items()}
    return scenario, payload, keys


def _post(stack, body: bytes, key: str | None = "default") -> requests.Response:
    headers = {"content-type": "application/cose"}
    if key:
        headers["x-functions-key"] = stack.settings["CCR_FUNCTION_KEY"] if key == "default" else key
    return requests.post(f"{stack.settings['CCR_FUNCTIONS_URL']}/api/contracts", data=body, headers=headers,
                         timeout=60)


def _expired(payload: dict) -> dict:
    return {**payload, "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2021-01-01T00:00:00Z"}


@pytest.mark.parametrize("case, status, reason", [
    ("no function key", 401, None),
    ("wrong function key", 401, None),
    ("not COSE at all", 400, ""),
    ("unsigned", 400, "signature"),
    ("a party did not sign", 422, "not signed by"),
    ("signed with a key not in the DID document", 403, ""),
    ("altered after signing", 403, ""),
    ("expired", 422, "expired"),
])
def test_bad_contract_is_refused_and_starts_nothing(stack, ready_contract, case, status, reason):
    scenario, payload, keys = ready_contract
    signers = list(keys.values())
    if case == "unsigned":
        body = contracts.new_envelope(payload)
    elif case == "a party did not sign":
        body = contracts.sign_contract(payload, signers[:-1])
    elif case == "signed with a key not in the DID document":
        impostor = dids.Identity.generate(signers[0].did)
        body = contracts.sign_contract(payload, [impostor, *signers[1:]])
    elif case == "altered after signing":
        signed = contracts.sign_contract(payload, signers)
        body = signed.replace(b'"epsilon":1.5,', b'"epsilon":1.0,', 1)
        assert body != signed
    elif case == "expired":
        body = contracts.sign_contract(_expired(payload), signers)
    elif case == "not COSE at all":
        body = b"\x00not a contract"
    else:
        body = contracts.sign_contract(payload, signers)

    key = {"no function key": None, "wrong function key": "not-the-key"}.get(case, "default")
    response = _post(stack, body, key)
    assert response.status_code == status, response.text
    if reason is not None:
        assert reason in response.json()["error"].lower()
    run_id = run_id_for(scenario.contract_id, contracts.payload_digest(contracts.canonical_json(payload)))
    assert run_record(stack, run_id) is None
    assert groups_created(stack, run_id) == 0


def test_replayed_contract_gets_the_same_answer_and_one_run(stack, ready_contract):
    scenario, payload, keys = ready_contract
    body = contracts.sign_contract(payload, list(keys.values()))
    first, second = _post(stack, body), _post(stack, body)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json() == {"contract_id": scenario.contract_id, "digest": scenario.digest,
                                             "run_id": scenario.run_id, "status": "accepted"}
    notice = scenario.wait_for_notice(240)
    assert notice["status"] == "succeeded"
    assert _post(stack, body).json() == first.json()
    assert groups_created(stack, scenario.run_id) == 1
    assert len(scenario.inbox.notices) == 1

    # the parties follow it through the status API with `ccr runs`, each as itself
    run_id = scenario.run_id
    shown = scenario.ccr("runs", "show", run_id, party="tdc")
    assert shown["status"] == "succeeded" and shown["output_blob"].endswith(f"outputs/{run_id}/output.ccr")
    assert scenario.ccr("runs", "show", run_id, party="icmr")["status"] == "succeeded"
    assert run_id in [run["run_id"] for run in scenario.ccr("runs", "list", party="cowin")["runs"]]
    with pytest.raises(CommandFailed, match="no such run"):
        scenario.ccr("runs", "show", "run-0000000000000000", party="tdc")
    with pytest.raises(CommandFailed, match="RUN_ID looks like"):
        scenario.ccr("runs", "show", "../admin", party="tdc")
    requests_without_key = requests.get(f"{stack.settings['CCR_FUNCTIONS_URL']}/api/runs/{run_id}", timeout=30)
    assert requests_without_key.status_code == 401


def test_a_population_whose_budget_is_spent_is_refused_even_under_a_new_pseudonym_key(stack, scenario_factory):
    """The budget belongs to the provider's dataset (its DID and name), not to a file: the same
    providers re-preparing the same people under a new pseudonym key (new digests, new data
    keys) in a new contract are refused before any reservation or deployment."""
    first = scenario_factory()
    first.publish_inputs()
    notice = _submit(first)
    assert notice["status"] == "succeeded", notice

    second = scenario_factory()  # a fresh pseudonym key: every prepared file differs
    second.publish_inputs()
    assert all(second.published[n]["blake3"] != first.published[n]["blake3"] for n in first.published)
    second.identities = first.identities  # the same providers and TDC sign again
    second.sign_and_submit(second.write_contract())
    notice = second.wait_for_notice(180)
    record = _assert_failed_before_deploying(stack, second, notice, "reserving_budget",
                                             "privacy budget of dataset icmr: exhausted")
    assert notice["output_blob"] is None
    spent = run_record(stack, first.run_id)["privacy_budget_spent"]
    assert set(record["privacy_budget_spent"].values()) == {0.0} and set(spent.values()) != {0.0}


def test_contract_before_its_last_input_then_that_input_twice_starts_one_run(stack, scenario_factory):
    scenario = scenario_factory()
    scenario.publish_inputs()
    blobs = BlobServiceClient.from_connection_string(stack.settings["CCR_STORAGE_CONNECTION"])
    model = blobs.get_blob_client(*storage_names_split(scenario.model["model"]["blob"]))
    package = model.download_blob().readall()
    model.delete_blob()

    scenario.create_identities()
    seqno = scenario.sign_and_submit(scenario.write_contract())["seqno"]
    run_id = scenario.run_id
    wait_for(lambda: stack.ledger.entry(seqno)["delivery"] == "delivered", 30,
             what="the ledger's delivery to the webhook")
    assert run_record(stack, run_id) is None and groups_created(stack, run_id) == 0

    model.upload_blob(package)
    model.upload_blob(package, overwrite=True)  # the same input again: still one run
    notice = scenario.wait_for_notice(240)
    assert notice["status"] == "succeeded", (notice.get("reason"), notice.get("failed_phase"))
    assert groups_created(stack, run_id) == 1
    assert len(scenario.inbox.notices) == 1
