"""Signing in to the live run page: a party that proved its DID (a bearer token from
shared/party_auth.py) gets a one-time link, which the browser trades for a short-lived cookie.

Claim: the page shows a party's runs only to a browser holding a session cookie that the app
signed for that DID less than SESSION_SECONDS ago, in exchange for a link code the app issued
to that DID's authenticated caller less than LINK_SECONDS before, used at most once.
Attacks stopped: a link replayed from browser history, a proxy log or a shoulder (one use: the
code's record is deleted with an ETag condition, so two concurrent uses cannot both win), a
link used late (expiry), a forged or altered cookie (HS256 under a key derived from the
party-authentication secret for this use only: a bearer token is no cookie and a cookie no
token), a cookie stolen by page script (HttpOnly) or sent by another site's request (SameSite
Strict). No function key is ever in a URL; the code is stored only as its SHA-256.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Callable

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from jwcrypto import jwk, jwt
from jwcrypto.common import JWException, base64url_encode

from shared.party_auth import MIN_SECRET_BYTES, PartyAuthError

LINK_SECONDS = 60
SESSION_SECONDS = 900
CONTAINER = "pagelinks"
COOKIE = "ccr_page"
COOKIE_PATH = "/api/page"
_TYP = "ccr-page-session+jwt"


class PageLinks:
    """One-time link codes in Blob Storage (`pagelinks/<sha256 of the code>.json`)."""

    def __init__(self, service: BlobServiceClient, now: Callable[[], float] = time.time):
        self._container = service.get_container_client(CONTAINER)
        self._now = now

    def issue(self, did: str, seconds: int = LINK_SECONDS) -> str:
        """A fresh code for `did`, valid `seconds` (a secret: it goes into the link only)."""
        code = secrets.token_urlsafe(32)
        record = json.dumps({"did": did, "expires": self._now() + seconds})
        try:
            self._container.create_container()
        except ResourceExistsError:
            pass
        self._container.upload_blob(_name(code), record, overwrite=False)
        return code

    def redeem(self, code) -> str:
        """The DID the code was issued for; the code is spent. PartyAuthError when unknown,
        spent or expired (one message for all: nothing to probe)."""
        refused = PartyAuthError("this sign-in link is invalid, used or expired: run `ccr page` again")
        if not isinstance(code, str) or not 20 <= len(code) <= 100:
            raise refused
        blob = self._container.get_blob_client(_name(code))
        try:
            downloaded = blob.download_blob()
            record, etag = json.loads(downloaded.readall()), downloaded.properties.etag
            blob.delete_blob(etag=etag, match_condition=MatchConditions.IfNotModified)
        except (ResourceNotFoundError, ResourceModifiedError, ValueError):
            raise refused from None
        if not isinstance(record, dict) or not isinstance(record.get("did"), str) \
                or not isinstance(record.get("expires"), (int, float)) or record["expires"] <= self._now():
            raise refused
        return record["did"]


class PageSessions:
    """Session cookies: a JWT naming the DID, signed under a key derived from the app's
    party-authentication secret."""

    def __init__(self, secret: bytes | str, now: Callable[[], float] = time.time, seconds: int = SESSION_SECONDS):
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if len(raw) < MIN_SECRET_BYTES:
            raise PartyAuthError(f"the party-authentication secret must be at least {MIN_SECRET_BYTES} bytes", 500)
        derived = hmac.new(raw, b"ccr live run page session v1", hashlib.sha256).digest()
        self._key = jwk.JWK(kty="oct", k=base64url_encode(derived))
        self._now, self.seconds = now, seconds

    def cookie_value(self, did: str) -> str:
        now = int(self._now())
        token = jwt.JWT(header={"alg": "HS256", "typ": _TYP},
                        claims={"use": "page", "sub": did, "iat": now, "exp": now + self.seconds})
        token.make_signed_token(self._key)
        return token.serialize()

    def set_cookie(self, did: str, secure: bool = True) -> str:
        """The Set-Cookie header value: HttpOnly, SameSite=Strict, Secure (over TLS), path-scoped."""
        return (f"{COOKIE}={self.cookie_value(did)}; Path={COOKIE_PATH}; Max-Age={self.seconds}; HttpOnly; "
                f"SameSite=Strict" + ("; Secure" if secure else ""))

    def did(self, cookie_header: str | None) -> str:
        """The DID of the request's session cookie, or PartyAuthError."""
        value = _cookie(cookie_header or "", COOKIE)
        if not value or len(value) > 4096:
            raise PartyAuthError("not signed in: run `ccr page` for a sign-in link")
        try:
            token = jwt.JWT(jwt=value, key=self._key, algs=["HS256"], expected_type="JWS", check_claims=False)
            header, claims = json.loads(token.header), json.loads(token.claims)
        except (JWException, ValueError, TypeError):
            raise PartyAuthError("the page session is not this clean room's: run `ccr page` again") from None
        if header.get("typ") != _TYP or not isinstance(claims, dict) or claims.get("use") != "page" \
                or not isinstance(claims.get("sub"), str):
            raise PartyAuthError("not a page session: run `ccr page` again")
        if not isinstance(claims.get("exp"), int) or claims["exp"] <= self._now():
            raise PartyAuthError("the page session has expired: run `ccr page` again")
        return claims["sub"]


def _name(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest() + ".json"


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None
