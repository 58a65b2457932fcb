"""The loan scenario's continued batch (LoanScenario with `batch_rows`): the bank's first export
and its later batch are different customers, together exactly the generated ones, each with a
header; the bureau has files on the new customers too, so the continued run can join them; and
the contract it writes allows continued training with room for two runs."""
from __future__ import annotations

import pandas as pd
import pytest

from local_emulator.loan_scenario import LoanScenario


@pytest.fixture
def scenario(tmp_path):
    made = LoanScenario(None, tmp_path, rows=900, batch_rows=400, seed=3, echo=lambda _: None)
    yield made
    made.close()


def test_the_new_batch_holds_other_customers_the_bureau_also_knows(scenario):
    first, batch, bureau = (pd.read_csv(scenario.raw_table(name), dtype=str) for name in ("bank", "bank.v2", "bureau"))
    assert (len(first), len(batch)) == (900, 400)
    assert list(first.columns) == list(batch.columns)
    assert not set(first["customer_phone"]) & set(batch["customer_phone"])       # new individuals
    assert scenario.generated["bank_rows"] == 1_300
    known = {phone[-10:] for phone in bureau["phone_number"]}
    joined = {phone.replace(" ", "")[-10:] for phone in batch["customer_phone"]} & known
    assert 0.75 * len(batch) < len(joined) < len(batch)                         # about 85% have a bureau file
    assert not (scenario.workdir / "bank.all.raw.csv").exists()


def test_a_scenario_with_a_batch_allows_continued_training_for_two_runs(scenario):
    assert scenario.continued_training and scenario.lifetime_runs == 2
    without = LoanScenario(None, scenario.workdir / "plain", rows=900, echo=lambda _: None)
    try:
        assert not without.continued_training and without.lifetime_runs == 1
    finally:
        without.close()
