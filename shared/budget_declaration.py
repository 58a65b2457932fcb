"""A provider's lifetime privacy budget for one of its datasets: declared once, by the provider.

Claim: what a population may ever spend is its provider's own word, fixed the first time it is
given. A declaration is a compact JWS (ES256, typ `ccr-budget+jws`) by the provider's DID key
over {"provider", "dataset", "epsilon", "delta"}; its identity is provider DID + dataset name
(the population, not a file: the same people re-encrypted under a new pseudonym key keep it).

Where it is held to: the ledger records one declaration per identity, first come, and refuses
another (409) and any contract carrying one it did not record; each contract dataset carries
its declaration (`budget`), so every party signs over it; the contract's verification checks
it against the provider's DID key; the control plane's budget store pins the first
declaration's digest per identity and charges every run against it.

Attacks stopped: a provider (or a TDC) raising a budget by writing a new contract with a larger
threshold; an outsider declaring a budget for someone else's dataset (not the provider's key);
an altered declaration (signature)."""
from __future__ import annotations

import math
from typing import Callable

from shared import did as dids
from shared import provider_statement as statements

TYPE = "ccr-budget+jws"
FIELDS = ("provider", "dataset", "epsilon", "delta")


class DeclarationError(ValueError):
    """A budget declaration that is malformed, not the provider's, or conflicts with the recorded one."""


def declare(identity: dids.Identity, dataset: str, epsilon: float, delta: float) -> str:
    """The provider's declaration for `dataset` (compact JWS by `identity`'s DID key)."""
    return statements.sign(KIND, identity, {"provider": identity.did, "dataset": dataset, "epsilon": epsilon,
                                            "delta": delta})


def check_claims(claims) -> dict:
    """The claims if they are exactly the four fields, with a finite epsilon > 0 and 0 < delta < 1."""
    statements.checked_fields(KIND, claims, FIELDS)
    for name, low, high in (("epsilon", 0.0, math.inf), ("delta", 0.0, 1.0)):
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
            raise DeclarationError(f"a budget declaration's {name} must be a number in ({low:g}, {high:g})")
    return claims


KIND = statements.Kind(TYPE, "budget declaration", DeclarationError, check_claims,
                       lambda checked: f"the budget declaration for {checked['dataset']}")


def claims(token) -> dict:
    """The declaration's claims, signature NOT checked (for validating a contract's shape)."""
    return statements.parse(KIND, token)[2]


def verify(token, resolve_did: Callable[[str], dict]) -> dict:
    """The claims, if the JWS is signed by the key of the provider's DID document that its kid names."""
    return statements.verify(KIND, token, resolve_did)


identity = statements.dataset_identity   # the population the declaration is about


def digest(token: str) -> str:
    """sha256 of the declared terms (canonical JSON): equal terms, equal digest."""
    return statements.digest(KIND, token)
