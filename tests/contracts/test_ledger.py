"""The ledger twin: hosts DID documents over HTTPS (registered only with a proof of
possession of their key), registers envelopes that carry valid party signatures with sequence
numbers under their (contract_id, digest), and calls the webhook only for fully signed
contracts, with retries."""
from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone

import cbor2
import pytest
import requests
from jwcrypto import jwk, jws

from local_emulator.delivery import RetryPolicy
from local_emulator.ledger import LedgerTwin
from local_emulator.tls import LoopbackServer
from shared import budget_declaration
from shared import contract as contracts
from shared import did as dids
from tests.conftest import wait_until as wait_for
from tests.contracts.conftest import contract_payload, party_get, record_budgets

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


def post_did(ledger: LedgerTwin, tls, document: dict, proof: str | None) -> requests.Response:
    body = {"document": document} if proof is None else {"document": document, "proof": proof}
    return requests.post(ledger.url + "/dids", json=body, verify=str(tls.ca_path))


def register_did(ledger: LedgerTwin, tls, identity: dids.Identity) -> requests.Response:
    """What `ccr identity new` sends: the document and a fresh proof by its key for this ledger."""
    return post_did(ledger, tls, identity.document(), dids.registration_proof(identity, ledger.url))


def parties_on(ledger: LedgerTwin, tls, names=("tdc", "icmr", "cowin", "index"),
               contract_id: str = "covid-test-01") -> tuple[dict, dict]:
    """Four identities whose DID documents the ledger hosts, and a contract between them."""
    identities = {name: dids.Identity.generate(ledger.did_for(name)) for name in names}
    for identity in identities.values():
        assert register_did(ledger, tls, identity).status_code == 201
    payload = contract_payload(identities[names[0]].did, {n: identities[n] for n in names[1:]},
                               contract_id=contract_id)
    record_budgets(ledger, payload)
    return dict(zip(("tdc", "icmr", "cowin", "index"), identities.values())), payload


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


def test_a_did_host_briefly_unavailable_is_retried_not_taken_as_a_failure(tls, monkeypatch):
    """503 then 200: the document resolves (two retries at most; a fourth answer is never asked)."""
    answers, identity = [503, 200], {}

    def route(method, path, query, headers, body):
        status = answers.pop(0) if answers else 500
        return (status, identity["value"].document() if status == 200 else {"error": "busy"}, {})
    server = LoopbackServer(route, tls.server_context(), 0, "127.0.0.1", name="flaky-did-host")
    server.start()
    try:
        identity["value"] = dids.Identity.generate(dids.did_web("127.0.0.1", int(server.url.rsplit(":", 1)[1]), "busy"))
        monkeypatch.setenv("CCR_CA_BUNDLE", str(tls.ca_path))
        assert dids.resolve(identity["value"].did) == identity["value"].document() and answers == []
    finally:
        server.stop()


def test_did_registration_refusals(ledger_factory, tls):
    ledger = ledger_factory()
    identity = dids.Identity.generate(ledger.did_for("icmr"))
    ca = str(tls.ca_path)
    assert register_did(ledger, tls, identity).status_code == 201
    assert register_did(ledger, tls, identity).status_code == 200   # the same document again
    takeover = dids.Identity.generate(identity.did)                  # another key, proven: no rotation
    response = register_did(ledger, tls, takeover)
    assert response.status_code == 409 and "already registered" in response.json()["error"]
    elsewhere = dids.Identity.generate(dids.did_web("127.0.0.1", 1, "cowin"))
    response = register_did(ledger, tls, elsewhere)
    assert response.status_code == 400 and "this ledger hosts" in response.json()["error"]
    leaky = dids.Identity.generate(ledger.did_for("leaky"))
    document = leaky.document()
    document["verificationMethod"][0]["publicKeyJwk"]["d"] = "AAAA"
    response = post_did(ledger, tls, document, dids.registration_proof(leaky, ledger.url, document=document))
    assert response.status_code == 400 and "private key" in response.json()["error"]
    assert requests.get(ledger.url + "/leaky/did.json", verify=ca).status_code == 404
    assert requests.get(ledger.url + "/icmr/did.json", verify=ca).json() == identity.document()
    assert json.loads((ledger.data_dir / "dids" / "icmr.json").read_text()) == identity.document()


def test_did_squatting_without_the_key_is_refused_and_the_owner_then_registers(ledger_factory, tls):
    """A squatter who knows the owner's DID document (its public key) but not its private key
    cannot have the ledger record it, nor a variant of it: nothing is recorded, and the owner's
    own registration then succeeds."""
    ledger = ledger_factory()
    owner = dids.Identity.generate(ledger.did_for("icmr"))
    squatter = dids.Identity.generate(ledger.did_for("squatter"))
    document = owner.document()
    two_keys = {**document, "verificationMethod": document["verificationMethod"] + [
        {**squatter.document()["verificationMethod"][0], "id": f"{owner.did}#key-2", "controller": owner.did}],
        "assertionMethod": [f"{owner.did}#key-1", f"{owner.did}#key-2"]}
    attempts = [
        (requests.post(ledger.url + "/dids", json=document, verify=str(tls.ca_path)), 401, "proof"),  # bare
        (post_did(ledger, tls, document, None), 401, "needs a proof of possession"),
        # signed by the squatter's key but naming the owner's key
        (post_did(ledger, tls, document, dids.registration_proof(dids.Identity(owner.did, squatter.private_key),
                                                                  ledger.url, document=document)),
         401, "does not verify"),
        # signed by the squatter's key under its own key id
        (post_did(ledger, tls, document, dids.registration_proof(squatter, ledger.url, document=document)),
         401, f"not by the document's key {owner.key_ref}"),
        # the owner's key plus one the squatter holds, proven by the squatter's
        (post_did(ledger, tls, two_keys, dids.registration_proof(
            dids.Identity(owner.did, squatter.private_key, "key-2"), ledger.url, document=two_keys)),
         400, "exactly one verification method"),
    ]
    for response, status, reason in attempts:
        assert response.status_code == status and reason in response.json()["error"], response.text
    assert requests.get(ledger.url + "/icmr/did.json", verify=str(tls.ca_path)).status_code == 404
    assert not (ledger.data_dir / "dids" / "icmr.json").exists()

    proof = dids.registration_proof(owner, ledger.url)
    altered = {**document, "service": [{"id": "#evil", "type": "LinkedDomains",
                                        "serviceEndpoint": "https://evil.test"}]}
    response = post_did(ledger, tls, altered, proof)    # the owner's proof, replayed for another document
    assert response.status_code == 401 and "another DID document" in response.json()["error"]
    assert post_did(ledger, tls, document, proof).status_code == 201
    assert requests.get(ledger.url + "/icmr/did.json", verify=str(tls.ca_path)).json() == document


def _alg_none(identity: dids.Identity, audience: str) -> str:
    header = {"alg": "none", "kid": identity.key_ref}
    claims = {"did": identity.did, "aud": audience, "iat": int(datetime.now(timezone.utc).timestamp()),
              "nonce": "n" * 22, "document_sha256": dids.document_digest(identity.document())}
    encode = lambda value: jws.base64url_encode(json.dumps(value))
    return f"{encode(header)}.{encode(claims)}."


@pytest.mark.parametrize("case, status, reason", [
    ("stale", 401, "stale: issued 600 s ago"),
    ("from the future", 401, "in the future"),
    ("for another ledger", 401, "addressed to"),
    ("forged by another key", 401, "does not verify"),
    ("unsigned (alg none)", 401, "ES256"),
    ("not a JWS", 400, "compact JWS"),
])
def test_stale_misdirected_or_forged_proofs_register_nothing(ledger_factory, tls, case, status, reason):
    ledger = ledger_factory()
    owner = dids.Identity.generate(ledger.did_for("cowin"))
    now = datetime.now(timezone.utc)
    proof = {
        "stale": lambda: dids.registration_proof(owner, ledger.url, now=now - timedelta(minutes=10)),
        "from the future": lambda: dids.registration_proof(owner, ledger.url, now=now + timedelta(minutes=10)),
        "for another ledger": lambda: dids.registration_proof(owner, "https://127.0.0.1:1"),
        "forged by another key": lambda: dids.registration_proof(
            dids.Identity(owner.did, dids.Identity.generate(owner.did).private_key), ledger.url,
            document=owner.document()),
        "unsigned (alg none)": lambda: _alg_none(owner, ledger.url),
        "not a JWS": lambda: "not-a-jws",
    }[case]()
    response = post_did(ledger, tls, owner.document(), proof)
    assert response.status_code == status and reason in response.json()["error"], response.text
    assert requests.get(ledger.url + "/cowin/did.json", verify=str(tls.ca_path)).status_code == 404


def test_check_registration_proof_direct():
    """The checker on its own (what the ledger calls): claims back on success; the clock is a parameter."""
    owner = dids.Identity.generate(dids.did_web("127.0.0.1", 8443, "tdc"))
    at = datetime(2026, 6, 1, tzinfo=timezone.utc)
    proof = dids.registration_proof(owner, "https://127.0.0.1:8443/", now=at)
    claims = dids.check_registration_proof(owner.document(), proof, "https://127.0.0.1:8443", now=at)
    assert claims["did"] == owner.did and claims["aud"] == "https://127.0.0.1:8443" and claims["iat"] == int(at.timestamp())
    assert claims["document_sha256"] == dids.document_digest(owner.document()) and len(claims["nonce"]) >= 16
    assert dids.check_registration_proof(owner.document(), proof, "https://127.0.0.1:8443",
                                         now=at + timedelta(seconds=299))
    with pytest.raises(dids.ProofRefused, match="stale"):
        dids.check_registration_proof(owner.document(), proof, "https://127.0.0.1:8443", now=at + timedelta(seconds=301))
    header = json.loads(jws.base64url_decode(proof.split(".")[0]))
    assert header == {"alg": "ES256", "kid": owner.key_ref, "typ": dids.REGISTRATION_PROOF_TYPE}
    public = jwk.JWK(**owner.document()["verificationMethod"][0]["publicKeyJwk"])
    token = jws.JWS()
    token.deserialize(proof, key=public)   # a plain ES256 JWS any library verifies


def test_webhook_called_only_when_fully_signed(ledger_factory, webhook_factory, tls):
    hook = webhook_factory([200])
    ledger = ledger_factory(hook.url)
    identities, payload = parties_on(ledger, tls)
    partial = contracts.sign_contract(payload, [identities["tdc"], identities["icmr"]])
    digest = contracts.payload_digest(contracts.canonical_json(payload))
    response = submit(ledger, partial, tls)
    assert response.status_code == 201
    assert response.json() == {"seqno": 1, "contract_id": payload["contract_id"], "digest": digest, "complete": False,
                               "missing": [identities["cowin"].did, identities["index"].did]}
    rest = contracts.sign_contract(payload, [identities["cowin"], identities["index"]])
    full = contracts.merge_envelopes(partial, rest)
    response = submit(ledger, full, tls)
    assert response.json() == {"seqno": 2, "contract_id": payload["contract_id"], "digest": digest, "complete": True,
                               "missing": []}
    wait_for(lambda: ledger.entry(2)["delivery"] == "delivered")
    assert len(hook.calls) == 1
    call = hook.calls[0]
    assert call["body"] == full
    assert call["headers"]["x-ledger-seqno"] == "2" and call["headers"]["x-functions-key"] == KEY
    assert call["headers"]["Content-Type"] == "application/cose"
    assert ledger.entry(1)["delivery"] == "awaiting-signatures"
    stored = party_get(ledger, identities["tdc"], "/entries/1", tls.ca_path).json()  # a party reads it
    assert base64.b64decode(stored["envelope"]) == partial and stored["complete"] is False
    assert stored["digest"] == digest and stored["signers"] == [identities["tdc"].did, identities["icmr"].did]
    assert ledger.entries_for(payload["contract_id"], digest) == [1, 2]


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
    assert ledger.entry(1) is None
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


def _outsider_signature(payload: dict, outsider: dids.Identity):
    """A genuine signature by `outsider` (`add_signature` refuses a non-party: take it from an
    envelope of a contract naming the outsider)."""
    own = {**payload, "tdc": {**payload["tdc"], "did": outsider.did}}
    return cbor2.loads(contracts.sign_contract(own, [outsider])).value[3][0]


def _with_signature(envelope: bytes, signature) -> bytes:
    body = cbor2.loads(envelope)
    body.value[3].append(signature)
    return cbor2.dumps(body)


@pytest.mark.parametrize("case, reason", [
    ("unsigned", "no signature"),
    ("an outsider's signature only", "not a party"),
    ("a party's signature and an outsider's", "not a party"),
    ("a party's signature and another party's DID signed with another key", "does not match"),
    ("a party's signature, then the payload altered", "does not match"),
    ("a party not registered on this ledger", "not registered on this ledger"),
])
def test_an_entry_needs_valid_party_signatures_only(ledger_factory, webhook_factory, tls, case, reason):
    """Refused with 403: nothing recorded, no webhook call. Signatures are checked against the
    DID documents the ledger recorded (the outsider is registered here too, with proof)."""
    hook = webhook_factory([200])
    ledger = ledger_factory(hook.url)
    identities, payload = parties_on(ledger, tls)
    outsider = dids.Identity.generate(ledger.did_for("outsider"))
    assert register_did(ledger, tls, outsider).status_code == 201
    good = contracts.sign_contract(payload, [identities["icmr"]])
    if case == "unsigned":
        envelope = contracts.new_envelope(payload)
    elif case == "an outsider's signature only":
        envelope = _with_signature(contracts.new_envelope(payload), _outsider_signature(payload, outsider))
    elif case == "a party's signature and an outsider's":
        envelope = _with_signature(good, _outsider_signature(payload, outsider))
    elif case.startswith("a party's signature and another party's DID"):
        envelope = contracts.add_signature(good, dids.Identity(identities["cowin"].did, outsider.private_key))
    elif case == "a party's signature, then the payload altered":
        envelope = good.replace(b'"epsilon":1.5,', b'"epsilon":1.0,', 1)
        assert envelope != good
    else:
        stranger = dids.Identity.generate(ledger.did_for("stranger"))   # never registered
        dataset = {**payload["tdps"][2]["datasets"][0],
                   "budget": budget_declaration.declare(stranger, "index", 1.5, 1e-5)}
        envelope = contracts.sign_contract(
            {**payload, "tdps": payload["tdps"][:2] + [{**payload["tdps"][2], "did": stranger.did,
                                                        "datasets": [dataset]}]}, [stranger])
    response = submit(ledger, envelope, tls)
    assert response.status_code == 403 and reason in response.json()["error"], response.text
    assert ledger.entry(1) is None and not list((ledger.data_dir / "entries").glob("*.cose"))
    assert ledger.entry(1) is None
    assert submit(ledger, good, tls).json()["seqno"] == 1       # a party's own signature is enough
    assert ledger.entry(1)["delivery"] == "awaiting-signatures" and hook.calls == []


def test_a_contract_id_squatter_does_not_block_the_genuine_contract(ledger_factory, webhook_factory, tls):
    """An outsider registers DIDs of its own and submits, first, a fully self-signed contract
    under the victims' contract_id: it is another contract (another digest), recorded and
    delivered as such, and the genuine one is recorded and delivered too."""
    hook = webhook_factory([200])
    ledger = ledger_factory(hook.url)
    genuine, payload = parties_on(ledger, tls)
    squatters, squatted = parties_on(ledger, tls, names=("s-tdc", "s-icmr", "s-cowin", "s-index"),
                                     contract_id=payload["contract_id"])
    first = submit(ledger, contracts.sign_contract(squatted, list(squatters.values())), tls).json()
    second = submit(ledger, contracts.sign_contract(payload, list(genuine.values())), tls).json()
    assert first["contract_id"] == second["contract_id"] == payload["contract_id"]
    assert first["complete"] and second["complete"] and first["digest"] != second["digest"]
    assert second["digest"] == contracts.payload_digest(contracts.canonical_json(payload))
    assert ledger.entries_for(payload["contract_id"], second["digest"]) == [second["seqno"]]
    assert ledger.entries_for(payload["contract_id"], first["digest"]) == [first["seqno"]]
    wait_for(lambda: ledger.entry(second["seqno"])["delivery"] == "delivered")
    assert ledger.entry(first["seqno"])["delivery"] == "delivered" and len(hook.calls) == 2
