"""A dataset's lifetime budget is its provider's signed declaration, recorded once on the ledger:
nobody else can declare it, the provider cannot raise it later, a contract cannot carry another
one, and the control plane's budget store charges every run against the first it saw."""
from __future__ import annotations

import copy
import json
import secrets
from datetime import datetime, timezone

import pytest
import requests
from azure.storage.blob import BlobServiceClient

from local_emulator.ledger import LedgerTwin
from shared import budget_declaration
from shared import contract as contracts
from shared import did as dids
from shared.privacy_budget import PrivacyBudget
from tests.contracts.conftest import contract_payload, record_budgets

NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


@pytest.fixture
def ledger(tmp_path, tls):
    twin = LedgerTwin(tmp_path / "ledger", ssl_context=tls.server_context()).start()
    yield twin
    twin.stop()


def registered(ledger: LedgerTwin, name: str) -> dids.Identity:
    identity = dids.Identity.generate(ledger.did_for(name))
    assert ledger.publish_did(identity.document(), dids.registration_proof(identity, ledger.url))
    return identity


def post(ledger: LedgerTwin, tls, token: str) -> requests.Response:
    return requests.post(f"{ledger.url}/budgets", data=token, headers={"Content-Type": "application/jose"},
                         verify=str(tls.ca_path), timeout=30)


def recorded(ledger: LedgerTwin, tls, provider: str, dataset: str) -> requests.Response:
    return requests.get(f"{ledger.url}/budgets", params={"provider": provider, "dataset": dataset},
                        verify=str(tls.ca_path), timeout=30)


def test_a_budget_is_declared_once_and_a_conflicting_declaration_is_refused(ledger, tls):
    icmr = registered(ledger, "icmr")
    first = budget_declaration.declare(icmr, "icmr", 1.5, 1e-5)
    answer = post(ledger, tls, first)
    assert answer.status_code == 201 and answer.json() == {"identity": f"{icmr.did}/icmr",
                                                           "digest": budget_declaration.digest(first)}
    # the same terms again (a new signature): recorded already, nothing changes
    assert post(ledger, tls, budget_declaration.declare(icmr, "icmr", 1.5, 1e-5)).status_code == 200
    # the provider itself cannot raise it later, nor lower its delta
    for epsilon, delta in ((50.0, 1e-5), (1.5, 1e-3)):
        refused = post(ledger, tls, budget_declaration.declare(icmr, "icmr", epsilon, delta))
        assert refused.status_code == 409 and "declared once" in refused.json()["error"]
    assert recorded(ledger, tls, icmr.did, "icmr").json() == {"declaration": first}
    # another dataset name of the same provider is another population
    assert post(ledger, tls, budget_declaration.declare(icmr, "icmr-2", 3.0, 1e-5)).status_code == 201


def test_nobody_but_the_provider_declares_its_budget(ledger, tls):
    icmr, tdc = registered(ledger, "icmr"), registered(ledger, "tdc")
    impostor = dids.Identity.generate(icmr.did)  # the provider's DID, another key
    forged = post(ledger, tls, budget_declaration.declare(impostor, "icmr", 99.0, 0.5))
    assert forged.status_code == 403 and "does not verify" in forged.json()["error"]
    # a declaration the TDC signs naming the provider: kid and provider disagree
    mislabelled = _signed(tdc, {"provider": icmr.did, "dataset": "icmr", "epsilon": 99.0, "delta": 0.5})
    refused = post(ledger, tls, mislabelled)
    assert refused.status_code == 403 and "not signed by its provider" in refused.json()["error"]
    # an unregistered provider declares nothing
    stranger = dids.Identity.generate(ledger.did_for("stranger"))
    assert post(ledger, tls, budget_declaration.declare(stranger, "x", 1.0, 1e-5)).status_code == 403
    for junk in ("not a jws", "a.b.c"):
        assert post(ledger, tls, junk).status_code == 400
    assert recorded(ledger, tls, icmr.did, "icmr").status_code == 404


def _signed(signer: dids.Identity, claims: dict) -> str:
    """`claims` as they stand (naming a provider other than the signer), signed by `signer`."""
    return signer.sign_jws(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode(),
                           budget_declaration.TYPE)


def test_a_contract_carrying_another_declaration_than_the_recorded_one_is_not_recorded(ledger, tls):
    parties = {name: registered(ledger, name) for name in ("tdc", "icmr", "cowin", "index")}
    payload = contract_payload(parties["tdc"].did, {n: parties[n] for n in ("icmr", "cowin", "index")})
    record_budgets(ledger, payload)
    larger = copy.deepcopy(payload)  # icmr signs a fresh, larger declaration the ledger never recorded
    larger["tdps"][0]["datasets"][0]["budget"] = budget_declaration.declare(parties["icmr"], "icmr", 9.0, 1e-5)
    larger["tdps"][0]["datasets"][0]["epsilon"] = 9.0
    with pytest.raises(contracts.BadSignature, match="not the one .* declared on this ledger"):
        ledger.register(contracts.sign_contract(larger, list(parties.values())))
    assert ledger.register(contracts.sign_contract(payload, list(parties.values())))["complete"]


def test_a_forged_declaration_inside_a_contract_fails_its_verification(identities, resolve):
    """A TDC writing the providers' contract cannot slip in a larger budget in a provider's name:
    the declaration must verify against that provider's DID key, whoever signed the contract."""
    payload = contract_payload(identities["tdc"].did, {n: identities[n] for n in ("icmr", "cowin", "index")})
    impostor = dids.Identity.generate(identities["icmr"].did)
    payload["tdps"][0]["datasets"][0]["budget"] = budget_declaration.declare(impostor, "icmr", 50.0, 1e-5)
    envelope = contracts.sign_contract(payload, list(identities.values()))
    with pytest.raises(contracts.BadSignature, match="icmr's budget declaration .* does not verify"):
        contracts.verify_contract(envelope, resolve, NOW)


def test_the_budget_store_pins_the_first_declaration_and_sums_epsilon_and_delta(azurite):
    budget = PrivacyBudget(BlobServiceClient.from_connection_string(azurite))
    population = f"did:web:parties.test:icmr-{secrets.token_hex(4)}/icmr"
    declared = {"digest": "a" * 64, "epsilon": 1.5, "delta": 2e-5}
    assert budget.reserve(population, "run-1", declared, 1.0, 1e-5) is None
    assert "epsilon 1.0 does not fit" in budget.reserve(population, "run-2", declared, 1.0, 1e-5)
    assert budget.reserve(population, "run-2", declared, 0.5, 1e-5) is None  # epsilon 1.5, delta 2e-5: full
    budget.release(population, "run-2")
    assert "delta 2e-05 does not fit" in budget.reserve(population, "run-3", declared, 0.1, 2e-5)
    larger = {"digest": "b" * 64, "epsilon": 50.0, "delta": 0.1}  # another declaration for the same people
    assert "declared once" in budget.reserve(population, "run-4", larger, 0.1, 1e-6)
    assert set(budget.runs(population)) == {"run-1"} and budget.declaration(population) == declared
