"""The budget rule for new dataset versions: rows of the same people compose with the earlier
runs' (epsilon adds up), a version declared as new individuals is a population with its own
lifetime budget, and a version without a valid declaration of its provider is refused."""
from __future__ import annotations

import secrets

import pytest
from azure.storage.blob import BlobServiceClient

from shared import did as dids
from shared import version_declaration as versions
from shared.privacy_budget import PrivacyBudget
from shared.version_budget import UndeclaredVersion, population, populations
from tests.contracts.conftest import sha


def pin(name: str) -> dict:
    return {"blake3": sha(name)}


def declared(identity: dids.Identity, *versions_: tuple[int, bool]) -> list[str]:
    """The dataset's declarations as the ledger serves them: (version, new_individuals) in order."""
    return [versions.declare(identity, "icmr", number, pin(f"icmr-{number}"), new) for number, new in versions_]


def test_same_people_compose_with_every_earlier_population_and_new_people_stand_alone(identities, resolve):
    icmr = identities["icmr"]
    base = population(icmr.did, "icmr")
    history = declared(icmr, (2, False), (3, True), (4, False), (5, True))

    def of(version: int) -> tuple[str, ...]:
        return populations(icmr.did, "icmr", version, pin(f"icmr-{version}"), history, resolve)
    assert of(2) == (base,)                                 # the same people again
    assert of(3) == (f"{base}@v3",)                         # new people: their own budget
    assert of(4) == (base, f"{base}@v3")                    # not new: any of the earlier people
    assert of(5) == (f"{base}@v5",)


@pytest.mark.parametrize("history, version, given, reason", [
    ([], 2, "icmr-2", "version 2 of .*/icmr has no declaration by its provider"),
    ([(2, False)], 3, "icmr-3", "version 3 of .*/icmr has no declaration by its provider"),
    ([(2, False)], 2, "icmr-other", "is declared for another package than the one given"),
    ([(3, False), (2, False)], 2, "icmr-2", "not in strictly increasing order"),
])
def test_a_version_without_its_valid_declaration_is_refused(identities, resolve, history, version, given, reason):
    with pytest.raises(UndeclaredVersion, match=reason):
        populations(identities["icmr"].did, "icmr", version, pin(given), declared(identities["icmr"], *history),
                    resolve)


def test_a_forged_or_foreign_declaration_is_refused(identities, resolve):
    icmr = identities["icmr"]
    forged = declared(dids.Identity.generate(icmr.did), (2, True))  # the provider's DID, another key
    with pytest.raises(UndeclaredVersion, match="does not verify against"):
        populations(icmr.did, "icmr", 2, pin("icmr-2"), forged, resolve)
    cowin = versions.declare(identities["cowin"], "cowin", 2, pin("icmr-2"), True)
    with pytest.raises(UndeclaredVersion, match="a declaration for .*/cowin is among its dataset's"):
        populations(icmr.did, "icmr", 2, pin("icmr-2"), [cowin], resolve)


def test_a_continued_run_on_the_same_people_adds_up_and_one_on_new_people_does_not(azurite, identities, resolve):
    budget = PrivacyBudget(BlobServiceClient.from_connection_string(azurite))
    icmr = identities["icmr"]
    dataset = f"icmr-{secrets.token_hex(4)}"  # a fresh population in the session's Azurite
    lifetime = {"digest": "a" * 64, "epsilon": 1.5, "delta": 1e-4}
    history = [versions.declare(icmr, dataset, 2, pin(f"{dataset}-2"), False),
               versions.declare(icmr, dataset, 3, pin(f"{dataset}-3"), True)]
    base = population(icmr.did, dataset)
    assert budget.reserve(base, "run-1", lifetime, 1.0, 1e-5) is None  # the contract's first run
    same = populations(icmr.did, dataset, 2, pin(f"{dataset}-2"), history, resolve)
    refused = budget.reserve_each(same, "run-2", lifetime, 1.0, 1e-5)
    assert refused == f"{base}: exhausted: epsilon 1.0 does not fit in what is left of 1.5"
    assert budget.reserve_each(same, "run-2", lifetime, 0.5, 1e-5) is None  # 1.0 + 0.5: the lifetime, spent
    new = populations(icmr.did, dataset, 3, pin(f"{dataset}-3"), history, resolve)
    assert budget.reserve_each(new, "run-3", lifetime, 1.0, 1e-5) is None  # new people: their own 1.5
    assert set(budget.runs(base)) == {"run-1", "run-2"} and set(budget.runs(f"{base}@v3")) == {"run-3"}


def test_reserving_on_several_populations_is_all_or_none(azurite):
    budget = PrivacyBudget(BlobServiceClient.from_connection_string(azurite))
    base = f"did:web:parties.test:icmr-{secrets.token_hex(4)}/icmr"
    lifetime = {"digest": "b" * 64, "epsilon": 1.5, "delta": 1e-4}
    assert budget.reserve(f"{base}@v3", "run-1", lifetime, 1.2, 1e-5) is None  # new people, mostly spent
    refused = budget.reserve_each((base, f"{base}@v3"), "run-2", lifetime, 0.5, 1e-5)
    assert refused.startswith(f"{base}@v3: exhausted")
    assert budget.runs(base) == {} and set(budget.runs(f"{base}@v3")) == {"run-1"}  # nothing kept on the first
