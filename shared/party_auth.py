"""A party proves who it is: a challenge signed with its did:web key, exchanged for a short-lived
bearer token. One mechanism for every service a party talks to (the control plane's status and
SAS endpoints, the contract ledger), each with its own secret and audience.

Claim: a bearer token for audience A names DID D only if, less than TOKEN_SECONDS ago, someone
holding the private key that D's DID document lists signed a challenge that A's service issued
for D and A less than CHALLENGE_SECONDS before. Attacks stopped: a party presenting another
party's DID (it cannot sign for that key), a forged or altered signature, a challenge made up by
the client or altered (it carries the service's HMAC), a challenge for another DID or another
service, a stale challenge or token, and a token issued by or for another service.

The server keeps no state. The challenge is a JWT (HS256, the service's secret) naming the DID
(`sub`), the audience (`aud`), an expiry and a random nonce; the party returns it with a compact
JWS (ES256, `kid` = its DID key reference) over the challenge text; the service checks its own
challenge, resolves the DID document (`shared.did.resolve`) and verifies the signature with the
key it lists, then issues the token: a JWT (HS256, `sub` = DID, `aud`, `exp` at most 15 minutes
ahead). Challenges and tokens carry different `typ` headers and `use` claims, so one can never
stand for the other. A signed response is a bearer secret until its challenge expires, like the
token it buys; both travel only over TLS. Everything here is jwcrypto; nothing is home-made.

Errors are `PartyAuthError` with `http_status` (401 refused, 400 malformed, 503 the DID document
could not be fetched, 500 not configured) and a reason that never quotes a token or signature.
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from typing import Callable

from jwcrypto import jwk, jws, jwt
from jwcrypto.common import JWException, base64url_encode

from shared import did as dids

CHALLENGE_SECONDS = 120
TOKEN_SECONDS = 600
MAX_TOKEN_SECONDS = 900
MIN_SECRET_BYTES = 32
MAX_TEXT = 8192  # a challenge, signature or token is a few hundred bytes

CONTROL_PLANE_AUDIENCE = "ccr-control-plane"
LEDGER_AUDIENCE = "ccr-ledger"

_SERVICE_ALG = "HS256"
_PARTY_ALG = "ES256"
_CHALLENGE_TYP = "ccr-challenge+jwt"
_TOKEN_TYP = "at+jwt"
_RESPONSE_TYP = "ccr-challenge-response+jws"


class PartyAuthError(Exception):
    """Authentication refused or impossible; `str()` is the reason (no token or signature)."""

    def __init__(self, reason: str, http_status: int = 401):
        super().__init__(reason)
        self.http_status = http_status


@dataclass(frozen=True)
class Token:
    access_token: str
    expires_in: int
    did: str


def sign_challenge(identity: dids.Identity, challenge: str) -> str:
    """The party's side: a compact JWS (ES256) over the challenge text, kid = its key reference."""
    return identity.sign_jws(challenge.encode(), _RESPONSE_TYP)


class PartyAuthority:
    """One service's side: issue challenges, exchange signed ones for tokens, check tokens."""

    def __init__(self, secret: bytes | str, audience: str,
                 resolve_did: Callable[[str], dict] = dids.resolve, now: Callable[[], float] = time.time,
                 token_seconds: int = TOKEN_SECONDS, challenge_seconds: int = CHALLENGE_SECONDS):
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_SECRET_BYTES:
            raise PartyAuthError(f"the party-authentication secret must be at least {MIN_SECRET_BYTES} bytes", 500)
        if not 0 < token_seconds <= MAX_TOKEN_SECONDS:
            raise ValueError(f"token lifetime must be 1..{MAX_TOKEN_SECONDS} seconds")
        self.audience = audience
        self._key = jwk.JWK(kty="oct", k=base64url_encode(raw))
        self._resolve, self._now = resolve_did, now
        self.token_seconds, self.challenge_seconds = token_seconds, challenge_seconds

    # --- challenge ------------------------------------------------------------------------

    def issue_challenge(self, did) -> str:
        """A challenge for `did` at this service, valid CHALLENGE_SECONDS."""
        did = _did(did)
        now = int(self._now())
        return self._sign(_CHALLENGE_TYP, {"use": "challenge", "sub": did, "aud": self.audience, "iat": now,
                                           "exp": now + self.challenge_seconds, "nonce": secrets.token_hex(16)})

    def exchange(self, did, challenge, signature) -> Token:
        """Check the service's own challenge and the party's signature over it; issue a token."""
        did = _did(did)
        claims = self._claims(_text(challenge, "challenge"), _CHALLENGE_TYP, "challenge")
        if claims.get("sub") != did:
            raise PartyAuthError("the challenge was issued for another DID")
        self._check_signature(did, challenge, _text(signature, "signature"))
        now = int(self._now())
        token = self._sign(_TOKEN_TYP, {"use": "access", "sub": did, "aud": self.audience, "iat": now,
                                        "exp": now + self.token_seconds, "jti": secrets.token_hex(16)})
        return Token(token, self.token_seconds, did)

    # --- token ----------------------------------------------------------------------------

    def verify_token(self, token) -> str:
        """The DID a bearer token names, or PartyAuthError."""
        claims = self._claims(_text(token, "access token"), _TOKEN_TYP, "access")
        subject = claims.get("sub")
        if not isinstance(subject, str):
            raise PartyAuthError("the access token names no party")
        return subject

    def bearer(self, authorization: str | None) -> str:
        """The DID of an `Authorization: Bearer <token>` header."""
        scheme, _, value = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise PartyAuthError("an access token is required (Authorization: Bearer <token> from /auth/token)")
        return self.verify_token(value.strip())

    # --- internals ------------------------------------------------------------------------

    def _sign(self, typ: str, claims: dict) -> str:
        token = jwt.JWT(header={"alg": _SERVICE_ALG, "typ": typ}, claims=claims)
        token.make_signed_token(self._key)
        return token.serialize()

    def _claims(self, text: str, typ: str, use: str) -> dict:
        """Claims of a JWT this service signed for this audience, of this kind, unexpired."""
        what = "challenge" if use == "challenge" else "access token"
        try:
            token = jwt.JWT(jwt=text, key=self._key, algs=[_SERVICE_ALG], expected_type="JWS", check_claims=False)
            header, claims = json.loads(token.header), json.loads(token.claims)
        except (JWException, ValueError, TypeError):
            raise PartyAuthError(f"the {what} was not issued by this service or was altered") from None
        if not isinstance(claims, dict) or header.get("typ") != typ or claims.get("use") != use:
            raise PartyAuthError(f"not {'a' if use == 'challenge' else 'an'} {what} of this service")
        if claims.get("aud") != self.audience:
            raise PartyAuthError(f"the {what} is for another service")
        expiry = claims.get("exp")
        if not isinstance(expiry, int) or expiry <= self._now():
            raise PartyAuthError(f"the {what} has expired" + ("; ask for a new challenge" if use == "challenge"
                                                                else "; authenticate again"))
        return claims

    def _check_signature(self, did: str, challenge: str, signature: str) -> None:
        response = jws.JWS()
        try:
            response.deserialize(signature)
            header = response.jose_header
        except (JWException, ValueError, TypeError):
            raise PartyAuthError("the signature is not a compact JWS", 400) from None
        if header.get("alg") != _PARTY_ALG:
            raise PartyAuthError(f"the signature must be {_PARTY_ALG}")
        kid = header.get("kid")
        try:
            key_did, _ = dids.split_did_url(kid if isinstance(kid, str) else "")
        except dids.DidError:
            raise PartyAuthError("the signature's kid is not a DID key reference (<did>#<key id>)") from None
        if key_did != did:
            raise PartyAuthError("the signature is by another DID's key")
        try:
            document = self._resolve(did)
            public = dids.verification_key(document, kid)
        except dids.DidResolutionError as problem:
            raise PartyAuthError(str(problem), 503) from None
        except dids.DidError as problem:
            raise PartyAuthError(f"cannot verify the signature: {problem}") from None
        try:
            response.allowed_algs = [_PARTY_ALG]
            response.verify(jwk.JWK.from_pyca(public), alg=_PARTY_ALG)
        except (JWException, ValueError, TypeError):
            raise PartyAuthError("the signature does not verify with the key in the DID document") from None
        if response.payload != challenge.encode():
            raise PartyAuthError("the signature is over another challenge")


def _did(value) -> str:
    if not isinstance(value, str) or len(value) > 512:
        raise PartyAuthError("did must be a did:web identifier", 400)
    try:
        dids.document_url(value)
    except dids.DidError as problem:
        raise PartyAuthError(str(problem), 400) from None
    return value


def _text(value, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_TEXT:
        raise PartyAuthError(f"{what} must be a non-empty string of at most {MAX_TEXT} characters", 400)
    return value
