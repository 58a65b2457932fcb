"""Four parties (one TDC, three TDPs) with real P-256 identities, and a contract between them."""
from __future__ import annotations

import hashlib
import threading

import pytest

from local_emulator.tls import LoopbackServer
from shared import budget_declaration
from shared import contract as contracts
from shared import did as dids
from shared import storage_names
from shared.container_group import policy_template_sha256

HOST, PORT = "127.0.0.1", 8443
CONTRACT_ID = "covid-test-01"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


IMAGE = "ccr-trainer@sha256:" + sha("image")
VAULT = "https://kv.test"


def contract_payload(tdc: str, tdps: dict[str, dids.Identity], contract_id: str = CONTRACT_ID,
                     valid_from: str = "2026-01-01T00:00:00Z", valid_until: str = "2027-01-01T00:00:00Z") -> dict:
    """A schema-2 payload as docs/INTERFACES.md describes it; `tdps` maps dataset name -> its
    TDP, who declares that dataset's lifetime budget (epsilon 1.5, delta 1e-5)."""
    return {
        "schema_version": 2, "contract_id": contract_id, "purpose": "covid outcome model",
        "valid_from": valid_from, "valid_until": valid_until,
        "tdc": {"did": tdc, "key_vault": VAULT,
                "model": {"blob": f"models/{storage_names.model_blob(dids.did_name(tdc), 'model-1')}",
                          "sha256": sha("model"),
                          "key_id": "model-1"},
                "output": {"key_id": "output-1", "webhook": "http://127.0.0.1:9/notify"}},
        "tdps": [{"did": tdp.did, "key_vault": VAULT, "datasets": [{
            "name": name, "version": 1,
            "blob": f"datasets/{storage_names.dataset_blob(dids.did_name(tdp.did), name, name + '-1')}",
            "sha256": sha(name), "key_id": f"{name}-1", "epsilon": 1.5,
            "budget": budget_declaration.declare(tdp, name, 1.5, 1e-5)}]}
            for name, tdp in tdps.items()],
        "privacy": {"delta": 1e-5},
        "evaluation": {"validation_split": 0.2, "min_joined_rows": 100},
        "workloads": {"training": {"image": IMAGE, "policy_template_sha256": policy_template_sha256(IMAGE),
                                   "join": {"datasets": []}, "deadline_seconds": 600}},
    }


@pytest.fixture(scope="session")
def identities() -> dict[str, dids.Identity]:
    """tdc, icmr, cowin, index: one key pair each."""
    return {name: dids.Identity.generate(dids.did_web(HOST, PORT, name)) for name in ("tdc", "icmr", "cowin", "index")}


@pytest.fixture
def payload(identities) -> dict:
    return contract_payload(identities["tdc"].did, {n: identities[n] for n in ("icmr", "cowin", "index")})


@pytest.fixture(scope="session")
def documents(identities) -> dict[str, dict]:
    return {identity.did: identity.document() for identity in identities.values()}


@pytest.fixture
def resolve(documents):
    """Resolution from published documents (the HTTPS path is tested with the ledger's DID host)."""
    def resolve_did(did: str) -> dict:
        if did not in documents:
            raise dids.DidError(f"{did} has no DID document (404)")
        return documents[did]
    return resolve_did


def party_get(ledger, identity: dids.Identity, path: str, ca) -> "requests.Response":
    """GET `path` on the ledger as `identity`: its challenge signed with the party's key, the
    token it buys, then the request with that bearer token (ledger reads need a party's)."""
    import requests

    from shared.party_auth import sign_challenge
    post = lambda route, body: requests.post(f"{ledger.url}/auth/{route}", json=body, verify=str(ca), timeout=30)
    challenge = post("challenge", {"did": identity.did}).json()["challenge"]
    token = post("token", {"did": identity.did, "challenge": challenge,
                           "signature": sign_challenge(identity, challenge)}).json()["access_token"]
    return requests.get(f"{ledger.url}{path}", headers={"Authorization": f"Bearer {token}"}, verify=str(ca),
                        timeout=30)


# --- loopback servers for the ledger tests ---------------------------------------------


class RecordingWebhook:
    """A webhook on 127.0.0.1 that records each call and answers the scripted statuses
    in turn (the last one repeats)."""

    def __init__(self, statuses: list[int]):
        self.statuses, self.calls = list(statuses), []
        self._lock = threading.Lock()
        self.server = LoopbackServer(self._route, name="test-webhook")

    def _route(self, method, path, query, headers, body):
        with self._lock:
            self.calls.append({"path": path, "headers": dict(headers), "body": body})
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return status, {"error": "scripted"} if status >= 400 else {"ok": True}, {}

    @property
    def url(self) -> str:
        return self.server.url + "/api/contracts"


@pytest.fixture
def webhook_factory():
    started = []

    def make(statuses: list[int]) -> RecordingWebhook:
        hook = RecordingWebhook(statuses)
        hook.server.start()
        started.append(hook)
        return hook
    yield make
    for hook in started:
        hook.server.stop()


def record_budgets(ledger, payload: dict) -> None:
    """Each provider's budget declaration recorded on the ledger twin (its DID registered before)."""
    for _, dataset in contracts.datasets(payload):
        ledger.declare_budget(dataset["budget"])
