"""The clean room's first promise against a dishonest party: a provider's data is used only
under a contract that provider signed. The attacks below run on the whole local stack; each
must be refused before any of the victim's keys is released, leave the attacker nothing, and
leave the victim's privacy budget as it was."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path

import cbor2
import pytest
import requests

from ccr.common import save_local_key
from local_emulator.covid_scenario import CovidScenario, TdcInbox, _environment
from local_emulator.stack import RESOURCE_GROUP, wait_for
from orchestrations import deployment
from shared import azure_clients, budget_declaration, key_grants, storage_names
from shared import contract as contracts
from shared import did as dids
from shared.contract_store import contract_key
from shared.privacy_budget import PrivacyBudget
from shared.run_records import run_id_for
from tests.run.conftest import groups_created, run_record


@pytest.fixture(scope="module")
def victim(stack, tmp_path_factory):
    """Three honest providers and their TDC, after one successful run of their own contract,
    which they submitted after a squatter had taken its contract id (`_squat`)."""
    scenario = CovidScenario(stack, tmp_path_factory.mktemp("victim"), contract_id="victim", echo=lambda _: None)
    squatter = TdcInbox().start()
    try:
        scenario.publish_inputs()
        scenario.create_identities()
        path = scenario.write_contract()
        scenario.squatter = _squat(stack, json.loads(path.read_text()), squatter)
        scenario.submitted = scenario.sign_and_submit(path)
        scenario.notice = scenario.wait_for_notice(240)
        assert scenario.notice["status"] == "succeeded", \
            f"the victims' own run failed: {scenario.notice.get('reason')} (run record: {run_record(stack, scenario.run_id)})"
        scenario.payload = json.loads(path.read_text())
        scenario.digest = contracts.payload_digest(contracts.canonical_json(scenario.payload))
        scenario.envelope = (scenario.workdir / "contract.index.cose").read_bytes()
        yield scenario
    finally:
        squatter.stop()
        scenario.close()


def _squat(stack, payload: dict, inbox: TdcInbox) -> dict:
    """An outsider who has seen the victims' contract registers DIDs of its own (with proof: they
    are its keys), declares generous budgets for them, and submits first, fully self-signed, a
    contract under the victims' contract id naming their packages, with itself as TDC and every
    TDP. Waits for that contract's run to end (no party of the victims granted anything to it)."""
    ledger, ca = stack.settings["CCR_LEDGER_URL"], stack.settings["CCR_CA_BUNDLE"]
    roles = [payload["tdc"]["did"]] + [tdp["did"] for tdp in payload["tdps"]]
    own = {did: dids.Identity.generate(stack.ledger.did_for(f"squatter-{i}")) for i, did in enumerate(roles)}
    for identity in own.values():
        response = requests.post(f"{ledger}/dids", json={"document": identity.document(),
                                                         "proof": dids.registration_proof(identity, ledger)},
                                 verify=ca, timeout=30)
        assert response.status_code == 201, response.text
    squatted = json.loads(json.dumps(payload))
    squatted["tdc"]["did"] = own[payload["tdc"]["did"]].did
    squatted["tdc"]["output"]["webhook"] = inbox.url
    for tdp in squatted["tdps"]:
        squatter = own[tdp["did"]]
        tdp["did"] = squatter.did
        for dataset in tdp["datasets"]:
            dataset["budget"] = budget_declaration.declare(squatter, dataset["name"], 60.0, 1e-3)
            response = requests.post(f"{ledger}/budgets", data=dataset["budget"], verify=ca, timeout=30)
            assert response.status_code == 201, response.text
    response = requests.post(f"{ledger}/entries", data=contracts.sign_contract(squatted, list(own.values())),
                             headers={"Content-Type": "application/cose"}, verify=ca, timeout=30)
    assert response.status_code == 201 and response.json()["complete"], response.text
    notice = wait_for(lambda: inbox.notices[-1] if inbox.notices else None, 120, what="the squatter's notice")
    return {**response.json(), "notice": notice}


def test_a_contract_id_squatter_does_not_block_the_genuine_contract(stack, victim):
    """The squatter's contract came first under the same contract id: it was accepted as a
    contract of its own (its digest, its run, which failed for want of grants, with nothing
    deployed), and the victims' contract was accepted after it and ran (the `victim` fixture)."""
    squatter, genuine = victim.squatter, victim.submitted
    assert squatter["contract_id"] == genuine["contract_id"] == "victim"
    assert squatter["seqno"] < genuine["seqno"] and squatter["digest"] != genuine["digest"] == victim.digest
    assert squatter["notice"]["run_id"] == run_id_for("victim", squatter["digest"]) != victim.notice["run_id"]
    assert squatter["notice"]["status"] == "failed" and "no key grant" in squatter["notice"]["reason"]
    assert groups_created(stack, squatter["notice"]["run_id"]) == 0
    assert victim.notice["run_id"] == run_id_for("victim", victim.digest) == victim.run_id
    assert run_record(stack, victim.run_id)["status"] == "succeeded"
    assert groups_created(stack, victim.run_id) == 1
    for seqno in (squatter["seqno"], genuine["seqno"]):
        assert stack.ledger.entry(seqno)["delivery"] == "delivered"
    with _environment(stack.settings):
        azure_clients.blob_service.cache_clear()
        stored = azure_clients.blob_service().get_container_client(storage_names.CONTRACTS)
        for digest in (squatter["digest"], genuine["digest"]):
            assert stored.get_blob_client(f"{contract_key('victim', digest)}.json").exists()


def _victim_budget(stack, victim) -> dict[str, list]:
    with _environment(stack.settings):
        azure_clients.blob_service.cache_clear()
        budget = PrivacyBudget(azure_clients.blob_service())
        return {dataset["name"]: budget.runs(contracts.dataset_identity(did, dataset))
                for did, dataset in contracts.datasets(victim.payload)}


def payload_of(scenario) -> dict:
    return json.loads((scenario.workdir / "contract.json").read_text())


def digest_of(scenario) -> str:
    return contracts.payload_digest(contracts.canonical_json(payload_of(scenario)))


def _victim_keks(victim) -> set[str]:
    return {key_grants.kek_name(victim.digest, s.subject) for s in key_grants.subjects(victim.payload)}


def _granted(stack, names: set[str], since: int) -> list[str]:
    """Which of `names` Key Vault released after its `since`-th release operation."""
    return [name for name, outcome in stack.keyvault.releases[since:] if name in names and outcome == "granted"]


def _copy_victim_datasets(stack, victim, attacker) -> None:
    """The attacker copies the victim's encrypted datasets to a place of its own and names them,
    with their digests and data key ids, in its own contract with itself as every provider."""
    with _environment(stack.settings):
        azure_clients.blob_service.cache_clear()
        service = azure_clients.blob_service()
        for name, published in victim.published.items():
            source = service.get_blob_client(*published["blob"].split("/", 1))
            target = f"evil/{name}/{published['key_id']}.ccr"
            service.get_blob_client(storage_names.DATASETS, target).upload_blob(
                source.download_blob().readall(), overwrite=True)
            attacker.published[name] = {**published, "dataset": name, "blob": f"{storage_names.DATASETS}/{target}"}
            (attacker.workdir / f"{name}.published.json").write_text(json.dumps(attacker.published[name]))


@pytest.fixture
def attacker(stack, scenario_factory, victim):
    scenario = scenario_factory(epsilon=60.0)  # its training config asks what its contract asks
    scenario.build_trainer_image()
    scenario.publish_model()     # the attacker is the TDC, with its own model and output key
    _copy_victim_datasets(stack, victim, scenario)
    scenario.create_identities()
    return scenario


def test_a_contract_the_victim_never_signed_gets_no_grant_and_starts_nothing(stack, victim, attacker):
    budget_before, releases_before = _victim_budget(stack, victim), len(stack.keyvault.releases)
    attacker.sign_and_submit(attacker.write_contract(epsilon=60.0), without_grant=("icmr", "cowin", "index"))
    notice = attacker.wait_for_notice(180)
    assert notice["status"] == "failed" and "no key grant for dataset icmr" in notice["reason"], notice
    record = run_record(stack, notice["run_id"])
    assert record["failed_phase"] == "gathering_key_grants" and "reserving_budget" not in record["phases"]
    assert groups_created(stack, attacker.run_id) == 0 and notice["output_blob"] is None
    assert len(stack.keyvault.releases) == releases_before  # nothing was even asked of Key Vault
    assert _victim_budget(stack, victim) == budget_before


def test_forged_grants_release_only_the_attackers_own_keys_and_decrypt_nothing(stack, victim, attacker):
    """The attacker 'grants' made-up data keys under the victim's key ids with KEKs of its own:
    the run deploys (those grants pin the attacker's contract), but the victim's packages do
    not open under them, the victim's KEKs are never released, and its budget is untouched."""
    budget_before, releases_before = _victim_budget(stack, victim), len(stack.keyvault.releases)
    for party in ("icmr", "cowin", "index"):
        save_local_key(attacker.keys_dir(party), victim.published[party]["key_id"], secrets.token_bytes(32))
    attacker.sign_and_submit(attacker.write_contract(epsilon=60.0))
    notice = attacker.wait_for_notice(240)
    assert notice["status"] == "failed" and "WrongKey" in notice["reason"], notice
    assert notice["output_blob"] is None
    assert _granted(stack, _victim_keks(victim), releases_before) == []
    attackers = {key_grants.kek_name(digest_of(attacker), s.subject) for s in key_grants.subjects(payload_of(attacker))}
    assert set(_granted(stack, attackers, releases_before)) >= {key_grants.kek_name(digest_of(attacker), "model")}
    assert _victim_budget(stack, victim) == budget_before


# --- the control plane bypassed: container groups deployed straight on the ACI twin ----------

def _deploy_directly(stack, record: dict) -> str:
    """What a party holding ARM rights could do: deploy a trainer group of its choosing with the
    real trainer image; returns the trainer's log once it has exited (the group is deleted)."""
    run = {"run_id": f"run-{secrets.token_hex(8)}", "nonce": secrets.token_hex(16), "deadline_seconds": 300}
    name = f"direct-{run['run_id']}"
    with _environment(stack.settings):
        azure_clients.blob_service.cache_clear()
        client = azure_clients.container_client()
        client.container_groups.begin_create_or_update(
            RESOURCE_GROUP, name, deployment.trainer_container_group(run, record)).result()

        def exited():
            trainer = client.container_groups.get(RESOURCE_GROUP, name).containers[0]
            return trainer.instance_view.current_state.state == "Terminated"
        wait_for(exited, 180, what="the directly deployed trainer to exit")
        logs = client.containers.list_logs(RESOURCE_GROUP, name, "trainer").content or ""
        client.container_groups.begin_delete(RESOURCE_GROUP, name).result()
    return logs


def _record(payload: dict, digest: str, envelope: bytes) -> dict:
    return {"payload": payload, "digest": digest, "envelope": base64.b64encode(envelope).decode()}


def _signed(victim, payload: dict, parties=("tdc", "icmr", "cowin", "index")) -> bytes:
    keys = [dids.Identity(victim.identities[p]["did"], dids.load_private_key(Path(victim.identities[p]["key_file"])))
            for p in parties]
    return contracts.sign_contract(payload, keys)


def test_the_victims_group_handed_another_contract_refuses_before_any_key(stack, victim, attacker):
    """The victim's measured policy (its contract digest), but CCR_CONTRACT carrying the
    attacker's fully signed contract: the trainer sees the digest differ and asks for nothing."""
    attacker.sign_and_submit(attacker.write_contract(epsilon=60.0), without_grant=("icmr", "cowin", "index"))
    forged = (attacker.workdir / "contract.index.cose").read_bytes()
    releases_before = len(stack.keyvault.releases)
    logs = _deploy_directly(stack, _record(victim.payload, victim.digest, forged))
    assert "failed: ConsentError: the contract handed to the trainer is not the one its container policy " \
           "was measured with" in logs, logs
    assert len(stack.keyvault.releases) == releases_before


def test_the_attackers_own_group_cannot_have_the_victims_keys(stack, victim, attacker):
    """The attacker's contract in a group measured with it: consent checks pass (the attacker
    signed everything), but no KEK exists for that contract and the victim's KEKs pin the
    victim's contract, so nothing of the victim's is released."""
    path = attacker.write_contract(epsilon=60.0)
    attacker.sign_and_submit(path, without_grant=("icmr", "cowin", "index"))
    payload = json.loads(path.read_text())
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    envelope = (attacker.workdir / "contract.index.cose").read_bytes()
    releases_before = len(stack.keyvault.releases)
    logs = _deploy_directly(stack, _record(payload, digest, envelope))
    assert "failed: KeyReleaseError" in logs or "failed: BlobAccessError" in logs, logs
    assert _granted(stack, _victim_keks(victim), releases_before) == []


@pytest.mark.parametrize("case", ["changed after signing", "a provider signed an older version",
                                  "a provider missing", "the TDC missing"])
def test_contract_matrix_in_a_directly_deployed_group_releases_nothing(stack, victim, case):
    """Each envelope deployed in a group whose policy carries ITS payload's digest (so the
    digest check passes): the trainer's own signature check refuses, with the reason in its
    log, before any key is asked for."""
    payload = {**victim.payload, "purpose": "the same parties, other terms"}
    if case == "changed after signing":
        body = cbor2.loads(_signed(victim, victim.payload))
        body.value[2] = contracts.canonical_json(payload)  # every signature is over the old terms
        envelope, expected = cbor2.dumps(body), "BadSignature"
    elif case == "a provider signed an older version":
        body = cbor2.loads(_signed(victim, payload, ("tdc", "icmr", "index")))
        body.value[3].append(cbor2.loads(_signed(victim, victim.payload, ("cowin",))).value[3][0])
        envelope, expected = cbor2.dumps(body), "BadSignature"
    elif case == "a provider missing":
        envelope, expected = _signed(victim, payload, ("tdc", "icmr", "index")), "MissingSigner"
    else:
        envelope, expected = _signed(victim, payload, ("icmr", "cowin", "index")), "MissingSigner"
    measured = contracts.envelope_signers(envelope)[0]
    digest = contracts.payload_digest(contracts.canonical_json(measured))
    releases_before = len(stack.keyvault.releases)
    logs = _deploy_directly(stack, _record(measured, digest, envelope))
    assert "failed: ConsentError: the contract is not signed by every party: " + expected in logs, logs
    assert len(stack.keyvault.releases) == releases_before


def test_no_party_credential_writes_the_budget_contracts_or_run_records(stack, victim, attacker):
    """Only the control plane writes the budget ledger, contract records and run records. A
    party's settings carry no account key (and the stack's Azurite refuses its public
    development key); the one storage credential a party can obtain, a SAS from the clean room,
    is refused for those and for the victim's own blobs; the attacker does not even see the
    victim's run. The victim's budget is as it was."""
    from azure.core.exceptions import HttpResponseError
    from azure.storage.blob import BlobServiceClient

    from ccr.party import PartySession
    from local_emulator.azurite import ACCOUNT_KEY, connection_string
    budget_before = _victim_budget(stack, victim)
    settings = {name: value for name, value in attacker.party_environment("tdc").items() if value}
    assert {"CCR_STORAGE_CONNECTION", "AzureWebJobsStorage", "CCR_FUNCTION_KEY", "CCR_PARTY_AUTH_SECRET",
            "CCR_EVENTGRID_KEY"}.isdisjoint(settings)
    assert not any("AccountKey=" in value or "sig=" in value for value in settings.values())

    budget_blobs = [f"budget/{hashlib.sha256(contracts.dataset_identity(did, dataset).encode()).hexdigest()}.json"
                    for did, dataset in contracts.datasets(victim.payload)]
    public = connection_string(stack.azurite.urls["blob"], stack.azurite.urls["queue"], stack.azurite.urls["table"],
                               ACCOUNT_KEY)
    with pytest.raises(HttpResponseError):
        BlobServiceClient.from_connection_string(public).get_blob_client(storage_names.RUNS, budget_blobs[0]) \
            .upload_blob(b'{"runs": {}}', overwrite=True)

    tdc = attacker.identities["tdc"]
    session = PartySession(f"{stack.settings['CCR_FUNCTIONS_URL']}/api",
                           dids.Identity(tdc["did"], dids.load_private_key(Path(tdc["key_file"]))))
    victim_grant = key_grants.grant_path(victim.digest, key_grants.subjects(victim.payload)[0].subject)
    targets = [*(f"{storage_names.RUNS}/{name}" for name in budget_blobs),
               f"{storage_names.RUNS}/records/{victim.run_id}.json",
               f"{storage_names.CONTRACTS}/{contract_key('victim', victim.digest)}.json",
               *(published["blob"] for published in victim.published.values()), victim.model["model"]["blob"],
               f"{storage_names.OUTPUTS}/{storage_names.output_blob(victim.run_id)}"]
    for blob in targets:
        for permission in ("create", "read"):
            response = session.request("POST", "sas", json={"blob": blob, "permission": permission})
            assert response.status_code == 403, (blob, permission, response.text)
    grant = session.request("POST", "sas", json={"blob": victim_grant, "permission": "create",
                                                 "contract": victim.payload})
    assert grant.status_code == 403 and "not a party" in grant.json()["error"]
    assert session.request("GET", f"runs/{victim.run_id}").status_code == 404
    assert victim.run_id not in [run["run_id"] for run in session.request("GET", "runs").json()]
    assert _victim_budget(stack, victim) == budget_before
