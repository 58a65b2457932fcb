"""User-delegation SAS, as the deployment signs them (its storage allows no shared key): against
a second Azurite started with `--oauth basic` over HTTPS (the loopback CA of local_emulator/tls.py),
the control plane's client built from identity-based settings (AzureWebJobsStorage__blobServiceUri
and a bearer token, no account key) signs the trainer's per-blob SAS with a user delegation key,
and those SAS allow what the account-key SAS of tests/trainer/test_blob_access.py allow: read each
input, create the output once, and nothing else."""
from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient

from local_emulator import tls as loopback_tls
from local_emulator.azurite import ACCOUNT, ACCOUNT_KEY
from shared import azure_clients, party_sas, storage_names
from shared.blob_sas import trainer_blob_urls
from tests.conftest import PROJECT_ROOT

_LISTENING = re.compile(r"Azurite Blob service (?:is successfully listening at|successfully listens on) (https://\S+)")


def fake_entra_token(tenant: str = "72f988bf-86f1-41af-91ab-2d7cd011db47") -> str:
    """A JWT of the shape Entra ID issues for storage; Azurite's `--oauth basic` checks its
    issuer, audience and lifetime, not its signature."""
    def part(value: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()
    now = int(time.time())
    claims = {"aud": "https://storage.azure.com", "iss": f"https://sts.windows.net/{tenant}/", "iat": now - 60,
              "nbf": now - 60, "exp": now + 3600, "oid": "11111111-2222-3333-4444-555555555555", "tid": tenant}
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.{part({'sig': secrets.token_hex(8)})}"


@pytest.fixture(scope="module")
def oauth_azurite(tmp_path_factory):
    """Azurite's blob service with OAuth (basic) over HTTPS on a free loopback port."""
    folder = tmp_path_factory.mktemp("azurite-oauth")
    tls = loopback_tls.load_or_create(folder)
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(b"".join(tls.server_certificate_chain_pem()[:-1]))
    loopback_tls.write_private(key, tls.server_private_key_pem())
    process = subprocess.Popen([str(PROJECT_ROOT / "node_modules" / ".bin" / "azurite-blob"),
                                "--location", str(folder / "data"), "--blobHost", "127.0.0.1", "--blobPort", "0",
                                "--oauth", "basic", "--cert", str(cert), "--key", str(key),
                                "--skipApiVersionCheck", "--loose"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    found: list[str] = []
    ready = threading.Event()

    def read():
        for line in process.stdout:
            match = _LISTENING.search(line)
            if match and not found:
                found.append(match.group(1))
                ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert ready.wait(30) and found, "Azurite (oauth, https) did not start"
        yield {"url": f"{found[0]}/{ACCOUNT}", "ca": str(tls.ca_path)}
    finally:
        process.terminate()
        try:
            process.wait(1)  # it waits for idle keep-alive clients; its data is thrown away
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        reader.join(5)


@pytest.fixture
def admin(oauth_azurite) -> BlobServiceClient:
    """The test's own account-key client, to lay out blobs and check what the SAS did."""
    connection = (f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
                  f"BlobEndpoint={oauth_azurite['url']};")
    service = BlobServiceClient.from_connection_string(connection, connection_verify=oauth_azurite["ca"])
    for container in (storage_names.DATASETS, storage_names.MODELS, storage_names.OUTPUTS, storage_names.GRANTS):
        if not service.get_container_client(container).exists():
            service.create_container(container)
    yield service
    service.close()


@pytest.fixture
def control_plane(oauth_azurite, monkeypatch) -> BlobServiceClient:
    """The app's client from identity-based settings only: no connection string, no key."""
    for name in ("AzureWebJobsStorage", "CCR_STORAGE_CONNECTION", "CCR_STORAGE_CONNECTION__accountName",
                 "CCR_STORAGE_CONNECTION__blobServiceUri"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AzureWebJobsStorage__blobServiceUri", oauth_azurite["url"])
    monkeypatch.setenv("CCR_ACCESS_TOKEN", fake_entra_token())   # stands in for the managed identity's token
    monkeypatch.setenv("CCR_CA_BUNDLE", oauth_azurite["ca"])
    azure_clients.blob_service.cache_clear()
    service = azure_clients.blob_service()
    yield service
    azure_clients.blob_service.cache_clear()


def _publish(admin: BlobServiceClient) -> dict[str, bytes]:
    tag = secrets.token_hex(4)
    paths = [f"{storage_names.DATASETS}/p-{tag}/icmr/k1.ccr", f"{storage_names.DATASETS}/p-{tag}/cowin/k2.ccr",
             f"{storage_names.MODELS}/tdc-{tag}/k3.ccr", f"{storage_names.GRANTS}/{'0' * 64}/kek-{tag}.jwe"]
    contents = {path: secrets.token_bytes(48) for path in paths}
    for path, content in contents.items():
        container, _, name = path.partition("/")
        admin.get_blob_client(container, name).upload_blob(content)
    return contents


@pytest.fixture
def run(admin, control_plane):
    mine, other = _publish(admin), _publish(admin)
    output = storage_names.output_path(f"run-{secrets.token_hex(8)}")
    expiry = datetime.now(timezone.utc) + timedelta(minutes=30)
    return {"urls": trainer_blob_urls(control_plane, list(mine), output, expiry), "inputs": mine, "other": other,
            "output": output}


def _refused(action) -> int:
    with pytest.raises(HttpResponseError) as refused:
        action()
    return refused.value.status_code


def _client(path: str, sas_url: str, admin: BlobServiceClient, ca: str) -> BlobClient:
    container, _, name = path.partition("/")
    return BlobClient(admin.url, container, name, credential=urlsplit(sas_url).query, connection_verify=ca)


def _blob(url: str, ca: str) -> BlobClient:
    return BlobClient.from_blob_url(url, connection_verify=ca)


def test_the_identity_based_client_has_no_key_and_signs_user_delegation_sas(control_plane, run):
    assert getattr(control_plane.credential, "account_key", None) is None
    assert control_plane.url.startswith("https://127.0.0.1:")
    assert set(run["urls"]) == {*run["inputs"], run["output"]}
    for path, url in run["urls"].items():
        query = parse_qs(urlsplit(url).query)
        assert query["sp"] == (["c"] if path == run["output"] else ["r"]) and query["sr"] == ["b"]
        assert query["spr"] == ["https"]
        assert {"skoid", "sktid", "skt", "ske", "sks", "skv"} <= set(query)   # a user delegation SAS
        assert query["skoid"] == ["11111111-2222-3333-4444-555555555555"]
        assert urlsplit(url).path.endswith("/" + path)


def test_the_trainer_reads_its_inputs(run, oauth_azurite):
    for path, content in run["inputs"].items():
        with _blob(run["urls"][path], oauth_azurite["ca"]) as blob:
            assert blob.download_blob().readall() == content


def test_no_sas_of_the_set_reads_another_contracts_blob(run, admin, oauth_azurite):
    ca = oauth_azurite["ca"]
    for sas_url in run["urls"].values():
        for path in run["other"]:
            assert _refused(lambda: _client(path, sas_url, admin, ca).download_blob().readall()) == 403
    model, dataset = sorted(run["inputs"])[-1], sorted(run["inputs"])[0]
    assert _refused(lambda: _client(dataset, run["urls"][model], admin, ca).download_blob().readall()) == 403


def test_inputs_cannot_be_overwritten_or_deleted(run, admin, oauth_azurite):
    for path, content in run["inputs"].items():
        with _blob(run["urls"][path], oauth_azurite["ca"]) as blob:
            assert _refused(lambda: blob.upload_blob(b"replaced", overwrite=True)) == 403
            assert _refused(lambda: blob.delete_blob()) == 403
            assert _refused(lambda: blob.set_blob_metadata({"touched": "yes"})) == 403
        container, _, name = path.partition("/")
        assert admin.get_blob_client(container, name).download_blob().readall() == content


def test_the_output_is_created_once_and_never_overwritten_read_or_deleted(run, admin, oauth_azurite):
    ca = oauth_azurite["ca"]
    with _blob(run["urls"][run["output"]], ca) as output:
        output.upload_blob(b"the encrypted model")
        assert _refused(lambda: output.upload_blob(b"a second model", overwrite=True)) in (403, 409)
        assert _refused(lambda: output.upload_blob(b"a second model")) in (403, 409)
        assert _refused(lambda: output.download_blob().readall()) == 403
        assert _refused(lambda: output.delete_blob()) == 403
    container, _, name = run["output"].partition("/")
    assert admin.get_blob_client(container, name).download_blob().readall() == b"the encrypted model"
    for path in run["inputs"]:
        assert _refused(lambda: _client(path, run["urls"][run["output"]], admin, ca).upload_blob(
            b"x", overwrite=True)) == 403


def test_no_sas_of_the_set_lists_containers_or_blobs(run, admin, oauth_azurite):
    ca = oauth_azurite["ca"]
    for sas_url in run["urls"].values():
        token = urlsplit(sas_url).query
        assert _refused(lambda: list(BlobServiceClient(admin.url, credential=token,
                                                       connection_verify=ca).list_containers())) == 403
        for container in (storage_names.DATASETS, storage_names.MODELS, storage_names.OUTPUTS, storage_names.GRANTS):
            assert _refused(lambda: list(ContainerClient(admin.url, container, credential=token,
                                                         connection_verify=ca).list_blobs())) == 403


def test_a_partys_sas_is_a_user_delegation_sas_for_one_blob(control_plane, admin, oauth_azurite):
    ca = oauth_azurite["ca"]
    path = f"{storage_names.DATASETS}/icmr-{secrets.token_hex(4)}/ds/k.ccr"
    issued = party_sas.issue(control_plane, path, "create")
    assert "skoid=" in issued["url"] and "sp=c" in issued["url"]
    with _blob(issued["url"], ca) as blob:
        blob.upload_blob(b"ciphertext")
        assert _refused(lambda: blob.upload_blob(b"other", overwrite=True)) in (403, 409)
        assert _refused(lambda: blob.download_blob().readall()) == 403
    read = party_sas.issue(control_plane, path, "read")
    with _blob(read["url"], ca) as blob:
        assert blob.download_blob().readall() == b"ciphertext"
        assert _refused(lambda: blob.delete_blob()) == 403
