"""A dataset version is its provider's signed declaration, recorded on the ledger in strictly
increasing order: nobody else declares a version of a provider's dataset, an old declaration
cannot be replayed or slipped in out of order, a package cannot come back as a new version,
and an altered declaration does not verify. Every refusal records nothing."""
from __future__ import annotations

import base64
import json

import pytest
import requests

from local_emulator.ledger import LedgerTwin
from local_emulator.ledger_versions import VersionConflict, VersionRecords
from shared import budget_declaration
from shared import contract as contracts
from shared import did as dids
from shared import version_declaration as versions
from tests.contracts.conftest import contract_payload, record_budgets, sha


@pytest.fixture(scope="module")
def ledger(tmp_path_factory, tls):
    twin = LedgerTwin(tmp_path_factory.mktemp("ledger"), ssl_context=tls.server_context()).start()
    yield twin
    twin.stop()


def provider(ledger: LedgerTwin, name: str, dataset: str | None = None) -> dids.Identity:
    """A registered party; with `dataset`, that dataset's lifetime budget declared."""
    identity = dids.Identity.generate(ledger.did_for(name))
    assert ledger.publish_did(identity.document(), dids.registration_proof(identity, ledger.url))
    if dataset:
        ledger.declare_budget(budget_declaration.declare(identity, dataset, 1.5, 1e-5))
    return identity


def post(ledger: LedgerTwin, tls, token: str) -> requests.Response:
    return requests.post(f"{ledger.url}/versions", data=token, headers={"Content-Type": "application/jose"},
                         verify=str(tls.ca_path), timeout=30)


def recorded(ledger: LedgerTwin, tls, party: dids.Identity, dataset: str) -> list[dict]:
    answer = requests.get(f"{ledger.url}/versions", params={"provider": party.did, "dataset": dataset},
                          verify=str(tls.ca_path), timeout=30)
    if answer.status_code == 404:
        return []
    assert answer.status_code == 200
    return [versions.claims(token) for token in answer.json()["declarations"]]


def version(party: dids.Identity, dataset: str, number: int, package: str, new_individuals: bool = False) -> str:
    return versions.declare(party, dataset, number, {"blake3": sha(package)}, new_individuals)


def test_a_provider_declares_versions_of_its_dataset_in_order(ledger, tls):
    bank = provider(ledger, "bank-order", "loans")
    second = version(bank, "loans", 2, "loans-2")
    answer = post(ledger, tls, second)
    assert answer.status_code == 201 and answer.json() == {"identity": f"{bank.did}/loans", "version": 2,
                                                           "digest": versions.digest(second)}
    assert post(ledger, tls, version(bank, "loans", 3, "loans-3", new_individuals=True)).status_code == 201
    assert [(c["version"], c["digest"], c["new_individuals"]) for c in recorded(ledger, tls, bank, "loans")] == \
        [(2, sha("loans-2"), False), (3, sha("loans-3"), True)]
    assert versions.pin(recorded(ledger, tls, bank, "loans")[0]) == {"blake3": sha("loans-2")}


def test_another_party_cannot_declare_a_version_of_a_victims_dataset(ledger, tls):
    bank, bureau = provider(ledger, "bank-victim", "loans"), provider(ledger, "bureau-thief", "history")
    impostor = dids.Identity.generate(bank.did)  # the victim's DID, another key
    forged = post(ledger, tls, version(impostor, "loans", 2, "poisoned"))
    assert forged.status_code == 403 and "does not verify against" in forged.json()["error"]
    # signed by the bureau's own registered key, naming the bank as provider: kid and provider disagree
    claims = {"provider": bank.did, "dataset": "loans", "version": 2, "digest_algorithm": "blake3",
              "digest": sha("poisoned"), "new_individuals": True}
    mislabelled = bureau.sign_jws(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode(), versions.TYPE)
    refused = post(ledger, tls, mislabelled)
    assert refused.status_code == 403 and "not signed by its provider" in refused.json()["error"]
    # under its own DID the bureau names only its own datasets; "loans" there has no declared budget
    own = post(ledger, tls, version(bureau, "loans", 2, "poisoned"))
    assert own.status_code == 409 and "no declared lifetime budget" in own.json()["error"]
    stranger = dids.Identity.generate(ledger.did_for("stranger"))  # never registered
    assert post(ledger, tls, version(stranger, "loans", 2, "poisoned")).status_code == 403
    assert recorded(ledger, tls, bank, "loans") == [] and recorded(ledger, tls, bureau, "loans") == []


def test_a_replayed_or_reordered_version_is_refused(ledger, tls):
    bank = provider(ledger, "bank-replay", "loans")
    second, third = version(bank, "loans", 2, "replay-2"), version(bank, "loans", 3, "replay-3")
    assert post(ledger, tls, second).status_code == 201 and post(ledger, tls, third).status_code == 201
    for token, number in ((second, 2),                                           # the same declaration again
                          (version(bank, "loans", 3, "replay-3b"), 3),           # version 3 once more
                          (version(bank, "loans", 1, "replay-1", True), 1)):     # an older version, late
        refused = post(ledger, tls, token)
        assert refused.status_code == 409
        assert refused.json()["error"] == (f"version {number} of {bank.did}/loans is not after the latest declared "
                                           "version 3: versions strictly increase")
    assert [c["version"] for c in recorded(ledger, tls, bank, "loans")] == [2, 3]


def test_a_package_digest_is_not_declared_again_under_a_new_version(ledger, tls):
    bank = provider(ledger, "bank-reuse", "loans")
    ledger.declare_budget(budget_declaration.declare(bank, "loans-eu", 1.5, 1e-5))
    assert post(ledger, tls, version(bank, "loans", 2, "reused")).status_code == 201
    # the same people's package again, now claimed as new individuals (a fresh budget): refused
    for dataset, number in (("loans", 3), ("loans-eu", 2)):
        refused = post(ledger, tls, version(bank, dataset, number, "reused", new_individuals=True))
        assert refused.status_code == 409
        assert "was already declared as version 2 of loans: a new version is a new package" in refused.json()["error"]
    assert [c["version"] for c in recorded(ledger, tls, bank, "loans")] == [2]
    assert recorded(ledger, tls, bank, "loans-eu") == []


def test_a_party_cannot_squat_a_victims_next_package_digest(ledger, tls):
    """Package digests are public (contracts carry them): the digest index is per provider, so a
    party declaring a victim's next digest under its own dataset blocks nothing."""
    bank, bureau = provider(ledger, "bank-squat", "loans"), provider(ledger, "bureau-squat", "history")
    assert post(ledger, tls, version(bureau, "history", 2, "bank-next")).status_code == 201
    assert post(ledger, tls, version(bank, "loans", 2, "bank-next")).status_code == 201


def test_a_tampered_declaration_is_refused(ledger, tls):
    bank = provider(ledger, "bank-tamper", "loans")
    header, payload, signature = version(bank, "loans", 2, "tampered").split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["new_individuals"] = True  # the provider said the same people; now a fresh budget
    altered = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    refused = post(ledger, tls, f"{header}.{altered}.{signature}")
    assert refused.status_code == 403 and "does not verify" in refused.json()["error"]
    for junk in ("not a jws", "a.b.c", budget_declaration.declare(bank, "loans", 1.5, 1e-5)):  # a budget is no version
        malformed = post(ledger, tls, junk)
        assert malformed.status_code == 400 and "version declaration" in malformed.json()["error"]
    assert recorded(ledger, tls, bank, "loans") == []


@pytest.mark.parametrize("number, pin, new_individuals, reason", [
    (0, {"blake3": sha("x")}, False, "version must be an integer >= 1"),
    (True, {"blake3": sha("x")}, False, "version must be an integer >= 1"),
    (2, {"md5": sha("x")}, False, "digest_algorithm must be one of blake3, sha256"),
    (2, {"blake3": sha("x").upper()}, False, "digest must be 64 lowercase hex digits"),
    (2, {"blake3": sha("x"), "sha256": sha("x")}, False, "pins one package digest"),
    (2, {"sha256": sha("x")}, "yes", "new_individuals must be true or false"),
])
def test_a_malformed_declaration_is_not_signed(identities, number, pin, new_individuals, reason):
    with pytest.raises(versions.VersionDeclarationError, match=reason):
        versions.declare(identities["icmr"], "icmr", number, pin, new_individuals)


def test_the_record_of_versions_survives_a_restart(tmp_path, identities, resolve):
    """The record is on disk: a replay after the ledger restarts is still refused."""
    icmr = identities["icmr"]
    second = versions.declare(icmr, "icmr", 2, {"blake3": sha("restart-2")}, False)
    VersionRecords(tmp_path, resolve, lambda provider, dataset: True).declare(second)
    restarted = VersionRecords(tmp_path, resolve, lambda provider, dataset: True)
    assert restarted.recorded(icmr.did, "icmr") == [second]
    with pytest.raises(VersionConflict, match="versions strictly increase"):
        restarted.declare(second)


def test_a_contract_names_a_later_version_only_with_the_package_its_provider_declared(ledger, tls):
    tdc, bank = provider(ledger, "tdc-contract"), provider(ledger, "bank-contract")
    payload = contract_payload(tdc.did, {"loans": bank})
    record_budgets(ledger, payload)
    entry = payload["tdps"][0]["datasets"][0]  # pins {"sha256": sha("loans")}
    entry["version"] = 2
    with pytest.raises(contracts.BadSignature, match="version 2 is not the package .* declared as that version"):
        ledger.register(contracts.sign_contract(payload, [tdc, bank]))
    assert post(ledger, tls, versions.declare(bank, "loans", 2, {"sha256": sha("other")}, False)).status_code == 201
    with pytest.raises(contracts.BadSignature, match="version 2 is not the package"):
        ledger.register(contracts.sign_contract(payload, [tdc, bank]))
    assert post(ledger, tls, versions.declare(bank, "loans", 3, {"sha256": sha("loans")}, False)).status_code == 201
    entry["version"] = 3
    assert ledger.register(contracts.sign_contract(payload, [tdc, bank]))["complete"]
