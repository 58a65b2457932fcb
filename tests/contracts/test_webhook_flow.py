"""Ledger twin -> the app's contract webhook on the local Functions host: a fully signed
contract is verified against the parties' DID documents and stored once under its id and
digest; a replay gets the same answer; another contract under the same id is another contract;
a contract the webhook refuses stops the ledger's retries and stores nothing."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import cbor2
import pytest
import requests
from azure.storage.blob import BlobServiceClient

from local_emulator.delivery import RetryPolicy
from local_emulator.ledger import LedgerTwin
from shared import contract as contracts
from shared import did as dids
from shared.contract_store import contract_key
from shared.run_records import run_id_for
from shared.settings import PROJECT_ROOT
from tests.conftest import wait_until
from tests.contracts.conftest import contract_payload, record_budgets

FAST = RetryPolicy(initial_seconds=0.05, maximum_seconds=0.2, attempts=4, timeout_seconds=30)


@pytest.fixture
def setup(tmp_path, tls, function_host, azurite):
    host = function_host(PROJECT_ROOT, env={"CCR_CA_BUNDLE": str(tls.ca_path)})
    ledger = LedgerTwin(tmp_path / "ledger", host.url + "/api/contracts", host.function_key,
                        tls.server_context(), retry=FAST).start()
    names = ("tdc", "icmr", "cowin", "index")
    identities = {name: dids.Identity.generate(ledger.did_for(name)) for name in names}
    for identity in identities.values():
        assert ledger.publish_did(identity.document(), dids.registration_proof(identity, ledger.url))
    yield host, ledger, identities
    ledger.stop()


def stored(azurite, contract_id, digest):
    blob = BlobServiceClient.from_connection_string(azurite).get_blob_client(
        "contracts", f"{contract_key(contract_id, digest)}.json")
    return json.loads(blob.download_blob().readall()) if blob.exists() else None


def digest_of(payload: dict) -> str:
    return contracts.payload_digest(contracts.canonical_json(payload))


def payload_for(ledger, identities, contract_id, valid_until):
    """A contract between the four parties, its budget declarations recorded on `ledger`."""
    now = datetime.now(timezone.utc)
    payload = contract_payload(identities["tdc"].did, {n: identities[n] for n in ("icmr", "cowin", "index")},
                               contract_id=contract_id,
                               valid_from=(now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                               valid_until=(now + valid_until).strftime("%Y-%m-%dT%H:%M:%SZ"))
    record_budgets(ledger, payload)
    return payload


def test_signed_contract_is_stored_once_and_replay_is_harmless(setup, azurite):
    host, ledger, identities = setup
    payload = payload_for(ledger, identities, "flow-ok", timedelta(days=30))
    envelope = contracts.sign_contract(payload, list(identities.values()))
    first = ledger.register(envelope)["seqno"]
    wait_until(lambda: ledger.entry(first)["delivery"] != "pending", message="webhook delivery")
    assert ledger.entry(first)["delivery"] == "delivered", host.logs()
    digest = digest_of(payload)
    record = stored(azurite, "flow-ok", digest)
    assert record["digest"] == digest
    second = ledger.register(envelope)["seqno"]
    wait_until(lambda: ledger.entry(second)["delivery"] == "delivered", message="replay delivery")
    assert stored(azurite, "flow-ok", digest)["accepted"] == record["accepted"]
    answer = requests.post(host.url + "/api/contracts", data=envelope,
                           headers={"x-functions-key": host.function_key, "Content-Type": "application/cose"})
    assert answer.status_code == 200 and answer.json() == {"contract_id": "flow-ok", "digest": digest,
                                                           "run_id": run_id_for("flow-ok", digest),
                                                           "status": "accepted"}

    # other terms under the same contract id: another contract, accepted beside the first
    other = {**payload, "purpose": "the same id, other terms"}
    third = ledger.register(contracts.sign_contract(other, list(identities.values())))["seqno"]
    wait_until(lambda: ledger.entry(third)["delivery"] != "pending", message="delivery of the other contract")
    assert ledger.entry(third)["delivery"] == "delivered", host.logs()
    assert stored(azurite, "flow-ok", digest_of(other))["payload"] == other
    assert stored(azurite, "flow-ok", digest)["accepted"] == record["accepted"]
    assert run_id_for("flow-ok", digest_of(other)) != run_id_for("flow-ok", digest)


def test_refused_contracts_stop_retries_and_store_nothing(setup, azurite):
    host, ledger, identities = setup
    payload = payload_for(ledger, identities, "flow-expired", timedelta(seconds=-1))
    envelope = contracts.sign_contract(payload, list(identities.values()))
    seqno = ledger.register(envelope)["seqno"]   # signatures valid: the ledger records it, our webhook refuses
    state = wait_until(lambda: (s := ledger.entry(seqno))["delivery"] != "pending" and s, message="delivery")
    assert state["delivery"] == "rejected" and state["attempts"] == 1, host.logs()
    assert state["last_status"] == 422
    assert stored(azurite, "flow-expired", digest_of(payload)) is None


def test_altered_contract_is_refused_by_the_ledger_and_by_the_webhook(setup, azurite):
    host, ledger, identities = setup
    payload = payload_for(ledger, identities, "flow-altered", timedelta(days=30))
    body = cbor2.loads(contracts.sign_contract(payload, list(identities.values())))
    altered = {**payload, "privacy": {"delta": 5e-6}}
    body.value[2] = contracts.canonical_json(altered)
    envelope = cbor2.dumps(body)
    with pytest.raises(contracts.BadSignature):
        ledger.register(envelope)
    assert ledger.entry(1) is None
    response = requests.post(host.url + "/api/contracts", data=envelope,   # straight to the webhook
                             headers={"x-functions-key": host.function_key, "Content-Type": "application/cose"})
    assert response.status_code == 403
    assert stored(azurite, "flow-altered", digest_of(altered)) is None


def test_partially_signed_contract_is_refused(setup, azurite):
    """The ledger holds a partial envelope back; posted to the webhook directly it is refused."""
    host, ledger, identities = setup
    payload = payload_for(ledger, identities, "flow-partial", timedelta(days=30))
    partial = contracts.sign_contract(payload, [identities["tdc"], identities["icmr"]])
    response = requests.post(host.url + "/api/contracts", data=partial,
                             headers={"x-functions-key": host.function_key, "Content-Type": "application/cose"})
    assert response.status_code == 422 and identities["cowin"].did in response.json()["error"]
    assert stored(azurite, "flow-partial", digest_of(payload)) is None
