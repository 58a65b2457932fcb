"""Ledger twin -> the app's contract webhook on the local Functions host: a fully signed
contract is verified against the parties' DID documents and stored once; a replay gets the
same answer; a contract the webhook refuses stops the ledger's retries and stores nothing."""
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
from shared.settings import PROJECT_ROOT
from tests.conftest import wait_until
from tests.contracts.conftest import contract_payload

FAST = RetryPolicy(initial_seconds=0.05, maximum_seconds=0.2, attempts=4, timeout_seconds=30)


@pytest.fixture
def setup(tmp_path, tls, function_host, azurite):
    host = function_host(PROJECT_ROOT, env={"CCR_CA_BUNDLE": str(tls.ca_path)})
    ledger = LedgerTwin(tmp_path / "ledger", host.url + "/api/contracts", host.function_key,
                        tls.server_context(), retry=FAST).start()
    names = ("tdc", "icmr", "cowin", "index")
    identities = {name: dids.Identity.generate(ledger.did_for(name)) for name in names}
    for identity in identities.values():
        assert ledger.publish_did(identity.document())
    yield host, ledger, identities
    ledger.stop()


def stored(azurite, contract_id):
    blob = BlobServiceClient.from_connection_string(azurite).get_blob_client("contracts", f"{contract_id}.json")
    return json.loads(blob.download_blob().readall()) if blob.exists() else None


def payload_for(identities, contract_id, valid_until):
    now = datetime.now(timezone.utc)
    return contract_payload(identities["tdc"].did, {n: identities[n].did for n in ("icmr", "cowin", "index")},
                            contract_id=contract_id,
                            valid_from=(now - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                            valid_until=(now + valid_until).strftime("%Y-%m-%dT%H:%M:%SZ"))


def test_signed_contract_is_stored_once_and_replay_is_harmless(setup, azurite):
    host, ledger, identities = setup
    payload = payload_for(identities, "flow-ok", timedelta(days=30))
    envelope = contracts.sign_contract(payload, list(identities.values()))
    first = ledger.register(envelope)["seqno"]
    wait_until(lambda: ledger.entry(first)["delivery"] != "pending", message="webhook delivery")
    assert ledger.entry(first)["delivery"] == "delivered", host.logs()
    record = stored(azurite, "flow-ok")
    assert record["digest"] == contracts.payload_digest(contracts.canonical_json(payload))
    second = ledger.register(envelope)["seqno"]
    wait_until(lambda: ledger.entry(second)["delivery"] == "delivered", message="replay delivery")
    assert stored(azurite, "flow-ok")["accepted"] == record["accepted"]
    answer = requests.post(host.url + "/api/contracts", data=envelope,
                           headers={"x-functions-key": host.function_key, "Content-Type": "application/cose"})
    assert answer.status_code == 200 and answer.json()["contract_id"] == "flow-ok"


@pytest.mark.parametrize("case", ["expired", "altered"])
def test_refused_contracts_stop_retries_and_store_nothing(setup, azurite, case):
    host, ledger, identities = setup
    contract_id = f"flow-{case}"
    payload = payload_for(identities, contract_id, timedelta(seconds=-1) if case == "expired" else timedelta(days=30))
    envelope = contracts.sign_contract(payload, list(identities.values()))
    if case == "altered":
        body = cbor2.loads(envelope)
        body.value[2] = contracts.canonical_json({**payload, "privacy": {"delta": 0.5}})
        envelope = cbor2.dumps(body)
    seqno = ledger.register(envelope)["seqno"]
    state = wait_until(lambda: (s := ledger.entry(seqno))["delivery"] != "pending" and s, message="delivery")
    assert state["delivery"] == "rejected" and state["attempts"] == 1, host.logs()
    assert state["last_status"] == (422 if case == "expired" else 403)
    assert stored(azurite, contract_id) is None


def test_partially_signed_contract_is_refused(setup, azurite):
    """The ledger holds a partial envelope back; posted to the webhook directly it is refused."""
    host, ledger, identities = setup
    payload = payload_for(identities, "flow-partial", timedelta(days=30))
    partial = contracts.sign_contract(payload, [identities["tdc"], identities["icmr"]])
    response = requests.post(host.url + "/api/contracts", data=partial,
                             headers={"x-functions-key": host.function_key, "Content-Type": "application/cose"})
    assert response.status_code == 422 and identities["cowin"].did in response.json()["error"]
    assert stored(azurite, "flow-partial") is None
