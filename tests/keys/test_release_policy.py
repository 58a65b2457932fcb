"""Release-policy grammar: the policy parties import keys with, and its evaluation."""
from __future__ import annotations

import json

import pytest

from shared import release_policy as rp

AUTHORITY = "https://127.0.0.1:8443"
HOSTDATA = "0f" * 32
GOOD = {"x-ms-attestation-type": "sevsnpvm", "x-ms-compliance-status": "azure-compliant-uvm",
        "x-ms-sevsnpvm-hostdata": HOSTDATA, "x-ms-sevsnpvm-is-debuggable": False}


def test_built_policy_round_trips_and_pins_the_four_claims():
    policy = rp.build_release_policy(AUTHORITY + "/", HOSTDATA.upper())
    assert rp.policy_from_json(rp.policy_to_json(policy)) == policy
    assert policy["version"] == "1.0.0" and policy["anyOf"][0]["authority"] == AUTHORITY
    pinned = {c["claim"]: c["equals"] for c in policy["anyOf"][0]["allOf"]}
    assert pinned == GOOD
    rp.evaluate(policy, AUTHORITY, GOOD)


@pytest.mark.parametrize("claim,value", [("x-ms-attestation-type", "sgx"), ("x-ms-compliance-status", "x"),
                                         ("x-ms-sevsnpvm-hostdata", "1f" * 32),
                                         ("x-ms-sevsnpvm-is-debuggable", True),
                                         ("x-ms-sevsnpvm-is-debuggable", "false")])
def test_each_mismatch_is_named_without_its_value(claim, value):
    policy = rp.build_release_policy(AUTHORITY, HOSTDATA)
    with pytest.raises(rp.PolicyNotSatisfied) as denied:
        rp.evaluate(policy, AUTHORITY, {**GOOD, claim: value})
    assert claim in str(denied.value) and str(value) not in str(denied.value).replace(claim, "")


def test_authority_must_match_the_issuer():
    policy = rp.build_release_policy(AUTHORITY, HOSTDATA)
    rp.evaluate(policy, "HTTPS://127.0.0.1:8443/", GOOD)          # same authority, other spelling
    with pytest.raises(rp.PolicyNotSatisfied, match="issuer is not an authority"):
        rp.evaluate(policy, "https://127.0.0.1:9443", GOOD)


def test_operators_nesting_and_dotted_claims():
    policy = {"version": "1.0.2", "anyOf": [{"authority": AUTHORITY, "allOf": [
        {"claim": "x-ms-isolation-tee.x-ms-attestation-type", "equals": "sevsnpvm"},
        {"claim": "svn", "greaterOrEquals": 3},
        {"claim": "svn", "less": 10},
        {"claim": "debug", "notEquals": True},
        {"claim": "x-ms-runtime", "exists": True},
        {"claim": "forbidden", "exists": False},
        {"anyOf": [{"claim": "region", "equals": "eu"}, {"claim": "region", "equals": "us"}]},
    ]}]}
    claims = {"x-ms-isolation-tee": {"x-ms-attestation-type": "sevsnpvm"}, "svn": 5, "debug": False,
              "x-ms-runtime": {}, "region": "us"}
    rp.evaluate(policy, AUTHORITY, claims)
    for change, reason in [({"svn": 2}, "claim svn does not satisfy greaterOrEquals"),
                           ({"svn": 10}, "claim svn does not satisfy less"),
                           ({"svn": "5"}, "claim svn does not satisfy greaterOrEquals"),
                           ({"debug": True}, "claim debug does not satisfy notEquals"),
                           ({"forbidden": 1}, "claim forbidden must not be present"),
                           ({"region": "apac"}, "none of"),
                           ({"x-ms-isolation-tee": {}}, "claim x-ms-isolation-tee.x-ms-attestation-type is missing")]:
        with pytest.raises(rp.PolicyNotSatisfied, match=reason):
            rp.evaluate(policy, AUTHORITY, {**claims, **change})
    without_runtime = {k: v for k, v in claims.items() if k != "x-ms-runtime"}
    with pytest.raises(rp.PolicyNotSatisfied, match="claim x-ms-runtime is missing"):
        rp.evaluate(policy, AUTHORITY, without_runtime)


def test_a_second_authority_is_an_alternative():
    policy = {"version": "1.0.0", "anyOf": [
        {"authority": "https://a.example", "allOf": [{"claim": "x", "equals": 1}]},
        {"authority": AUTHORITY, "allOf": [{"claim": "x", "equals": 2}]}]}
    rp.evaluate(policy, AUTHORITY, {"x": 2})
    with pytest.raises(rp.PolicyNotSatisfied):
        rp.evaluate(policy, AUTHORITY, {"x": 1})         # the other authority's condition does not count


@pytest.mark.parametrize("policy,reason", [
    ([], "must be a JSON object"),
    ({"version": "2.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a", "equals": 1}]}]}, "version"),
    ({"version": "1.0.0", "anyOf": []}, "non-empty anyOf"),
    ({"version": "1.0.0", "anyOf": [{"allOf": [{"claim": "a", "equals": 1}]}]}, "needs an authority"),
    ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY}]}, "allOf or anyOf"),
    ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": []}]}, "non-empty list"),
    ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a"}]}]}, "exactly one operator"),
    ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"claim": "a", "equals": 1, "less": 2}]}]},
     "exactly one operator"),
    ({"version": "1.0.0", "anyOf": [{"authority": AUTHORITY, "allOf": [{"equals": 1}]}]}, "needs a claim name"),
])
def test_malformed_policies_are_refused(policy, reason):
    with pytest.raises(rp.ReleasePolicyError, match=reason):
        rp.policy_from_json(json.dumps(policy))


def test_build_refuses_bad_hostdata_and_missing_authority():
    with pytest.raises(rp.ReleasePolicyError, match="64 hex"):
        rp.build_release_policy(AUTHORITY, "abc")
    with pytest.raises(rp.ReleasePolicyError, match="authority"):
        rp.build_release_policy("", HOSTDATA)
    with pytest.raises(rp.ReleasePolicyError, match="not valid JSON"):
        rp.policy_from_json(b"{")
