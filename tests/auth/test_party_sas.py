"""POST /api/sas: a party's only storage credential is a SAS for one blob of its own. Asked
through the real app, then used against real Azurite: a party creates (once) and reads back
its own packages and grants, reads the output of its own run as TDC, and gets nothing for
another party's prefix, the budget ledger, contract records or run records; no SAS a party
can obtain writes what only the control plane writes."""
from __future__ import annotations

import pytest
import requests
from azure.storage.blob import BlobClient

from shared import key_grants, storage_names
from tests.auth.conftest import blob_service, post

PUT = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06"}


def sas(app, token: str, blob: str, permission: str = "create", contract: dict | None = None) -> requests.Response:
    return post(app, "sas", {"blob": blob, "permission": permission, **({"contract": contract} if contract else {})},
                token)


def sas_url(app, token: str, blob: str, permission: str = "create", contract: dict | None = None) -> str:
    response = sas(app, token, blob, permission, contract)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    return response.json()["url"]


def put(url: str, data: bytes, create_once: bool = True) -> int:
    return requests.put(url, data=data, headers={**PUT, **({"If-None-Match": "*"} if create_once else {})},
                        timeout=30).status_code


def test_a_party_creates_its_own_dataset_once_and_reads_it_back(app, tokens, azurite):
    blob = "datasets/icmr/icmr/icmr-own.ccr"
    create = sas_url(app, tokens["icmr"], blob)
    assert "sp=c&" in create and "sr=b&" in create
    assert put(create, b"package v1") == 201
    assert put(create, b"package v2") in (403, 409) and put(create, b"package v2", create_once=False) == 403
    assert requests.get(create, timeout=30).status_code == 403          # create-only: no read
    assert requests.delete(create, timeout=30).status_code == 403       # nor delete
    read = sas_url(app, tokens["icmr"], blob, "read")
    assert BlobClient.from_blob_url(read).download_blob().readall() == b"package v1"
    assert put(read, b"package v3", create_once=False) == 403           # read-only: no write
    assert blob_service(azurite).get_blob_client("datasets", "icmr/icmr/icmr-own.ccr").download_blob().readall() \
        == b"package v1"
    model = sas_url(app, tokens["tdc"], "models/tdc/model-own.ccr")
    assert put(model, b"model") == 201


def test_a_sas_reaches_only_its_own_blob(app, tokens, azurite):
    """The signature covers one blob: the same query on another path (another provider's
    dataset, the budget ledger) is refused by storage."""
    sas_query = sas_url(app, tokens["icmr"], "datasets/icmr/icmr/scope.ccr").split("?", 1)[1]
    base = blob_service(azurite).url.rstrip("/")
    victim = blob_service(azurite).get_blob_client("datasets", "cowin/cowin/victim.ccr")
    victim.upload_blob(b"cowin's package", overwrite=True)
    for path in ("datasets/cowin/cowin/victim.ccr", "datasets/cowin/cowin/new.ccr", "runs/budget/x.json",
                 "runs/records/run-0000000000000000.json", "contracts/x.json"):
        assert put(f"{base}/{path}?{sas_query}", b"{}", create_once=False) == 403, path
        assert requests.get(f"{base}/{path}?{sas_query}", timeout=30).status_code == 403, path
    assert victim.download_blob().readall() == b"cowin's package"


@pytest.mark.parametrize("blob, reason", [
    ("datasets/cowin/cowin/mine-now.ccr", "only under its own name (datasets/icmr/...)"),
    ("models/tdc/model-x.ccr", "only under its own name (models/icmr/...)"),
    ("datasets/icmr", "only under its own name"),
    ("runs/budget/" + "0" * 64 + ".json", "runs/ is written and read by the control plane only"),
    ("runs/records/run-0000000000000000.json", "runs/ is written and read by the control plane only"),
    ("contracts/auth-a.json", "contracts/ is written and read by the control plane only"),
    ("contracts/auth-a@" + "0" * 64 + ".json", "contracts/ is written and read by the control plane only"),
    ("runs/../datasets/icmr/x", "runs/ is written and read by the control plane only"),
    ("contracts/inputs/" + "0" * 64 + "/auth-a", "contracts/ is written and read by the control plane only"),
    ("azure-webjobs-hosts/locks/x", "no SAS in container"),
])
@pytest.mark.parametrize("permission", ["create", "read"])
def test_no_sas_outside_the_partys_own_blobs(app, tokens, blob, reason, permission):
    response = sas(app, tokens["icmr"], blob, permission)
    assert response.status_code == 403 and reason in response.json()["error"], response.text
    assert "sig=" not in response.text


@pytest.mark.parametrize("blob", ["datasets/icmr/../cowin/x.ccr", "datasets/icmr//x.ccr", "datasets/icmr/./x",
                                  "/datasets/icmr/x", "datasets", "datasets/icmr/x y", ""])
def test_malformed_blob_paths_are_refused(app, tokens, blob):
    assert sas(app, tokens["icmr"], blob).status_code == 400


def test_no_sas_without_a_valid_token(app, tokens):
    assert post(app, "sas", {"blob": "datasets/icmr/icmr/x.ccr", "permission": "create"}).status_code == 401
    assert sas(app, tokens["icmr"] + "x", "datasets/icmr/icmr/x.ccr").status_code == 401
    assert sas(app, tokens["icmr"], "datasets/icmr/icmr/x.ccr", "write").status_code == 400
    assert sas(app, tokens["icmr"], "datasets/icmr/icmr/x.ccr", ["read"]).status_code == 400
    assert post(app, "sas", {"blob": ["datasets"], "permission": "read"}, tokens["icmr"]).status_code == 400
    assert post(app, "sas", ["not", "an", "object"], tokens["icmr"]).status_code == 400


def test_grants_only_for_the_keys_a_party_grants_in_a_contract_it_is_party_of(app, tokens, stored):
    payload, digest = stored["a"]["payload"], stored["a"]["digest"]
    subjects = {s.subject: s for s in key_grants.subjects(payload)}
    icmr_subject = next(s for s in subjects if s.startswith("dataset:") and s.endswith("/icmr"))
    own = f"grants/{key_grants.grant_blob(digest, icmr_subject)}"
    url = sas_url(app, tokens["icmr"], own, "create", payload)
    assert put(url, b"wrapped") == 201 and put(url, b"replaced") in (403, 409)
    assert BlobClient.from_blob_url(sas_url(app, tokens["icmr"], own, "read", payload)).download_blob().readall() \
        == b"wrapped"
    for party, blob, contract, reason in [
        ("icmr", f"grants/{key_grants.grant_blob(digest, 'model')}", payload, "not one of yours"),
        ("cowin", own, payload, "not one of yours"),
        ("index", own, payload, "not a party to this contract"),
        ("icmr", f"grants/{stored['b']['digest']}/{own.rsplit('/', 1)[1]}", payload, "digest must be that of"),
        ("index", f"grants/{key_grants.grant_blob(stored['b']['digest'], 'model')}", stored["b"]["payload"],
         "not one of yours"),
    ]:
        response = sas(app, tokens[party], blob, "create", contract)
        assert response.status_code == 403 and reason in response.json()["error"], (party, blob, response.text)
    missing = sas(app, tokens["icmr"], own, "create")
    assert missing.status_code == 400 and "needs the contract payload" in missing.json()["error"]
    altered = {**payload, "purpose": "something else"}
    assert sas(app, tokens["icmr"], own, "create", altered).status_code == 403  # another digest


def test_only_the_runs_tdc_reads_its_output(app, tokens, stored):
    run_a, run_b = stored["a"]["run_id"], stored["b"]["run_id"]
    output = f"{storage_names.OUTPUTS}/{storage_names.output_blob(run_a)}"
    assert BlobClient.from_blob_url(sas_url(app, tokens["tdc"], output, "read")).download_blob().readall() \
        == b"output a"
    for party, blob, permission in [("icmr", output, "read"), ("rival", output, "read"), ("tdc", output, "create"),
                                    ("tdc", f"outputs/{storage_names.output_blob(run_b)}", "read"),
                                    ("tdc", "outputs/run-0000000000000000/output.ccr", "read"),
                                    ("tdc", f"outputs/{run_a}/other.ccr", "read")]:
        response = sas(app, tokens[party], blob, permission)
        assert response.status_code == 403, (party, blob, permission)
