"""The contract's inference workload slot (`workloads.inference`): optional, and when present
every term the inference orchestration and data plane will act on is checked before anyone
signs, with an error naming the field."""
from __future__ import annotations

import pytest

from shared import contract as contracts
from tests.contracts.conftest import IMAGE, sha


def inference_terms(payload: dict, **overrides) -> dict:
    """An inference slot letting the first provider (icmr) submit batches scored on its own features."""
    terms = {"image": IMAGE, "policy_template_sha256": sha("inference template"),
             "requesters": [payload["tdps"][0]["did"]], "weights_leave": False,
             "deadline_seconds": 300, "max_rows": 1_000_000}
    terms.update(overrides)
    return terms


def test_a_contract_without_inference_stays_valid_and_allows_none(payload):
    assert "inference" not in payload["workloads"]
    assert contracts.validate_payload(payload) is payload
    assert contracts.inference(payload) is None


def test_the_slot_is_accepted_and_its_defaults_are_the_requesters_own_features_and_half(payload):
    payload["workloads"]["inference"] = inference_terms(payload)
    contracts.new_envelope(payload)  # validates
    terms = contracts.inference(payload)
    assert terms["feature_sources"] == []  # only the requester's own features
    assert terms["threshold"] == 0.5
    assert terms["requesters"] == [payload["tdps"][0]["did"]]
    assert "feature_sources" not in payload["workloads"]["inference"]  # the signed terms are not rewritten


def test_named_feature_sources_and_threshold_are_kept(payload):
    bureau = payload["tdps"][1]["did"]
    payload["workloads"]["inference"] = inference_terms(payload, feature_sources=[bureau], threshold=0.3,
                                                        requesters=[payload["tdc"]["did"], payload["tdps"][0]["did"]])
    contracts.validate_payload(payload)
    assert contracts.inference(payload)["feature_sources"] == [bureau]
    assert contracts.inference(payload)["threshold"] == 0.3


OUTSIDER = "did:web:127.0.0.1%3A8443:mallory"


@pytest.mark.parametrize("change, reason", [
    (lambda p, t: t.pop("requesters"), r"workloads.inference lacks requesters"),
    (lambda p, t: t.pop("weights_leave"), r"workloads.inference lacks weights_leave"),
    (lambda p, t: t.pop("max_rows"), r"workloads.inference lacks max_rows"),
    (lambda p, t: t.update(image="ccr-inference:latest"), r"workloads.inference.image must be pinned by digest"),
    (lambda p, t: t.update(policy_template_sha256="x"), r"workloads.inference.policy_template_sha256 must be 64"),
    (lambda p, t: t.update(requesters=[]), r"workloads.inference.requesters must be a non-empty list"),
    (lambda p, t: t.update(requesters=p["tdps"][0]["did"]), r"workloads.inference.requesters must be a non-empty"),
    (lambda p, t: t.update(requesters=[OUTSIDER]), r"workloads.inference.requesters\[0\] must be the DID of a party"),
    (lambda p, t: t.update(requesters=[p["tdc"]["did"], p["tdc"]["did"]]),
     r"workloads.inference.requesters names a party twice"),
    (lambda p, t: t.update(feature_sources=[OUTSIDER]),
     r"workloads.inference.feature_sources\[0\] must be the DID of a provider"),
    (lambda p, t: t.update(feature_sources=[p["tdc"]["did"]]),  # the TDC holds no dataset to lend
     r"workloads.inference.feature_sources\[0\] must be the DID of a provider"),
    (lambda p, t: t.update(feature_sources="all"), r"workloads.inference.feature_sources must be a list"),
    (lambda p, t: t.update(feature_sources=[p["tdps"][1]["did"]] * 2),
     r"workloads.inference.feature_sources names a provider twice"),
    (lambda p, t: t.update(weights_leave="no"), r"workloads.inference.weights_leave must be true or false"),
    (lambda p, t: t.update(deadline_seconds=0), r"workloads.inference.deadline_seconds must be an integer >= 1"),
    (lambda p, t: t.update(max_rows=0), r"workloads.inference.max_rows must be an integer >= 1"),
    (lambda p, t: t.update(max_rows=1.5), r"workloads.inference.max_rows must be an integer >= 1"),
    (lambda p, t: t.update(max_rows=contracts.MAX_INFERENCE_ROWS + 1), r"workloads.inference.max_rows must be at most"),
    (lambda p, t: t.update(threshold=1.0), r"workloads.inference.threshold must be in \(0, 1\)"),
    (lambda p, t: t.update(threshold=float("nan")), r"workloads.inference.threshold must be a finite number"),
    (lambda p, t: t.update(command=["python", "-c", "steal()"]), r"workloads.inference has unknown field\(s\) command"),
])
def test_inference_slot_refusals_name_the_field(payload, change, reason):
    payload["workloads"]["inference"] = terms = inference_terms(payload)
    change(payload, terms)
    with pytest.raises(contracts.MalformedContract, match=reason):
        contracts.validate_payload(payload)
    with pytest.raises(contracts.MalformedContract, match=reason):
        contracts.new_envelope(payload)  # nothing to sign

