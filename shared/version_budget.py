"""Whose lifetime privacy budget a run on a new dataset version is charged to.

Claim: a continued run can never spend on people beyond what their provider declared, however
the versions are labelled. The populations a version's rows belong to come from its provider's
verified version declaration (shared/version_declaration.py) and the ones before it:
  - the dataset's own population is `provider/dataset` (`shared.contract.dataset_identity`):
    its version 1 (a contract's first package) is those people;
  - a later version declared `new_individuals: true` is a population of its own,
    `provider/dataset@v<version>`, with its own lifetime budget: the provider's declared
    (epsilon, delta) for the dataset, which is per person (shared/budget_declaration.py);
  - a version declared `new_individuals: false` holds people the dataset held before, without
    saying which: its run is charged to every population declared up to it (the dataset's own
    and each earlier new-individuals version), so its epsilon adds to every earlier run's that
    its rows may have been in. Conservative: it never under-charges.
A warm start from the previous model charges nobody again: that model is the output of DP runs
already charged (post-processing).

Attacks stopped: a run on a version its provider never declared, or whose declaration does
not verify, names another package, or sits among declarations out of order (refused, naming
why); a provider's declaration cannot be relabelled afterwards (signature). What this cannot
stop: a provider declaring old people as new; that is its own word, as its budget is, and the
ledger refuses the one check it can make (the same package declared twice).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

from shared import did as dids
from shared import version_declaration as versions


class UndeclaredVersion(ValueError):
    """A version the budget rule cannot place: no valid declaration of its provider for it."""


def population(provider: str, dataset: str, version: int | None = None) -> str:
    """The identity of the dataset's own population, or of a new-individuals version's ('@' is
    not allowed in a dataset name, so a version's population never collides with a dataset's)."""
    return f"{provider}/{dataset}" if version is None else f"{provider}/{dataset}@v{version}"


def populations(provider: str, dataset: str, version: int, pin: dict, declarations: Sequence[str],
                resolve_did: Callable[[str], dict]) -> tuple[str, ...]:
    """The populations a run on `version` of the dataset (package `pin`, as a contract pins it)
    is charged to, from the dataset's declarations as the ledger serves them (GET /versions, in
    version order). UndeclaredVersion if that version has no valid declaration for that package."""
    where = f"version {version} of {population(provider, dataset)}"
    history: list[dict] = []
    for token in declarations:
        try:
            claims = versions.verify(token, resolve_did)
        except (versions.VersionDeclarationError, dids.DidError) as problem:
            raise UndeclaredVersion(f"{where}: a declaration of its dataset does not verify ({problem})") from None
        if (claims["provider"], claims["dataset"]) != (provider, dataset):
            raise UndeclaredVersion(f"{where}: a declaration for {versions.identity(claims)} is among its dataset's")
        if history and claims["version"] <= history[-1]["version"]:
            raise UndeclaredVersion(f"{where}: its dataset's declarations are not in strictly increasing order")
        history.append(claims)
    earlier = [claims for claims in history if claims["version"] <= version]
    declared = earlier[-1] if earlier and earlier[-1]["version"] == version else None
    if declared is None:
        raise UndeclaredVersion(f"{where} has no declaration by its provider: an undeclared version is not trained on")
    if versions.pin(declared) != pin:
        raise UndeclaredVersion(f"{where} is declared for another package than the one given")
    if declared["new_individuals"] and version > 1:
        return (population(provider, dataset, version),)
    return (population(provider, dataset),) + tuple(
        population(provider, dataset, c["version"]) for c in earlier[:-1] if c["new_individuals"] and c["version"] > 1)
