"""Attested run outcomes: the control plane believes a trainer's report only when the attested
trainer of that very run made it.

Claim: an outcome (status, output digest, privacy spent, whether data was read) counts only if
it is signed by an ephemeral key that the trainer bound, together with the run id and the
run's nonce, into an attestation token (MAA) for the host data of this run's container group.

How: the trainer makes an ephemeral P-256 key and asks its SKR sidecar for a token whose
runtime data is `{"keys": [<public JWK>], "run_id", "nonce"}` (MAA returns it as the token's
`x-ms-runtime` claim); it signs the outcome as a compact JWS (ES256) with that key. The
completion event carries the token and the JWS; `verify` takes the outcome from the JWS
payload only, after checking the token's signature (the authority's JWKS), issuer, validity,
SEV-SNP claims and host data, the run id and nonce in both token and outcome, and the figures.

Attacks stopped: a forged Completed/Failed event from anyone holding the topic key (no token
for this group's host data), an attacker's own attested container group (other host data), a
replay of an earlier run's signed event (other nonce), an event published before the trainer
existed (the nonce is drawn when the group is deployed), and negative or over-plan epsilons.
"""
from __future__ import annotations

import base64
import json
import math

import requests
from jwcrypto import jwk, jws, jwt
from jwcrypto.common import JWException

from shared.release_policy import normalize_authority

OUTCOME_KEY_ID = "ccr-outcome"
STATUSES = ("succeeded", "failed")
TOKEN_LEEWAY_SECONDS = 60
EPSILON_SLACK = 1e-9


class OutcomeRejected(ValueError):
    """A completion event that does not prove itself; the message names why, never a token."""


def runtime_data(public_jwk: dict, run_id: str, nonce: str) -> bytes:
    """What the trainer binds into its attestation token."""
    key = {**public_jwk, "kid": OUTCOME_KEY_ID, "use": "sig"}
    return json.dumps({"keys": [key], "run_id": run_id, "nonce": nonce}, sort_keys=True).encode()


def sign(outcome: dict, private_key: jwk.JWK) -> str:
    """The outcome as a compact JWS (ES256) by the ephemeral key."""
    token = jws.JWS(json.dumps(outcome, sort_keys=True, allow_nan=False).encode())
    token.add_signature(private_key, alg="ES256", protected={"alg": "ES256", "kid": OUTCOME_KEY_ID})
    return token.serialize(compact=True)


def verify(event: dict, run_id: str, nonce: str, hostdata: str, authority: str, epsilon_planned: float,
           verify_tls: str | bool = True) -> dict:
    """The outcome the attested trainer of run (`run_id`, `nonce`) signed, or OutcomeRejected."""
    outcome = attested_statement(event, "outcome", run_id, nonce, hostdata, authority, verify_tls)
    _check_figures(outcome, epsilon_planned)
    return outcome


def attested_statement(event: dict, field: str, run_id: str, nonce: str, hostdata: str, authority: str,
                       verify_tls: str | bool = True) -> dict:
    """The statement in `event[field]` (a JWS) that the attested trainer of run (`run_id`,
    `nonce`) signed with the key its token `event["attestation"]` binds, or OutcomeRejected.
    Shared by the outcome and the per-epoch progress (shared/attested_progress.py)."""
    if not isinstance(event, dict) or not isinstance(event.get("attestation"), str) \
            or not isinstance(event.get(field), str):
        raise OutcomeRejected(f"the event carries no attestation token and signed {field}")
    claims = _token_claims(event["attestation"], authority, verify_tls)
    for claim, expected in (("x-ms-attestation-type", "sevsnpvm"), ("x-ms-compliance-status", "azure-compliant-uvm"),
                            ("x-ms-sevsnpvm-is-debuggable", False), ("x-ms-sevsnpvm-hostdata", hostdata)):
        if claims.get(claim) != expected:
            raise OutcomeRejected(f"the attestation token's {claim} is not this run's container group's")
    runtime = claims.get("x-ms-runtime")
    if not isinstance(runtime, dict) or runtime.get("run_id") != run_id or runtime.get("nonce") != nonce:
        raise OutcomeRejected("the attestation token is for another run (run id or nonce differs)")
    outcome = _signed_outcome(event[field], runtime)
    if outcome.get("run_id") != run_id or outcome.get("nonce") != nonce:
        raise OutcomeRejected(f"the signed {field} is for another run (run id or nonce differs)")
    return outcome


def _token_claims(token: str, authority: str, verify_tls: str | bool) -> dict:
    try:
        unverified = _unverified_claims(token)
    except (ValueError, TypeError):
        raise OutcomeRejected("the attestation token is not a JWT") from None
    issuer = unverified.get("iss")
    if not isinstance(issuer, str) or normalize_authority(issuer) != normalize_authority(authority):
        raise OutcomeRejected("the attestation token is not issued by our attestation authority")
    # an unreachable authority raises (requests' errors): the caller's activity is retried
    response = requests.get(issuer.rstrip("/") + "/certs", verify=verify_tls, timeout=30)
    response.raise_for_status()
    keys = jwk.JWKSet.from_json(response.text)
    try:
        checked = jwt.JWT(algs=["RS256"], check_claims={"exp": None, "iss": issuer}, expected_type="JWS")
        checked.leeway = TOKEN_LEEWAY_SECONDS
        checked.deserialize(token, keys)
        return json.loads(checked.claims)
    except (JWException, ValueError):
        raise OutcomeRejected("the attestation token's signature or validity does not check out") from None


def _unverified_claims(token: str) -> dict:
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("not a compact JWS")
    claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    if not isinstance(claims, dict):
        raise ValueError("claims are not an object")
    return claims


def _signed_outcome(signed: str, runtime: dict) -> dict:
    keys = runtime.get("keys")
    key = next((k for k in keys if isinstance(k, dict) and k.get("kid") == OUTCOME_KEY_ID), None) \
        if isinstance(keys, list) else None
    if key is None:
        raise OutcomeRejected("the attestation token binds no outcome signing key")
    try:
        token = jws.JWS()
        token.deserialize(signed)
        token.verify(jwk.JWK(**key), alg="ES256")
        outcome = json.loads(token.payload)
    except (JWException, ValueError, TypeError):
        raise OutcomeRejected("the outcome is not signed by the key the attested trainer bound") from None
    if not isinstance(outcome, dict):
        raise OutcomeRejected("the signed outcome is not an object")
    return outcome


def _check_figures(outcome: dict, epsilon_planned: float) -> None:
    if outcome.get("status") not in STATUSES:
        raise OutcomeRejected("the signed outcome has no valid status")
    if not isinstance(outcome.get("data_read"), bool):
        raise OutcomeRejected("the signed outcome does not say whether data was read")
    if outcome["status"] != "succeeded":
        return
    epsilon = (outcome.get("privacy") or {}).get("epsilon")
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) \
            or epsilon < 0 or epsilon > epsilon_planned + EPSILON_SLACK:
        raise OutcomeRejected(f"the signed outcome's epsilon is not within [0, {epsilon_planned}] (the plan)")
    if not outcome.get("data_read"):
        raise OutcomeRejected("a successful outcome must have read its data")
