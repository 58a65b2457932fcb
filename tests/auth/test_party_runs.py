"""The status API as each party sees it: only the runs of contracts it is a party of; another
party's run answers exactly like a run that does not exist."""
from __future__ import annotations

from tests.auth.conftest import get


def listed(app, token: str) -> set[str]:
    response = get(app, "runs", token)
    assert response.status_code == 200, response.text
    return {run["run_id"] for run in response.json()}


def test_a_party_lists_only_its_own_contracts_runs(app, tokens, stored):
    a, b = stored["a"]["run_id"], stored["b"]["run_id"]
    for party in ("tdc", "icmr", "cowin"):
        assert a in listed(app, tokens[party]) and b not in listed(app, tokens[party])
    for party in ("rival", "index"):
        assert b in listed(app, tokens[party]) and a not in listed(app, tokens[party])
    assert not {a, b} & listed(app, tokens["stranger"])


def test_another_partys_run_is_404_like_a_missing_one(app, tokens, stored):
    a, b = stored["a"]["run_id"], stored["b"]["run_id"]
    own = get(app, f"runs/{a}", tokens["cowin"])
    assert own.status_code == 200 and own.json()["contract_id"] == stored["a"]["payload"]["contract_id"]
    others, missing = get(app, f"runs/{b}", tokens["cowin"]), get(app, "runs/run-0000000000000000", tokens["cowin"])
    assert others.status_code == missing.status_code == 404
    assert others.json() == {"error": f"no run {b!r}"} and missing.json() == {"error": "no run 'run-0000000000000000'"}
    assert others.headers["Content-Type"] == missing.headers["Content-Type"]
    assert get(app, f"runs/{b}", tokens["stranger"]).status_code == 404
    assert get(app, f"runs/{b}", tokens["rival"]).status_code == 200


def test_the_status_api_needs_a_token_not_the_function_key(app, stored):
    run = stored["a"]["run_id"]
    assert get(app, f"runs/{run}").status_code == 401
    assert get(app, f"runs/{run}", **{"x-functions-key": app.function_key}).status_code == 401
