"""The ledger twin: hosts DID documents over HTTPS, registers envelopes with sequence
numbers, and calls the webhook only for fully signed contracts, with retries."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timezone

import pytest
import requests

from local_emulator.delivery import RetryPolicy
from local_emulator.ledger import LedgerTwin
from shared import contract as contracts
from shared import did as dids
from tests.conftest import wait_until as wait_for
from tests.contracts.conftest import contract_payload

FAST = RetryPolicy(initial_seconds=0.02, maximum_seconds=0.1, attempts=5, timeout_seconds=5)
NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)
KEY = "test-function-key"


@pytest.fixture
def ledger_factory(tmp_path, tls):
    started = []

    def make(webhook_url=None, retry=FAST, data_dir=None, port=0) -> LedgerTwin:
        twin = LedgerTwin(data_dir or tmp_path / "ledger", webhook_url, KEY, tls.server_context(),
                          port=port, retry=retry)
        started.append(twin.start())
        return twin
    yield make
    for twin in started:
        twin.stop()


def parties_on(ledger: LedgerTwin, tls) -> tuple[dict, dict]:
    """Four identities whose DID documents the ledger hosts, and a contract between them."""
    names = ("tdc", "icmr", "cowin", "index")
    identities = {name: dids.Identity.generate(ledger.did_for(name)) for name in names}
    for identity in identities.values():
        response = requests.post(ledger.url + "/dids", json=identity.document(), verify=str(tls.ca_path))
        assert response.status_code == 201
    payload = contract_payload(identities["tdc"].did, {n: identities[n].did for n in names[1:]})
    return identities, payload


def submit(ledger, envelope, tls) -> requests.Response:
    return requests.post(ledger.url + "/entries", data=envelope, verify=str(tls.ca_path),
                         headers={"Content-Type": "application/cose"})


def test_did_documents_resolve_over_https(ledger_factory, tls, monkeypatch):
    ledger = ledger_factory()
    identities, payload = parties_on(ledger, tls)
    assert dids.document_url(identities["icmr"].did) == f"https://127.0.0.1:{ledger.port}/icmr/did.json"
    monkeypatch.setenv("CCR_CA_BUNDLE", str(tls.ca_path))
    assert dids.resolve(identities["icmr"].did) == identities["icmr"].document()
    envelope = contracts.sign_contract(payload, list(identities.values()))
    contract = contracts.verify_contract(envelope, now=NOW)   # default resolver: HTTPS + CA bundle
    assert set(contract.signers) == {i.did for i in identities.values()}
    with pytest.raises(dids.DidError, match="404"):
        dids.resolve(ledger.did_for("nobody"))


def test_did_registration_refusals(ledger_factory, tls):
    ledger = ledger_factory()
    identity = dids.Identity.generate(ledger.did_for("icmr"))
    ca = str(tls.ca_path)
    assert requests.post(ledger.url + "/dids", json=identity.document(), verify=ca).status_code == 201
    assert requests.post(ledger.url + "/dids", json=identity.document(), verify=ca).status_code == 200
    takeover = dids.Identity.generate(identity.did).document()
    response = requests.post(ledger.url + "/dids", json=takeover, verify=ca)
    assert response.status_code == 409 and "already registered" in response.json()["error"]
    elsewhere = dids.Identity.generate(dids.did_web("127.0.0.1", 1, "cowin")).document()
    response = requests.post(ledger.url + "/dids", json=elsewhere, verify=ca)
    assert response.status_code == 400 and "this ledger hosts" in response.json()["error"]
    leaky = dids.Identity.generate(ledger.did_for("leaky"))
    document = leaky.document()
    document["verificationMethod"][0]["publicKeyJwk"]["d"] = "AAAA"
    response = requests.post(ledger.url + "/dids", json=document, verify=ca)
    assert response.status_code == 400 and "private key" in response.json()["error"]
    assert requests.get(ledger.url + "/leaky/did.json", verify=ca).status_code == 404
    assert requests.get(ledger.url + "/icmr/did.json", verify=ca).json() == identity.document()


def test_webhook_called_only_when_fully_signed(ledger_factory, webhook_factory, tls):
    hook = webhook_factory([200])
    ledger = ledger_factory(hook.url)
    identities, payload = parties_on(ledger, tls)
    partial = contracts.sign_contract(payload, [identities["tdc"], identities["icmr"]])
    response = submit(ledger, partial, tls)
    assert response.status_code == 201
    assert response.json() == {"seqno": 1, "complete": False,
                               "missing": [identities["cowin"].did, identities["index"].did]}
    rest = contracts.sign_contract(payload, [identities["cowin"], identities["index"]])
    full = contracts.merge_envelopes(partial, rest)
    response = submit(ledger, full, tls)
    assert response.json() == {"seqno": 2, "complete": True, "missing": []}
    wait_for(lambda: ledger.entry(2)["delivery"] == "delivered")
    assert len(hook.calls) == 1
    call = hook.calls[0]
    assert call["body"] == full
    assert call["headers"]["x-ledger-seqno"] == "2" and call["headers"]["x-functions-key"] == KEY
    assert call["headers"]["Content-Type"] == "application/cose"
    assert ledger.entry(1)["delivery"] == "awaiting-signatures"
    stored = requests.get(ledger.url + "/entries/1", verify=str(tls.ca_path)).json()
    assert base64.b64decode(stored["envelope"]) == partial and stored["complete"] is False


@pytest.mark.parametrize("statuses, outcome, attempts", [
    ([500, 503, 200], "delivered", 3),        # retried on 5xx until a 2xx
    ([400], "rejected", 1),                    # a 4xx stops the retries
    ([500], "failed", FAST.attempts),          # gives up after the retry limit
], ids=["retries-until-2xx", "rejection-stops", "gives-up"])
def test_delivery_retries(ledger_factory, webhook_factory, tls, statuses, outcome, attempts):
    hook = webhook_factory(statuses)
    ledger = ledger_factory(hook.url)
    identities, payload = parties_on(ledger, tls)
    seqno = submit(ledger, contracts.sign_contract(payload, list(identities.values())), tls).json()["seqno"]
    state = wait_for(lambda: (s := ledger.entry(seqno))["delivery"] == outcome and s)
    assert state["attempts"] == attempts and state["last_status"] == statuses[min(attempts, len(statuses)) - 1]
    assert len(hook.calls) == attempts


def test_malformed_entry_is_refused_and_not_stored(ledger_factory, webhook_factory, tls):
    hook = webhook_factory([200])
    ledger = ledger_factory(hook.url)
    for body in (b"", b"not cbor at all", contracts.canonical_json({"contract_id": "x"})):
        response = submit(ledger, body, tls)
        assert response.status_code == 400 and response.json()["error"]
    assert requests.get(ledger.url + "/entries/1", verify=str(tls.ca_path)).status_code == 404
    assert hook.calls == []


def test_pending_delivery_survives_a_restart(ledger_factory, webhook_factory, tls, tmp_path):
    hook = webhook_factory([503, 200])
    slow = RetryPolicy(initial_seconds=3600, maximum_seconds=3600, attempts=5)
    ledger = ledger_factory(hook.url, retry=slow)
    port = ledger.port
    identities, payload = parties_on(ledger, tls)
    seqno = submit(ledger, contracts.sign_contract(payload, list(identities.values())), tls).json()["seqno"]
    wait_for(lambda: ledger.entry(seqno)["attempts"] == 1)
    ledger.stop()
    again = ledger_factory(hook.url, data_dir=ledger.data_dir, port=port)
    wait_for(lambda: again.entry(seqno)["delivery"] == "delivered")
    assert len(hook.calls) == 2
    assert submit(again, contracts.sign_contract(payload, list(identities.values())), tls).json()["seqno"] == seqno + 1
    assert json.loads((ledger.data_dir / "dids" / "icmr.json").read_text()) == identities["icmr"].document()
