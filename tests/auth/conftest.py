"""The real app (function_app.py) on the local host, with party authentication configured, one
host for the whole folder; a did:web host on loopback TLS; parties with real P-256 identities; two
contracts with a run each, stored as the control plane stores them.

Contract A: TDC `tdc`, providers `icmr` and `cowin`. Contract B: TDC `rival`, provider `index`.
`stranger` has a DID document but is a party of nothing; `nobody` has no document at all.
The Event Grid twin with its management plane (`eventgrid`) is the app's run-events topic.
"""
from __future__ import annotations

import base64
import json
import secrets
import time

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from ccr import party as ccr_party
from ccr.cli import main
from local_emulator.delivery import RetryPolicy
from local_emulator.eventgrid import EventGridTwin
from local_emulator.eventgrid_arm import EventGridManagement
from local_emulator.tls import LoopbackServer
from shared import azure_clients
from shared import contract as contracts
from shared import did as dids
from shared import storage_names
from shared.contract_store import ContractStore
from shared.party_auth import CONTROL_PLANE_AUDIENCE, PartyAuthority, sign_challenge
from shared.run_records import RunRecords
from shared.settings import PROJECT_ROOT
from tests.conftest import HostProcess
from tests.contracts.conftest import contract_payload

PARTIES = ("tdc", "icmr", "cowin", "rival", "index", "stranger")


class DidHost:
    """Serves `/<name>/did.json` over HTTPS on loopback, as a did:web host does."""

    def __init__(self, tls):
        self.documents: dict[str, dict] = {}
        self.server = LoopbackServer(self._route, tls.server_context(), name="did-host").start()
        self.port = int(self.server.url.rsplit(":", 1)[1])

    def _route(self, method, path, query, headers, body):
        name = path.strip("/").removesuffix("/did.json")
        if method == "GET" and name in self.documents:
            return 200, self.documents[name], {}
        return 404, {"error": "no such DID"}, {}

    def identity(self, name: str, publish: bool = True) -> dids.Identity:
        identity = dids.Identity.generate(dids.did_web("127.0.0.1", self.port, name))
        if publish:
            self.documents[name] = identity.document()
        return identity


@pytest.fixture(scope="package")
def did_host(tls):
    host = DidHost(tls)
    yield host
    host.server.stop()


@pytest.fixture(scope="package")
def parties(did_host) -> dict[str, dids.Identity]:
    found = {name: did_host.identity(name) for name in PARTIES}
    found["nobody"] = did_host.identity("nobody", publish=False)
    return found


@pytest.fixture(scope="package")
def eventgrid(tmp_path_factory, azurite, tls):
    """The Event Grid twin (`.topic`: the run-events topic) and its management plane (`.arm`,
    `.arm_token`)."""
    twin = EventGridTwin(tmp_path_factory.mktemp("eventgrid"), azurite, ca_bundle=str(tls.ca_path),
                         retry=RetryPolicy(initial_seconds=0.2, maximum_seconds=1, attempts=5)).start()
    twin.topic_ = twin.create_topic("ccr-events")
    twin.arm_token = secrets.token_urlsafe(24)
    twin.arm = EventGridManagement(twin, tls.server_context(), twin.arm_token).start()
    yield twin
    twin.arm.stop()
    twin.stop()


@pytest.fixture(scope="package")
def app(azurite, tls, eventgrid):
    """The app with its own party-authentication secret (`.party_secret`)."""
    secret = secrets.token_urlsafe(32)
    host = HostProcess(PROJECT_ROOT, azurite, env={
        "CCR_PARTY_AUTH_SECRET": secret, "CCR_CA_BUNDLE": str(tls.ca_path),
        "CCR_EVENTGRID_ARM_URL": eventgrid.arm.url, "CCR_ACCESS_TOKEN": eventgrid.arm_token,
        "CCR_SUBSCRIPTION_ID": "00000000-0000-0000-0000-000000000000",
        "CCR_EVENTGRID_TOPIC_ID": eventgrid.topic_.resource_id,
        "CCR_EVENTGRID_TOPIC_URL": eventgrid.topic_.endpoint, "CCR_EVENTGRID_KEY": eventgrid.topic_.key}).start()
    host.party_secret = secret
    yield host
    host.stop()


def authority(app, parties, **options) -> PartyAuthority:
    """The app's authority as the test (which configured its secret) can rebuild it, e.g. with
    a clock in the past to make expired challenges and tokens."""
    documents = {identity.did: identity.document() for identity in parties.values()}
    return PartyAuthority(app.party_secret, options.pop("audience", CONTROL_PLANE_AUDIENCE),
                          resolve_did=documents.__getitem__, **options)


def hours_ago(hours: float):
    return lambda: time.time() - 3600 * hours


def post(app, route: str, body: dict, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(f"{app.url}/api/{route}", json=body, headers=headers, timeout=30)


def get(app, route: str, token: str | None = None, **headers) -> requests.Response:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(f"{app.url}/api/{route}", headers=headers, timeout=30)


def challenge(app, did: str) -> str:
    response = post(app, "auth/challenge", {"did": did})
    assert response.status_code == 200, response.text
    return response.json()["challenge"]


def token_for(app, identity: dids.Identity) -> str:
    """A bearer token, the way a party gets one: challenge, ES256 signature, exchange."""
    issued = challenge(app, identity.did)
    response = post(app, "auth/token", {"did": identity.did, "challenge": issued,
                                        "signature": sign_challenge(identity, issued)})
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.fixture(scope="package")
def tokens(app, parties) -> dict[str, str]:
    return {name: token_for(app, parties[name]) for name in PARTIES}


@pytest.fixture(scope="package")
def stored(azurite, parties) -> dict:
    """Contracts A and B accepted and a run of each recorded, as the control plane does it."""
    service = BlobServiceClient.from_connection_string(azurite)
    tag = secrets.token_hex(4)
    found = {}
    for label, tdc, providers in (("a", "tdc", {"icmr": "icmr", "cowin": "cowin"}), ("b", "rival", {"index": "index"})):
        payload = contract_payload(parties[tdc].did, {dataset: parties[p] for dataset, p in providers.items()},
                                   contract_id=f"auth-{label}-{tag}")
        digest = contracts.payload_digest(contracts.canonical_json(payload))
        envelope = contracts.sign_contract(payload, [parties[tdc], *(parties[p] for p in providers.values())])
        ContractStore(service).accept(payload, digest, base64.b64encode(envelope).decode(), None)
        run_id = f"run-{secrets.token_hex(8)}"
        assert RunRecords(service).create(run_id, payload["contract_id"], digest)
        found[label] = {"payload": payload, "digest": digest, "run_id": run_id}
    outputs = service.get_container_client(storage_names.OUTPUTS)
    if not outputs.exists():
        outputs.create_container()
    for label in found:
        outputs.upload_blob(storage_names.output_blob(found[label]["run_id"]), f"output {label}".encode())
    return found


def blob_service(azurite) -> BlobServiceClient:
    return BlobServiceClient.from_connection_string(azurite)


# `ccr` as a party (test_party_cli*.py): the environment of `as_party`, and `run` for one command.
UNREACHABLE = ("DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=AAAA;"
               "BlobEndpoint=http://127.0.0.1:9/devstoreaccount1;")


@pytest.fixture
def as_party(monkeypatch, tmp_path, app, tls, parties):
    """Environment of a party: the app's URL and the CA, no storage account it could use."""
    azure_clients.blob_service.cache_clear()
    ccr_party._TOKENS.clear()
    for name in ("AzureWebJobsStorage", "CCR_PARTY_DID", "CCR_PARTY_KEY", "CCR_FUNCTION_KEY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in {"CCR_STORAGE_CONNECTION": UNREACHABLE, "CCR_EMULATOR_DIR": str(tmp_path / "no-emulator"),
                        "CCR_FUNCTIONS_URL": app.url, "CCR_CA_BUNDLE": str(tls.ca_path),
                        "CCR_KEYS_DIR": str(tmp_path / "keys")}.items():
        monkeypatch.setenv(name, value)
    keys = {}
    for name in ("tdc", "icmr"):
        keys[name] = tmp_path / f"{name}.key.pem"
        parties[name].save_key(keys[name])

    def identity(name: str) -> list[str]:
        return ["--did", parties[name].did, "--key", str(keys[name])]
    yield identity
    azure_clients.blob_service.cache_clear()


def run(capsys, *argv: str) -> tuple[int, dict | None, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err
