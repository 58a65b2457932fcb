"""A party proves its DID to the clean room (POST /api/auth/challenge, /api/auth/token on the
real app over loopback HTTP): only a signature by the key in that DID's document, over a fresh
challenge this service issued for that DID, buys a token; only an unexpired token of this
service opens the party endpoints. Each refusal is a 401 with a reason that quotes no secret."""
from __future__ import annotations

import base64
import json

import pytest

from functions import party_requests
from shared import did as dids
from shared.party_auth import CONTROL_PLANE_AUDIENCE, LEDGER_AUDIENCE, MAX_TOKEN_SECONDS, PartyAuthError, \
    PartyAuthority, sign_challenge
from tests.auth.conftest import authority, challenge, get, hours_ago, post, token_for


def exchange(app, did: str, issued: str, signature: str):
    return post(app, "auth/token", {"did": did, "challenge": issued, "signature": signature})


def refused(response, reason: str, *secrets: str) -> None:
    assert response.status_code == 401, response.text
    assert reason in response.json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for secret in secrets:
        assert secret not in response.text


def test_a_signed_challenge_buys_a_short_lived_token_that_names_the_party(app, parties):
    icmr = parties["icmr"]
    issued = challenge(app, icmr.did)
    response = exchange(app, icmr.did, issued, sign_challenge(icmr, issued))
    assert response.status_code == 200 and response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= MAX_TOKEN_SECONDS
    claims = json.loads(base64.urlsafe_b64decode(body["access_token"].split(".")[1] + "=="))
    assert claims["sub"] == icmr.did and claims["aud"] == "ccr-control-plane"
    assert claims["exp"] - claims["iat"] <= MAX_TOKEN_SECONDS
    assert get(app, "runs", body["access_token"]).status_code == 200


def test_forged_signature_is_refused(app, parties):
    """The outsider signs with its own key but names the victim's key as kid."""
    victim, outsider = parties["icmr"], parties["stranger"]
    issued = challenge(app, victim.did)
    forged = sign_challenge(dids.Identity(victim.did, outsider.private_key), issued)
    refused(exchange(app, victim.did, issued, forged), "does not verify with the key in the DID document", forged)


def test_another_partys_did_is_refused(app, parties):
    """A challenge for the victim's DID, signed by the attacker as itself."""
    victim, attacker = parties["icmr"], parties["stranger"]
    issued = challenge(app, victim.did)
    refused(exchange(app, victim.did, issued, sign_challenge(attacker, issued)), "by another DID's key")
    mine = challenge(app, attacker.did)  # its own challenge, exchanged for the victim's DID
    refused(exchange(app, victim.did, mine, sign_challenge(attacker, mine)), "issued for another DID")


def test_a_did_without_a_document_gets_no_token(app, parties):
    nobody = parties["nobody"]
    issued = challenge(app, nobody.did)
    refused(exchange(app, nobody.did, issued, sign_challenge(nobody, issued)), "no DID document")


def test_expired_challenge_is_refused(app, parties):
    icmr = parties["icmr"]
    stale = authority(app, parties, now=hours_ago(1)).issue_challenge(icmr.did)
    refused(exchange(app, icmr.did, stale, sign_challenge(icmr, stale)), "challenge has expired")


def test_tampered_or_made_up_challenge_is_refused(app, parties):
    icmr = parties["icmr"]
    header, claims, mac = challenge(app, icmr.did).split(".")
    longer = json.loads(base64.urlsafe_b64decode(claims + "=="))
    longer["exp"] += 86400
    tampered = ".".join([header, base64.urlsafe_b64encode(json.dumps(longer).encode()).decode().rstrip("="), mac])
    refused(exchange(app, icmr.did, tampered, sign_challenge(icmr, tampered)), "not issued by this service or was altered")
    own = PartyAuthority("another service's secret, 32 bytes+", CONTROL_PLANE_AUDIENCE).issue_challenge(icmr.did)
    refused(exchange(app, icmr.did, own, sign_challenge(icmr, own)), "not issued by this service")


def test_signature_over_another_challenge_is_refused(app, parties):
    icmr = parties["icmr"]
    first, second = challenge(app, icmr.did), challenge(app, icmr.did)
    refused(exchange(app, icmr.did, second, sign_challenge(icmr, first)), "over another challenge")


def test_expired_token_is_refused(app, parties):
    icmr = parties["icmr"]
    past = authority(app, parties, now=hours_ago(1))
    issued = past.issue_challenge(icmr.did)
    old = past.exchange(icmr.did, issued, sign_challenge(icmr, issued)).access_token
    refused(get(app, "runs", old), "access token has expired", old)


def test_token_for_another_audience_is_refused(app, parties):
    """Signed with this very secret but for the ledger: still not a token of this service."""
    icmr = parties["icmr"]
    ledger = authority(app, parties, audience=LEDGER_AUDIENCE)
    issued = ledger.issue_challenge(icmr.did)
    refused(exchange(app, icmr.did, issued, sign_challenge(icmr, issued)), "challenge is for another service")
    token = ledger.exchange(icmr.did, issued, sign_challenge(icmr, issued)).access_token
    refused(get(app, "runs", token), "access token is for another service")


def test_a_challenge_is_not_a_token_and_a_token_not_a_challenge(app, parties):
    icmr = parties["icmr"]
    issued = challenge(app, icmr.did)
    refused(get(app, "runs", issued), "not an access token")
    token = token_for(app, icmr)
    refused(exchange(app, icmr.did, token, sign_challenge(icmr, token)), "not a challenge")


def test_missing_or_malformed_credentials(app, parties):
    refused(get(app, "runs"), "access token is required")
    refused(get(app, "runs", **{"Authorization": "Basic abc"}), "access token is required")
    refused(get(app, "runs", **{"x-functions-key": app.function_key}), "access token is required")
    assert post(app, "auth/challenge", {"did": "mailto:x"}).status_code == 400
    assert post(app, "auth/challenge", {}).status_code == 400
    icmr = parties["icmr"]
    issued = challenge(app, icmr.did)
    bad = exchange(app, icmr.did, issued, "not-a-jws")
    assert bad.status_code == 400 and "compact JWS" in bad.json()["error"]


def test_unconfigured_secret_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv(party_requests.SECRET_SETTING, raising=False)
    monkeypatch.setenv("CCR_EMULATOR_DIR", str(tmp_path))
    with pytest.raises(PartyAuthError) as refusal:
        party_requests.authority()
    assert refusal.value.http_status == 500 and "CCR_PARTY_AUTH_SECRET is missing" in str(refusal.value)
    monkeypatch.setenv(party_requests.SECRET_SETTING, "short")
    with pytest.raises(PartyAuthError, match="at least 32 bytes"):
        party_requests.authority()
