"""What the trainer can do in storage with what the control plane gives it, proved against
Azurite (which enforces SAS permissions): the per-blob SAS URLs of the container group spec
read the run's inputs (packages and their grants) and create its output once, and nothing else; the spec carries no
connection string or account key."""
from __future__ import annotations

import base64
import json
import secrets
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient

from local_emulator.azurite import ACCOUNT_KEY
from orchestrations import deployment
from shared import azure_clients, budget_declaration, contract, did, key_grants, storage_names
from shared.blob_sas import READ_ONLY, SasError, blob_sas_url
from shared.container_group import TRAINER_CONTAINER_NAME, policy_template_sha256, training_cce_policy
from shared.contract_store import contract_inputs
from shared.credentials import StaticTokenCredential

DEADLINE_SECONDS = 600
IMAGE = f"ccr-trainer@sha256:{'a' * 64}"


@pytest.fixture
def service(azurite, tmp_path, monkeypatch) -> BlobServiceClient:
    """The control plane's settings: storage from AzureWebJobsStorage only, no emulator state."""
    monkeypatch.delenv("CCR_STORAGE_CONNECTION", raising=False)
    for name, value in {"AzureWebJobsStorage": azurite.connection_string, "CCR_EMULATOR_DIR": str(tmp_path),
                        "CCR_MAA_URL": "https://maa.test",
                        "CCR_EVENTGRID_TOPIC_URL": "http://127.0.0.1:9/api/events",
                        "CCR_EVENTGRID_KEY": "topic-key"}.items():
        monkeypatch.setenv(name, value)
    azure_clients.blob_service.cache_clear()
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    for container in (storage_names.DATASETS, storage_names.MODELS, storage_names.OUTPUTS, storage_names.GRANTS):
        if not service.get_container_client(container).exists():
            service.create_container(container)
    yield service
    service.close()
    azure_clients.blob_service.cache_clear()


def _publish(service: BlobServiceClient, contract_id: str) -> dict:
    """A signed schema-2 contract, its input blobs and its grants; returns {record, contents}
    (`record` as the contract store keeps it: payload, digest, base64 envelope)."""
    identities = {name: did.Identity.generate(f"did:web:parties.test:{contract_id}-{name}")
                  for name in ("tdc", "icmr", "cowin")}
    key_id = lambda name: f"{contract_id}-{name}"
    owned = lambda name: storage_names.dataset_blob(f"{contract_id}-{name}", name, key_id(name))
    datasets = [{"name": name, "version": 1, "blob": f"{storage_names.DATASETS}/{owned(name)}",
                 "sha256": "0" * 64, "key_id": key_id(name), "epsilon": 1.5,
                 "budget": budget_declaration.declare(identities[name], name, 1.5, 1e-5)}
                for name in ("icmr", "cowin")]
    payload = {"schema_version": 2, "contract_id": contract_id, "purpose": "storage access",
               "valid_from": "2020-01-01T00:00:00Z", "valid_until": "2099-01-01T00:00:00Z",
               "tdc": {"did": identities["tdc"].did, "key_vault": "https://tdc.vault.test",
                       "model": {"blob": f"{storage_names.MODELS}/"
                                         f"{storage_names.model_blob(contract_id + '-tdc', key_id('model'))}",
                                 "sha256": "0" * 64, "key_id": key_id("model")},
                       "output": {"key_id": key_id("output")}},
               "tdps": [{"did": identities[d["name"]].did, "key_vault": f"https://{d['name']}.vault.test",
                         "datasets": [d]} for d in datasets],
               "privacy": {"delta": 1e-5}, "evaluation": {"validation_split": 0.2, "min_joined_rows": 100},
               "workloads": {"training": {"image": IMAGE, "policy_template_sha256": policy_template_sha256(IMAGE),
                                          "join": {}, "deadline_seconds": DEADLINE_SECONDS}}}
    envelope = contract.sign_contract(payload, list(identities.values()))
    digest = contract.payload_digest(contract.canonical_json(payload))
    contents = {}
    paths = [item["blob"] for item in contract_inputs(payload)]
    grants = [key_grants.grant_path(digest, s.subject) for s in key_grants.subjects(payload)]
    for path in paths + grants:
        contents[path] = secrets.token_bytes(64)
        container, _, name = path.partition("/")
        service.get_blob_client(container, name).upload_blob(contents[path])
    record = {"payload": payload, "digest": digest, "envelope": base64.b64encode(envelope).decode()}
    return {"record": record, "contents": contents, "grants": grants}


@pytest.fixture
def run(service):
    """A deployable run of contract A, its spec and SAS set, and contract B's blobs beside it."""
    mine, other = _publish(service, f"a-{uuid.uuid4().hex[:8]}"), _publish(service, f"b-{uuid.uuid4().hex[:8]}")
    run = {"run_id": f"run-{secrets.token_hex(8)}", "contract_id": mine["record"]["payload"]["contract_id"],
           "deadline_seconds": DEADLINE_SECONDS, "nonce": secrets.token_hex(16)}  # drawn at deployment
    signed_at = datetime.now(timezone.utc)
    group = deployment.trainer_container_group(run, mine["record"])
    trainer = next(c for c in group.containers if c.name == TRAINER_CONTAINER_NAME)
    env = {v.name: v for v in trainer.environment_variables}
    return {"run": run, "group": group, "env": env, "urls": json.loads(env["CCR_BLOB_URLS"].secure_value),
            "inputs": mine["contents"], "grants": mine["grants"], "other": other["contents"],
            "record": mine["record"], "output": storage_names.output_path(run["run_id"]), "signed_at": signed_at}


def _refused(action) -> int:
    with pytest.raises(HttpResponseError) as refused:
        action()
    return refused.value.status_code


def _client(path: str, sas_url: str, service: BlobServiceClient) -> BlobClient:
    """`path` reached with the SAS token of `sas_url` (the token, not the blob it was signed for)."""
    container, _, name = path.partition("/")
    return BlobClient(service.url, container, name, credential=urlsplit(sas_url).query)


def test_the_sas_set_is_exactly_the_runs_blobs_read_only_and_create_only(run):
    urls = run["urls"]
    assert set(urls) == {*run["inputs"], run["output"]}
    assert set(run["grants"]) < set(run["inputs"]) and len(run["grants"]) == 4  # each dataset's, model's, output's
    for path, url in urls.items():
        query = parse_qs(urlsplit(url).query)
        assert query["sp"] == (["c"] if path == run["output"] else ["r"]), path
        assert query["sr"] == ["b"] and "spr" not in query  # Azurite is http: no https-only flag
        expiry = datetime.fromisoformat(query["se"][0].replace("Z", "+00:00"))
        expected = run["signed_at"] + timedelta(seconds=DEADLINE_SECONDS) + deployment.SAS_MARGIN
        assert abs((expiry - expected).total_seconds()) < 60
        assert urlsplit(url).path.endswith("/" + path)


def test_the_trainer_reads_its_inputs(run):
    for path, content in run["inputs"].items():
        with BlobClient.from_blob_url(run["urls"][path]) as blob:
            assert blob.download_blob().readall() == content


def test_no_sas_of_the_set_reads_another_contracts_blob(run, service):
    for sas_url in run["urls"].values():
        for path in run["other"]:
            assert _refused(lambda: _client(path, sas_url, service).download_blob().readall()) == 403
    # nor another blob of its own run: each SAS is for its one blob
    model, dataset = sorted(run["inputs"])[-1], sorted(run["inputs"])[0]
    assert _refused(lambda: _client(dataset, run["urls"][model], service).download_blob().readall()) == 403


def test_inputs_cannot_be_overwritten_or_deleted(run, service):
    for path, content in run["inputs"].items():
        with BlobClient.from_blob_url(run["urls"][path]) as blob:
            assert _refused(lambda: blob.upload_blob(b"replaced", overwrite=True)) == 403
            assert _refused(lambda: blob.delete_blob()) == 403
            assert _refused(lambda: blob.set_blob_metadata({"touched": "yes"})) == 403
        container, _, name = path.partition("/")
        assert service.get_blob_client(container, name).download_blob().readall() == content


def test_the_output_is_created_once_and_never_overwritten_read_or_deleted(run, service):
    with BlobClient.from_blob_url(run["urls"][run["output"]]) as output:
        output.upload_blob(b"the encrypted model")
        assert _refused(lambda: output.upload_blob(b"a second model", overwrite=True)) in (403, 409)
        assert _refused(lambda: output.upload_blob(b"a second model")) in (403, 409)
        assert _refused(lambda: output.download_blob().readall()) == 403
        assert _refused(lambda: output.delete_blob()) == 403
    container, _, name = run["output"].partition("/")
    assert service.get_blob_client(container, name).download_blob().readall() == b"the encrypted model"
    # and the output SAS cannot write any other blob, an input least of all
    for path in run["inputs"]:
        assert _refused(lambda: _client(path, run["urls"][run["output"]], service).upload_blob(b"x", overwrite=True)) == 403


def test_no_sas_of_the_set_lists_containers_or_blobs(run, service):
    for sas_url in run["urls"].values():
        token = urlsplit(sas_url).query
        assert _refused(lambda: list(BlobServiceClient(service.url, credential=token).list_containers())) == 403
        for container in (storage_names.DATASETS, storage_names.MODELS, storage_names.OUTPUTS, storage_names.GRANTS):
            assert _refused(lambda: list(ContainerClient(service.url, container, credential=token).list_blobs())) == 403


def test_the_group_spec_has_no_connection_string_or_account_key(run, azurite):
    serialized = json.dumps(run["group"].serialize())
    assert ACCOUNT_KEY not in serialized and "AccountKey" not in serialized
    assert azurite.connection_string not in serialized
    for container in run["group"].containers:
        for variable in container.environment_variables or []:
            assert variable.name not in ("CCR_STORAGE_CONNECTION", "AzureWebJobsStorage")
            for value in (variable.value, variable.secure_value):
                assert value is None or (ACCOUNT_KEY not in value and "AccountKey" not in value)
    assert run["env"]["CCR_BLOB_URLS"].value is None  # a secure value: ARM never returns it


def test_the_trainer_gets_the_signed_envelope_and_the_digest_its_policy_pins(run):
    env, record = run["env"], run["record"]
    assert env["CCR_CONTRACT"].value == record["envelope"]
    assert env["CCR_CONTRACT_DIGEST"].value == record["digest"]
    assert run["group"].confidential_compute_properties.cce_policy == training_cce_policy(IMAGE, record["digest"])
    assert "CCR_EPSILON_BUDGET" not in env  # the budget is the signed contract's, nothing else


def test_an_https_endpoint_gets_https_only_sas():
    account_key = "a2V5LWZvci10ZXN0cw=="
    service = BlobServiceClient.from_connection_string(
        f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={account_key};EndpointSuffix=core.windows.net")
    url = blob_sas_url(service, "datasets/c1/icmr.ccr", READ_ONLY, datetime.now(timezone.utc) + timedelta(hours=1))
    assert url.startswith("https://acct.blob.core.windows.net/datasets/c1/icmr.ccr?")
    assert parse_qs(urlsplit(url).query)["spr"] == ["https"] and account_key not in url


def test_a_client_without_an_account_key_signs_only_with_a_user_delegation_key():
    # no account key: the SAS needs a user delegation key, and a client that cannot get one
    # (here: nothing listens) cannot sign (tests/infra/test_user_delegation_sas.py signs with one)
    service = BlobServiceClient("https://127.0.0.1:9/devstoreaccount1", credential=StaticTokenCredential("t"),
                                retry_total=0)
    with pytest.raises(SasError, match="user delegation key"):
        blob_sas_url(service, "datasets/c1/icmr.ccr", READ_ONLY, datetime.now(timezone.utc) + timedelta(hours=1))
