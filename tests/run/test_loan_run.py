"""The loan-default scenario's first training run end to end on a local stack: a bank and a
credit bureau publish synthetic tables keyed by a pseudonymised mobile number, the TDC its
model; all sign; the run joins, trains with DP-SGD and releases the model. The model must
have learned (AUC on a fresh synthetic sample well above chance), inside the contract's
epsilon, and no identifier, pseudonym or row may appear in the run record or the host log."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from local_emulator.loan_scenario import LoanScenario
from tests.run.conftest import remaining_groups, run_record

ROWS = 3_000  # bank customers: about 2,550 joined rows, about 2,000 to train on
# Floor for the released model's AUC on fresh rows. A model that learned nothing scores 0.5;
# the best single feature of this generator (interest rate, percent of income or grade) scores
# about 0.76 alone; the non-private baseline about 0.88. 0.8 demands that the DP model combine
# features, as it does (0.865-0.872 in three runs at epsilon 3 on 2,000-3,400 training rows),
# with room for the DP noise of a small run.
AUC_FLOOR = 0.8


@pytest.fixture
def finished(stack, tmp_path):
    scenario = LoanScenario(stack, tmp_path / "loan", rows=ROWS, seed=21, contract_id="loan-e2e", echo=lambda _: None)
    try:
        yield scenario, scenario.run(timeout=120)
    finally:
        scenario.close()


def identifiers_and_rows(workdir) -> dict[str, set[str]]:
    """What must never leave a provider: its raw identifiers, the pseudonyms and its rows."""
    bank, bureau = (pd.read_csv(workdir / f"{name}.raw.csv", dtype=str) for name in ("bank", "bureau"))
    prepared = {name: pd.read_csv(workdir / f"{name}.prepared.csv", dtype=str) for name in ("bank", "bureau")}
    phones = set(bank["customer_phone"]) | set(bureau["phone_number"])
    return {
        "phones": phones | {re.sub(r"\D", "", p)[-10:] for p in phones},
        "record ids": set(bank["loan_id"]) | set(bureau["bureau_file_id"]),
        "pseudonyms": set(prepared["bank"]["customer"]) | set(prepared["bureau"]["customer"]),
        "rows": {",".join(row[1:]) for row in prepared["bank"].itertuples(index=False)},
    }


def found_in(text: str, secrets: dict[str, set[str]]) -> dict[str, set[str]]:
    """Which of `secrets` occur in `text` (each kind by its shape, then by exact value)."""
    shapes = {"phones": r"\+91 \d{5} \d{5}|\d{10,11}", "record ids": r"LN\d{10}|CB-\d{5}-\d{6}",
              "pseudonyms": r"[0-9a-f]{64}", "rows": r"(?:[0-9.]+,){9}[0-9.]+"}
    return {kind: set(re.findall(shapes[kind], text)) & values for kind, values in secrets.items()}


def test_the_loan_run_trains_a_useful_model_inside_its_budget_and_leaks_nothing(stack, finished):
    scenario, result = finished
    notice, record = result["notice"], result["run"]
    assert notice["status"] == "succeeded", notice
    assert record["status"] == "succeeded" and record["phase"] == "finished"

    privacy = result["output"]["privacy"]
    assert 0 < privacy["epsilon"] <= scenario.epsilon
    assert record["privacy_budget_spent"] == {"bank": privacy["epsilon"], "bureau": privacy["epsilon"]}
    assert "train_rows" not in privacy and "validation_rows" not in privacy  # only the noisy count leaves
    assert abs(privacy["joined_rows_noisy"] - scenario.generated["shared_customers"]) < 200

    evaluation = result["evaluation"]
    assert evaluation["model_logits_finite"]
    assert evaluation["model_auc"] >= AUC_FLOOR, evaluation
    assert 0.85 <= evaluation["baseline_auc"] <= 0.95, evaluation

    secrets = identifiers_and_rows(scenario.workdir)
    assert all(secrets.values()) and len(secrets["rows"]) > 2_000   # the check looks for something real
    planted = " ".join(min(values) for values in secrets.values())
    assert all(found_in(f"a log line with {planted} in it", secrets).values())  # and would find it
    operator_record = run_record(stack, scenario.run_id)
    for where, text in (("status API record", json.dumps(record)), ("operator's record", json.dumps(operator_record)),
                        ("host log", stack.host.logs())):
        assert found_in(text, secrets) == {kind: set() for kind in secrets}, where
    assert remaining_groups(stack) == []
