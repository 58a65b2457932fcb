"""A new version of a provider's dataset: which package it is, and whether its rows are new people.

Claim: a dataset version exists only by its provider's word, given once. A declaration is a
compact JWS (ES256, typ `ccr-version+jws`) by the provider's DID key over {"provider",
"dataset", "version", "digest_algorithm", "digest", "new_individuals"}: the dataset's identity
(provider DID + name, as its budget declaration), a version number, the package's manifest
commitment as contracts pin it (`blake3` for version-2 packages, `sha256` for version 1), and
whether its rows are people the dataset never held before (a new population with its own
lifetime budget, shared/version_budget.py) or the same people again (their budget composes).

Where it is held to: the ledger records a dataset's versions in strictly increasing order and
refuses a package digest the provider already declared (local_emulator/ledger_versions.py);
the trainer and the budget rule take a version only with its verified declaration.

Attacks stopped: another party declaring a version of a victim's dataset (not the provider's
key: the ledger and `verify` refuse it); a replayed or reordered declaration (versions strictly
increase); one package passed off as a new version, e.g. to claim a fresh budget for the same
people (a declared digest is never declared again); an altered declaration (signature)."""
from __future__ import annotations

import re
from collections.abc import Callable

from shared import did as dids
from shared import provider_statement as statements

TYPE = "ccr-version+jws"
FIELDS = ("provider", "dataset", "version", "digest_algorithm", "digest", "new_individuals")
DIGEST_ALGORITHMS = ("blake3", "sha256")  # the package manifest's commitments (shared/package.py)
_HEX256 = re.compile(r"^[0-9a-f]{64}$")


class VersionDeclarationError(ValueError):
    """A version declaration that is malformed, not the provider's, or out of order."""


def declare(identity: dids.Identity, dataset: str, version: int, pin: dict, new_individuals: bool) -> str:
    """The provider's declaration that package `pin` ({"blake3": hex} or {"sha256": hex}, as a
    contract pins it) is `version` of `dataset` (compact JWS by `identity`'s DID key)."""
    if not isinstance(pin, dict) or len(pin) != 1:
        raise VersionDeclarationError("a version declaration pins one package digest, as {\"blake3\": hex}")
    (algorithm, digest_hex), = pin.items()
    return statements.sign(KIND, identity, {"provider": identity.did, "dataset": dataset, "version": version,
                                            "digest_algorithm": algorithm, "digest": digest_hex,
                                            "new_individuals": new_individuals})


def check_claims(claims) -> dict:
    """The claims if they are exactly FIELDS, well typed: a version >= 1, a known digest
    algorithm with 64 lowercase hex digits, and new_individuals true or false."""
    statements.checked_fields(KIND, claims, FIELDS)
    version = claims["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise VersionDeclarationError("a version declaration's version must be an integer >= 1")
    if claims["digest_algorithm"] not in DIGEST_ALGORITHMS:
        raise VersionDeclarationError(f"a version declaration's digest_algorithm must be one of "
                                      f"{', '.join(DIGEST_ALGORITHMS)}")
    if not isinstance(claims["digest"], str) or not _HEX256.match(claims["digest"]):
        raise VersionDeclarationError("a version declaration's digest must be 64 lowercase hex digits")
    if not isinstance(claims["new_individuals"], bool):
        raise VersionDeclarationError("a version declaration's new_individuals must be true or false")
    return claims


KIND = statements.Kind(TYPE, "version declaration", VersionDeclarationError, check_claims,
                       lambda checked: f"the declaration of version {checked['version']} of {checked['dataset']}")


def claims(token) -> dict:
    """The declaration's claims, signature NOT checked (for shape checks only)."""
    return statements.parse(KIND, token)[2]


def verify(token, resolve_did: Callable[[str], dict]) -> dict:
    """The claims, if the JWS is signed by the key of the provider's DID document that its kid names."""
    return statements.verify(KIND, token, resolve_did)


identity = statements.dataset_identity   # the population the declaration is about


def pin(claims_: dict) -> dict:
    """The package commitment as a contract entry pins it: {"blake3": hex} or {"sha256": hex}."""
    return {claims_["digest_algorithm"]: claims_["digest"]}


def digest(token: str) -> str:
    """sha256 of the declared terms (canonical JSON): equal terms, equal digest."""
    return statements.digest(KIND, token)
