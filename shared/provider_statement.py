"""A provider's signed statement about one of its datasets, parsed and verified one way.

Budget declarations (shared/budget_declaration.py) and version declarations
(shared/version_declaration.py) are both a compact JWS (ES256, a `typ` of their own) by the
provider's DID key over canonical JSON claims naming the provider. Each kind checks its own
claims; this module holds what they share: the JWS shape, the signer being the named provider,
the signature against that provider's DID document, and a digest of the terms."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

from jwcrypto import jwk, jws
from jwcrypto.common import JWException

from shared import did as dids

MAX_CHARS = 4096


@dataclass(frozen=True)
class Kind:
    """One kind of statement: `typ`, its `name` in messages ("budget declaration"), the error it
    raises, its claims check, and how a message names one statement (`describe(claims)`)."""
    typ: str
    name: str
    error: type[ValueError]
    check_claims: Callable[[object], dict]
    describe: Callable[[dict], str]


def checked_fields(kind: Kind, claims, fields: tuple[str, ...]) -> dict:
    """`claims` if it holds exactly `fields`, the provider and dataset as strings (each kind
    then checks its own terms)."""
    if not isinstance(claims, dict) or sorted(claims) != sorted(fields):
        raise kind.error(f"a {kind.name} holds exactly {', '.join(fields)}")
    if not isinstance(claims["provider"], str) or not isinstance(claims["dataset"], str) or not claims["dataset"]:
        raise kind.error(f"a {kind.name}'s provider and dataset are strings")
    return claims


def canonical(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def sign(kind: Kind, identity: dids.Identity, claims: dict) -> str:
    return identity.sign_jws(canonical(kind.check_claims(claims)), kind.typ)


def parse(kind: Kind, token) -> tuple[jws.JWS, dict, dict]:
    """(JWS, header, checked claims); the signature is not checked here."""
    if not isinstance(token, str) or len(token) > MAX_CHARS or token.count(".") != 2:
        raise kind.error(f"a {kind.name} is a compact JWS")
    parsed = jws.JWS()
    try:
        parsed.deserialize(token)
        header = parsed.jose_header
        claims = json.loads(parsed.objects["payload"])
    except (JWException, ValueError, KeyError, TypeError):
        raise kind.error(f"a {kind.name} is a compact JWS with a JSON payload") from None
    if header.get("typ") != kind.typ or header.get("alg") != "ES256" or not isinstance(header.get("kid"), str):
        raise kind.error(f"a {kind.name}'s header is alg ES256, typ {kind.typ} and the provider's kid")
    return parsed, header, kind.check_claims(claims)


def verify(kind: Kind, token, resolve_did: Callable[[str], dict]) -> dict:
    """The claims, if the JWS is signed by the key of the provider's DID document that its kid names."""
    parsed, header, checked = parse(kind, token)
    did, _ = dids.split_did_url(header["kid"])
    if did != checked["provider"]:
        raise kind.error(f"{kind.describe(checked)} is not signed by its provider")
    public = dids.verification_key(resolve_did(did), header["kid"])
    try:
        parsed.verify(jwk.JWK.from_pyca(public), alg="ES256")
    except JWException:
        raise kind.error(f"{kind.describe(checked)} does not verify against {did}'s DID key (altered or signed "
                         "with another key)") from None
    return checked


def dataset_identity(claims: dict) -> str:
    """The dataset (the population) a statement is about: its provider's DID and its name, as
    `shared.contract.dataset_identity` names it from a contract."""
    return f"{claims['provider']}/{claims['dataset']}"


def digest(kind: Kind, token: str) -> str:
    """sha256 of the stated terms (canonical JSON): equal terms, equal digest."""
    return hashlib.sha256(canonical(parse(kind, token)[2])).hexdigest()
