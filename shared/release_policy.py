"""Secure key release (SKR) policies in Azure Key Vault's grammar: build the policy a data key
is imported with, serialise it the way Key Vault stores it, and evaluate it against verified
attestation claims (what the Key Vault twin does on release; parties can use it to check).

Grammar (learn.microsoft.com/azure/key-vault/keys/policy-grammar): `{"version", "anyOf":
[{"authority", "allOf"|"anyOf": [conditions]}]}`; a condition is `{"claim", <operator>: value}`
or a nested `allOf`/`anyOf`; operators `equals`, `notEquals`, `less`, `lessOrEquals`,
`greater`, `greaterOrEquals`, `exists`. Claim names are dotted paths into the token
(`x-ms-isolation-tee.x-ms-attestation-type`); keys are matched case-insensitively."""
from __future__ import annotations

import json
from urllib.parse import urlsplit

SUPPORTED_VERSIONS = ("1.0.0", "1.0.1", "1.0.2")
CONTENT_TYPE = "application/json; charset=utf-8"
OPERATORS = ("equals", "notEquals", "less", "lessOrEquals", "greater", "greaterOrEquals", "exists")
_MISSING = object()


class ReleasePolicyError(ValueError):
    """A policy that does not follow the grammar."""


class PolicyNotSatisfied(Exception):
    """Claims that do not satisfy a policy; the message names the claim, never its value."""


def build_release_policy(authority_url: str, hostdata_hex: str, *more_hostdata: str) -> dict:
    """Release only to a compliant, non-debuggable SEV-SNP container whose CCE policy hashes
    to `hostdata_hex` (or to one of `more_hostdata`: one anyOf entry each, every other claim
    pinned the same), as attested by `authority_url`."""
    if not authority_url:
        raise ReleasePolicyError("the attestation authority URL is required")
    entries = []
    for value in (hostdata_hex, *more_hostdata):
        hostdata = value.lower()
        if len(hostdata) != 64 or any(c not in "0123456789abcdef" for c in hostdata):
            raise ReleasePolicyError("hostdata must be a sha256 hex digest (64 hex digits)")
        entries.append({
            "authority": authority_url.rstrip("/"),
            "allOf": [
                {"claim": "x-ms-attestation-type", "equals": "sevsnpvm"},
                {"claim": "x-ms-compliance-status", "equals": "azure-compliant-uvm"},
                {"claim": "x-ms-sevsnpvm-hostdata", "equals": hostdata},
                {"claim": "x-ms-sevsnpvm-is-debuggable", "equals": False},
            ],
        })
    return {"version": "1.0.0", "anyOf": entries}


def policy_to_json(policy: dict) -> bytes:
    """The bytes Key Vault stores as the release policy's `data` (validated first)."""
    validate(policy)
    return json.dumps(policy, separators=(",", ":")).encode()


def policy_from_json(data: bytes | str) -> dict:
    try:
        policy = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ReleasePolicyError("release policy is not valid JSON") from None
    validate(policy)
    return policy


def validate(policy) -> None:
    """Raise ReleasePolicyError unless `policy` follows the grammar."""
    if not isinstance(policy, dict):
        raise ReleasePolicyError("release policy must be a JSON object")
    if policy.get("version") not in SUPPORTED_VERSIONS:
        raise ReleasePolicyError(f"release policy version must be one of {', '.join(SUPPORTED_VERSIONS)}")
    authorities = _get(policy, "anyOf")
    if not isinstance(authorities, list) or not authorities:
        raise ReleasePolicyError("release policy needs a non-empty anyOf list of authorities")
    for entry in authorities:
        if not isinstance(entry, dict) or not isinstance(_get(entry, "authority"), str) or not _get(entry, "authority"):
            raise ReleasePolicyError("every anyOf entry needs an authority")
        if _get(entry, "allOf") is _MISSING and _get(entry, "anyOf") is _MISSING:
            raise ReleasePolicyError("every authority needs an allOf or anyOf condition list")
        _validate_condition(entry, top=True)


def _validate_condition(condition, top: bool = False) -> None:
    if not isinstance(condition, dict):
        raise ReleasePolicyError("a condition must be a JSON object")
    for combinator in ("allOf", "anyOf"):
        children = _get(condition, combinator)
        if children is not _MISSING:
            if not isinstance(children, list) or not children:
                raise ReleasePolicyError(f"{combinator} must be a non-empty list of conditions")
            for child in children:
                _validate_condition(child)
            return
    if top:
        raise ReleasePolicyError("every authority needs an allOf or anyOf condition list")
    claim = _get(condition, "claim")
    if not isinstance(claim, str) or not claim:
        raise ReleasePolicyError("a claim condition needs a claim name")
    operators = [op for op in OPERATORS if _get(condition, op) is not _MISSING]
    if len(operators) != 1:
        raise ReleasePolicyError(f"claim condition for {claim} needs exactly one operator of {', '.join(OPERATORS)}")


def normalize_authority(authority: str) -> str:
    """Compare authorities by host[:port] and path, ignoring scheme, case and trailing '/'."""
    text = authority.strip()
    parts = urlsplit(text if "://" in text else "https://" + text)
    return (parts.netloc + parts.path).rstrip("/").lower()


def authorities(policy: dict) -> list[str]:
    return [_get(entry, "authority") for entry in _get(policy, "anyOf")]


def evaluate(policy: dict, issuer: str, claims: dict) -> None:
    """Raise PolicyNotSatisfied unless the claims (already verified as issued by `issuer`)
    satisfy the policy's conditions for that authority."""
    validate(policy)
    entries = [e for e in _get(policy, "anyOf") if normalize_authority(_get(e, "authority")) == normalize_authority(issuer)]
    if not entries:
        raise PolicyNotSatisfied("release policy not satisfied: the token's issuer is not an authority of the policy")
    failures = _failures_unless_any(entries, claims)
    if failures is not None:
        raise PolicyNotSatisfied("release policy not satisfied: " + "; ".join(failures))


def _failures_unless_any(conditions: list, claims: dict) -> list[str] | None:
    """None as soon as one condition holds; otherwise why each one fails (an empty list when
    there are none, which holds nothing)."""
    failures = []
    for condition in conditions:
        try:
            _check(condition, claims)
            return None
        except PolicyNotSatisfied as failure:
            failures.append(str(failure))
    return failures


def _check(condition: dict, claims: dict) -> None:
    children = _get(condition, "allOf")
    if children is not _MISSING:
        for child in children:
            _check(child, claims)
        return
    children = _get(condition, "anyOf")
    if children is not _MISSING:
        reasons = _failures_unless_any(children, claims)
        if reasons is not None:
            raise PolicyNotSatisfied("none of (" + " | ".join(reasons) + ")")
        return
    claim = _get(condition, "claim")
    operator = next(op for op in OPERATORS if _get(condition, op) is not _MISSING)
    expected = _get(condition, operator)
    actual = _claim_value(claims, claim)
    if operator == "exists":
        if (actual is not _MISSING) != bool(expected):
            raise PolicyNotSatisfied(f"claim {claim} {'is missing' if expected else 'must not be present'}")
        return
    if actual is _MISSING:
        raise PolicyNotSatisfied(f"claim {claim} is missing")
    if not _compare(operator, actual, expected):
        raise PolicyNotSatisfied(f"claim {claim} does not satisfy {operator}")


def _compare(operator: str, actual, expected) -> bool:
    if operator in ("equals", "notEquals"):
        same = _equal(actual, expected)
        return same if operator == "equals" else not same
    if isinstance(actual, bool) or isinstance(expected, bool) or not isinstance(actual, (int, float)) \
            or not isinstance(expected, (int, float)):
        return False      # ordering is defined for numbers only
    return {"less": actual < expected, "lessOrEquals": actual <= expected,
            "greater": actual > expected, "greaterOrEquals": actual >= expected}[operator]


def _equal(actual, expected) -> bool:
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(expected, bool) and isinstance(actual, bool) and actual == expected
    return type(actual) is type(expected) and actual == expected   # exact: "1" is not 1


def _claim_value(claims: dict, path: str):
    """A claim by name, or by dotted path into nested objects."""
    if isinstance(claims, dict):
        direct = _get(claims, path)
        if direct is not _MISSING:
            return direct
    head, dot, rest = path.partition(".")
    if not dot or not isinstance(claims, dict):
        return _MISSING
    inner = _get(claims, head)
    return _claim_value(inner, rest) if isinstance(inner, dict) else _MISSING


def _get(obj: dict, name: str):
    """A member by name, case-insensitively (the grammar spells keys both ways)."""
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return _MISSING
