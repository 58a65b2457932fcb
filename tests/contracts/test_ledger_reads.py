"""Ledger reads need a party's credential: the ledger twin authenticates parties with the same
mechanism as the clean room (shared/party_auth.py; its own secret and audience, the DID
documents it recorded) and shows an entry only to a party of that entry's contract. Over HTTPS
on loopback, with the parties' own client (ccr.party.PartySession)."""
from __future__ import annotations

import time

import pytest
import requests

from ccr import party as ccr_party
from ccr.party import PartySession
from local_emulator.ledger import LedgerTwin
from shared import contract as contracts
from shared import did as dids
from shared.party_auth import LEDGER_AUDIENCE, PartyAuthority, sign_challenge
from tests.contracts.conftest import contract_payload, record_budgets


@pytest.fixture
def ledger(tmp_path, tls, monkeypatch):
    monkeypatch.setenv("CCR_CA_BUNDLE", str(tls.ca_path))
    ccr_party._TOKENS.clear()
    twin = LedgerTwin(tmp_path / "ledger", ssl_context=tls.server_context()).start()
    twin.ca = str(tls.ca_path)
    yield twin
    twin.stop()


def register(ledger, name: str) -> dids.Identity:
    identity = dids.Identity.generate(ledger.did_for(name))
    assert ledger.publish_did(identity.document(), dids.registration_proof(identity, ledger.url))
    return identity


@pytest.fixture
def entry(ledger) -> tuple[int, dict[str, dids.Identity]]:
    """An entry of a contract between tdc, icmr, cowin and index, signed so far by all but index;
    `outsider` is registered on the ledger too, but a party of nothing."""
    parties = {name: register(ledger, name) for name in ("tdc", "icmr", "cowin", "index", "outsider")}
    payload = contract_payload(parties["tdc"].did, {n: parties[n] for n in ("icmr", "cowin", "index")})
    record_budgets(ledger, payload)
    envelope = contracts.sign_contract(payload, [parties[n] for n in ("tdc", "icmr", "cowin")])
    return ledger.register(envelope)["seqno"], parties


def read(ledger, seqno: int, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(f"{ledger.url}/entries/{seqno}", headers=headers, verify=ledger.ca, timeout=30)


def test_every_party_of_the_contract_reads_its_entry_and_nobody_else(ledger, entry):
    seqno, parties = entry
    for name in ("tdc", "icmr", "index"):   # index has not signed yet: still a party
        response = PartySession(ledger.url, parties[name], "the ledger").request("GET", f"entries/{seqno}")
        assert response.status_code == 200, response.text
        assert response.json()["seqno"] == seqno and response.json()["envelope"]
    outsider = PartySession(ledger.url, parties["outsider"], "the ledger")
    others, missing = outsider.request("GET", f"entries/{seqno}"), outsider.request("GET", "entries/999")
    assert others.status_code == missing.status_code == 404 and others.json() == missing.json()
    assert "envelope" not in others.text


def test_ledger_reads_without_a_valid_ledger_token_are_refused(ledger, entry, tmp_path):
    seqno, parties = entry
    icmr = parties["icmr"]
    assert read(ledger, seqno).status_code == 401
    assert read(ledger, seqno, "not-a-token").status_code == 401
    # a token of another service (the clean room's, or anyone's own secret) for this audience
    foreign = PartyAuthority("another service's secret, 32 bytes+", LEDGER_AUDIENCE,
                             resolve_did=ledger.recorded_document)
    issued = foreign.issue_challenge(icmr.did)
    token = foreign.exchange(icmr.did, issued, sign_challenge(icmr, issued)).access_token
    refused = read(ledger, seqno, token)
    assert refused.status_code == 401 and "not issued by this service" in refused.json()["error"]
    # the ledger's own secret, but long expired
    own = (tmp_path / "ledger" / "party_auth.secret").read_bytes().strip()
    past = PartyAuthority(own, LEDGER_AUDIENCE, resolve_did=ledger.recorded_document, now=lambda: time.time() - 3600)
    issued = past.issue_challenge(icmr.did)
    expired = read(ledger, seqno, past.exchange(icmr.did, issued, sign_challenge(icmr, issued)).access_token)
    assert expired.status_code == 401 and "expired" in expired.json()["error"]


def test_only_the_key_the_ledger_recorded_buys_a_ledger_token(ledger, entry):
    _, parties = entry
    stranger = dids.Identity.generate(ledger.did_for("stranger"))   # never registered
    forger = dids.Identity(parties["icmr"].did, parties["outsider"].private_key)
    for identity, reason in ((stranger, "not registered on this ledger"),
                             (forger, "does not verify with the key in the DID document")):
        challenge = requests.post(f"{ledger.url}/auth/challenge", json={"did": identity.did}, verify=ledger.ca,
                                  timeout=30).json()["challenge"]
        answer = requests.post(f"{ledger.url}/auth/token", json={"did": identity.did, "challenge": challenge,
                                                                "signature": sign_challenge(identity, challenge)},
                               verify=ledger.ca, timeout=30)
        assert answer.status_code == 401 and reason in answer.json()["error"], answer.text
