"""did:web identities for the parties: key pairs, DID documents, and resolution.

A party is `did:web:<host>[%3A<port>]:<path...>`; its DID document lives at
`https://<host>[:<port>]/<path...>/did.json` (or `/.well-known/did.json` without a path),
as the did:web method specifies. Keys are P-256 (signatures are ES256).

Registering a DID document needs proof of possession of its key: a compact JWS (ES256) by the
document's one assertion key over {"did", "aud": <ledger URL>, "iat", "nonce",
"document_sha256"} (`registration_proof`, checked by `check_registration_proof`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwcrypto import jwk, jws

from shared import settings

DEFAULT_KEY_ID = "key-1"
DID_CONTEXT = ["https://www.w3.org/ns/did/v1", "https://w3id.org/security/suites/jws-2020/v1"]
_DID_WEB = re.compile(r"^did:web:([A-Za-z0-9.\-]+(?:%3[Aa][0-9]{1,5})?)((?::[A-Za-z0-9._\-]+)*)$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$")
MAX_DOCUMENT_BYTES = 64 * 1024


class DidError(ValueError):
    """A DID, DID document or key that cannot be used."""


class DidResolutionError(DidError):
    """The DID document could not be fetched (network, TLS, HTTP status): maybe temporary."""


class ProofRefused(DidError):
    """A DID registration whose proof of possession is missing, stale, for another audience or
    document, or not signed by the document's key (the ledger answers 401)."""


REGISTRATION_PROOF_TYPE = "ccr-did-registration+jws"
REGISTRATION_PROOF_MAX_AGE = 300   # seconds either side of the verifier's clock
MAX_PROOF_CHARS = 4096


def did_web(host: str, port: int | None, name: str) -> str:
    """`did:web:127.0.0.1%3A8443:icmr` for a party `name` hosted at https://host:port/name/."""
    if not _NAME.match(name):
        raise DidError(f"party name {name!r} must be letters, digits, '.', '_' or '-'")
    authority = host if port in (None, 443) else f"{host}%3A{port}"
    return f"did:web:{authority}:{name}"


def split_did_url(did_url: str) -> tuple[str, str]:
    """`did:web:...:tdc#key-1` -> (`did:web:...:tdc`, `key-1`)."""
    did, sep, fragment = did_url.partition("#")
    if not sep or not fragment:
        raise DidError(f"key reference {did_url!r} has no '#<key id>' fragment")
    return did, fragment


def document_url(did: str) -> str:
    """Where a did:web DID document is served (the method's resolution rule)."""
    match = _DID_WEB.match(did)
    if not match:
        raise DidError(f"{did!r} is not a did:web identifier")
    authority, path = unquote(match.group(1)), match.group(2)
    if not path:
        return f"https://{authority}/.well-known/did.json"
    return f"https://{authority}{path.replace(':', '/')}/did.json"


def did_name(did: str) -> str:
    """The last path segment of a did:web (the party's name on its host)."""
    document_url(did)  # validates
    return did.rsplit(":", 1)[-1]


def public_jwk(public_key: ec.EllipticCurvePublicKey) -> dict:
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return jwk.JWK.from_pem(pem).export_public(as_dict=True)


def did_document(did: str, public_key: ec.EllipticCurvePublicKey, key_id: str = DEFAULT_KEY_ID) -> dict:
    """A DID document with one JsonWebKey2020 verification method usable for assertions."""
    method_id = f"{did}#{key_id}"
    return {"@context": DID_CONTEXT, "id": did,
            "verificationMethod": [{"id": method_id, "type": "JsonWebKey2020", "controller": did,
                                    "publicKeyJwk": public_jwk(public_key)}],
            "assertionMethod": [method_id]}


def check_document(document: dict, did: str | None = None) -> dict:
    """Refuse documents that are not for `did`, carry no public key, or leak a private key."""
    if not isinstance(document, dict) or not isinstance(document.get("id"), str):
        raise DidError("DID document must be a JSON object with an 'id'")
    if did is not None and document["id"] != did:
        raise DidError(f"DID document is for {document['id']!r}, not {did!r}")
    methods = document.get("verificationMethod")
    if not isinstance(methods, list) or not methods:
        raise DidError("DID document has no verificationMethod")
    for method in methods:
        key = method.get("publicKeyJwk") if isinstance(method, dict) else None
        if not isinstance(key, dict) or not isinstance(method.get("id"), str):
            raise DidError("every verificationMethod needs an 'id' and a 'publicKeyJwk'")
        if "d" in key:
            raise DidError("DID document contains private key material")
    return document


def verification_key(document: dict, key_ref: str) -> ec.EllipticCurvePublicKey:
    """The public key the document lists under `key_ref` (`<did>#<id>`) for assertions."""
    did, fragment = split_did_url(key_ref)
    check_document(document, did)
    allowed = document.get("assertionMethod")
    if allowed is not None and not any(ref in (key_ref, f"#{fragment}") for ref in allowed if isinstance(ref, str)):
        raise DidError(f"{key_ref} is not an assertion method of its DID document")
    for method in document["verificationMethod"]:
        if method["id"] in (key_ref, f"#{fragment}"):
            try:
                key = jwk.JWK(**method["publicKeyJwk"])
                public = serialization.load_pem_public_key(key.export_to_pem())
            except Exception as problem:  # jwcrypto raises several types for bad JWKs
                raise DidError(f"{key_ref} is not a usable public key ({type(problem).__name__})") from None
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise DidError(f"{key_ref} is not an EC key")
            return public
    raise DidError(f"{key_ref} is not in its DID document")


def resolve(did: str, verify: str | bool | None = None, timeout: float = 10.0) -> dict:
    """Fetch and check the DID document of a did:web (HTTPS, CA bundle from settings). A
    connection failure, timeout or 502/503/504 is retried twice (backoff 0.5 s, 1 s): a host
    briefly busy must not fail a contract's verification."""
    url = document_url(did)
    retries = Retry(total=2, backoff_factor=0.5, status_forcelist=(502, 503, 504), allowed_methods={"GET"},
                    raise_on_status=False)
    try:
        with requests.Session() as session:
            session.mount("https://", HTTPAdapter(max_retries=retries))
            response = session.get(url, timeout=timeout, allow_redirects=False,
                                   verify=settings.ca_bundle() if verify is None else verify)
    except requests.RequestException as problem:
        raise DidResolutionError(f"cannot fetch the DID document of {did} ({type(problem).__name__})") from None
    if response.status_code == 404:
        raise DidError(f"{did} has no DID document (404)")
    if response.status_code != 200:
        raise DidResolutionError(f"DID document of {did}: HTTP {response.status_code}")
    if len(response.content) > MAX_DOCUMENT_BYTES:
        raise DidError(f"DID document of {did} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = response.json()
    except ValueError:
        raise DidError(f"DID document of {did} is not JSON") from None
    return check_document(document, did)


@dataclass(frozen=True)
class Identity:
    """A party's signing identity: its DID, key id and private key."""
    did: str
    private_key: ec.EllipticCurvePrivateKey
    key_id: str = DEFAULT_KEY_ID

    @property
    def key_ref(self) -> str:
        return f"{self.did}#{self.key_id}"

    @classmethod
    def generate(cls, did: str, key_id: str = DEFAULT_KEY_ID) -> "Identity":
        document_url(did)
        return cls(did, ec.generate_private_key(ec.SECP256R1()), key_id)

    def document(self) -> dict:
        return did_document(self.did, self.private_key.public_key(), self.key_id)

    def sign_jws(self, payload: bytes, typ: str) -> str:
        """Compact JWS (ES256) over `payload` by this identity's key: header alg, kid = its key
        reference, and `typ`, which says what the statement is (so one cannot pass for another)."""
        token = jws.JWS(payload)
        token.add_signature(jwk.JWK.from_pyca(self.private_key), alg="ES256",
                            protected=json.dumps({"alg": "ES256", "kid": self.key_ref, "typ": typ}))
        return token.serialize(compact=True)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())

    def save_key(self, path: Path) -> None:
        """Write the private key readable by its owner only (0600 from creation on)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(self.private_pem())


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError):
        raise DidError(f"{path} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise DidError(f"{path} is not a P-256 key")
    return key


# --- proof of possession for DID registration ------------------------------------------------

def document_digest(document: dict) -> str:
    """sha256 hex of the document's canonical JSON (sorted keys, compact): what a proof covers."""
    return hashlib.sha256(json.dumps(document, sort_keys=True, separators=(",", ":"),
                                     ensure_ascii=False).encode()).hexdigest()


def _audience(url: str) -> str:
    return url.rstrip("/") if isinstance(url, str) else url


def registration_proof(identity: Identity, audience: str, now: datetime | None = None,
                       document: dict | None = None) -> str:
    """Compact JWS by `identity`'s key proving it holds the key of `document` (default: its own
    document) and asks `audience` (the ledger's URL) to register it now."""
    document = identity.document() if document is None else document
    moment = now or datetime.now(timezone.utc)
    claims = {"did": identity.did, "aud": _audience(audience), "iat": int(moment.timestamp()),
              "nonce": secrets.token_urlsafe(16), "document_sha256": document_digest(document)}
    return identity.sign_jws(json.dumps(claims, sort_keys=True, separators=(",", ":")).encode(),
                             REGISTRATION_PROOF_TYPE)


def registration_key_ref(document: dict) -> str:
    """The one verification method of a document offered for registration, which must also be
    its assertion method: the key whose holder proves possession (no rotation, no extra keys)."""
    check_document(document)
    methods = document["verificationMethod"]
    if len(methods) != 1:
        raise DidError("a registered DID document carries exactly one verification method (the key that "
                       "proves possession)")
    key_ref = methods[0]["id"]
    if key_ref.startswith("#"):
        key_ref = document["id"] + key_ref
    verification_key(document, key_ref)   # an assertion method, a usable EC key
    return key_ref


def check_registration_proof(document: dict, proof, audience: str, now: datetime | None = None,
                             max_age: int = REGISTRATION_PROOF_MAX_AGE) -> dict:
    """The proof's claims, if `proof` is a compact JWS (ES256) by `document`'s one key over this
    document's DID and digest, for `audience`, issued within `max_age` seconds of `now`.
    DidError (400) for an unusable document or a proof that is not a JWS; ProofRefused (401)
    for a missing, stale, misdirected or forged proof."""
    key_ref = registration_key_ref(document)
    did = document["id"]
    if proof is None or proof == "":
        raise ProofRefused(f"registering {did} needs a proof of possession of its key (a JWS by {key_ref})")
    if not isinstance(proof, str) or len(proof) > MAX_PROOF_CHARS or proof.count(".") != 2:
        raise DidError("the proof must be a compact JWS (header.payload.signature)")
    token = jws.JWS()
    try:
        token.deserialize(proof)
        header = token.jose_header
    except Exception:  # jwcrypto raises several types on arbitrary input
        raise DidError("the proof is not a readable compact JWS") from None
    if not isinstance(header, dict) or header.get("alg") != "ES256":
        raise ProofRefused("the proof must be signed with ES256")
    if header.get("kid") != key_ref:
        raise ProofRefused(f"the proof is signed by {header.get('kid')!r}, not by the document's key {key_ref}")
    public = jwk.JWK.from_pem(verification_key(document, key_ref).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    token.allowed_algs = ["ES256"]
    try:
        token.verify(public)
    except Exception:  # jwcrypto's InvalidJWSSignature and friends
        raise ProofRefused(f"the proof's signature does not verify against {key_ref} "
                           "(signed by another key, or altered)") from None
    try:
        claims = json.loads(token.payload)
    except ValueError:
        raise ProofRefused("the proof's payload is not JSON") from None
    if not isinstance(claims, dict):
        raise ProofRefused("the proof's payload must be a JSON object")
    if claims.get("did") != did:
        raise ProofRefused(f"the proof is for {claims.get('did')!r}, not {did}")
    if claims.get("document_sha256") != document_digest(document):
        raise ProofRefused("the proof was made for another DID document")
    if _audience(claims.get("aud")) != _audience(audience):
        raise ProofRefused(f"the proof is addressed to {claims.get('aud')!r}, not to {_audience(audience)}")
    nonce = claims.get("nonce")
    if not isinstance(nonce, str) or not 16 <= len(nonce) <= 256:
        raise ProofRefused("the proof needs a random nonce (16 to 256 characters)")
    issued = claims.get("iat")
    if not isinstance(issued, int) or isinstance(issued, bool):
        raise ProofRefused("the proof needs an integer iat (seconds since the epoch)")
    moment = (now or datetime.now(timezone.utc)).timestamp()
    if abs(moment - issued) > max_age:
        when = f"{int(moment - issued)} s ago" if moment > issued else f"{int(issued - moment)} s in the future"
        raise ProofRefused(f"the proof is stale: issued {when}, it must be within {max_age} s of now "
                           "(make a fresh one)")
    return claims
