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

import hashlib
import json
import math
from typing import Callable

from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from shared import did as dids

TYPE = "ccr-budget+jws"
MAX_CHARS = 4096
FIELDS = ("provider", "dataset", "epsilon", "delta")


class DeclarationError(ValueError):
    """A budget declaration that is malformed, not the provider's, or conflicts with the recorded one."""


def declare(identity: dids.Identity, dataset: str, epsilon: float, delta: float) -> str:
    """The provider's declaration for `dataset` (compact JWS by `identity`'s DID key)."""
    claims = check_claims({"provider": identity.did, "dataset": dataset, "epsilon": epsilon, "delta": delta})
    return identity.sign_jws(_canonical(claims), TYPE)


def check_claims(claims) -> dict:
    """The claims if they are exactly the four fields, with a finite epsilon > 0 and 0 < delta < 1."""
    if not isinstance(claims, dict) or sorted(claims) != sorted(FIELDS):
        raise DeclarationError(f"a budget declaration holds exactly {', '.join(FIELDS)}")
    if not isinstance(claims["provider"], str) or not isinstance(claims["dataset"], str) or not claims["dataset"]:
        raise DeclarationError("a budget declaration's provider and dataset are strings")
    for name, low, high in (("epsilon", 0.0, math.inf), ("delta", 0.0, 1.0)):
        value = claims[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value < high:
            raise DeclarationError(f"a budget declaration's {name} must be a number in ({low:g}, {high:g})")
    return claims


def _parse(token) -> tuple[jws.JWS, dict, dict]:
    if not isinstance(token, str) or len(token) > MAX_CHARS or token.count(".") != 2:
        raise DeclarationError("a budget declaration is a compact JWS")
    parsed = jws.JWS()
    try:
        parsed.deserialize(token)
        header = parsed.jose_header
        claims = json.loads(parsed.objects["payload"])
    except (JWException, ValueError, KeyError, TypeError):
        raise DeclarationError("a budget declaration is a compact JWS with a JSON payload") from None
    if header.get("typ") != TYPE or header.get("alg") != "ES256" or not isinstance(header.get("kid"), str):
        raise DeclarationError(f"a budget declaration's header is alg ES256, typ {TYPE} and the provider's kid")
    return parsed, header, check_claims(claims)


def claims(token) -> dict:
    """The declaration's claims, signature NOT checked (for validating a contract's shape)."""
    return _parse(token)[2]


def verify(token, resolve_did: Callable[[str], dict]) -> dict:
    """The claims, if the JWS is signed by the key of the provider's DID document that its kid names."""
    parsed, header, checked = _parse(token)
    did, _ = dids.split_did_url(header["kid"])
    if did != checked["provider"]:
        raise DeclarationError(f"the budget declaration for {checked['dataset']} is not signed by its provider")
    public = dids.verification_key(resolve_did(did), header["kid"])
    try:
        parsed.verify(jwk.JWK.from_pyca(public), alg="ES256")
    except JWException:
        raise DeclarationError(f"the budget declaration for {checked['dataset']} does not verify against "
                               f"{did}'s DID key (altered or signed with another key)") from None
    return checked


def identity(claims_: dict) -> str:
    """The population the declaration is for (as `shared.contract.dataset_identity`)."""
    return f"{claims_['provider']}/{claims_['dataset']}"


def digest(token: str) -> str:
    """sha256 of the declared terms (canonical JSON): equal terms, equal digest."""
    return hashlib.sha256(_canonical(claims(token))).hexdigest()


def _canonical(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
