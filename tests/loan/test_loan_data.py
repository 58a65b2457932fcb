"""The loan scenario's synthetic data (local_emulator/loan_data.py): a non-private baseline
lands in the AUC range the scenario promises, the same seed gives the same bytes, the two
providers' tables overlap only partly and join on the pseudonym their configs make, every
value lies inside the TDC's public bounds, and writing holds one block at a time."""
from __future__ import annotations

import hashlib
import weakref

import numpy as np
import pandas as pd
import pytest

from local_emulator import loan_data
from local_emulator.loan_baseline import fit_logistic, roc_auc
from local_emulator.loan_reference import FEATURE_BOUNDS, FEATURE_COLUMNS, TARGET
from shared import deid


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("seed", [11, 12])
def test_a_non_private_logistic_regression_reaches_auc_0_85_to_0_95(seed):
    x, y = loan_data.joined_sample(10_000, seed, FEATURE_COLUMNS, TARGET)
    fresh_x, fresh_y = loan_data.joined_sample(10_000, seed + 1_000, FEATURE_COLUMNS, TARGET)
    auc = roc_auc(fit_logistic(x, y).logits(fresh_x), fresh_y)
    assert 0.85 <= auc <= 0.95, auc
    assert 0.15 <= y.mean() <= 0.35, y.mean()  # defaults are a minority, as in the Kaggle table (22%)


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(loan_data, "BLOCK_ROWS", 1_000)  # several blocks, each its own generator
    digests = []
    for run, seed in enumerate([5, 5, 6]):
        bank, bureau = tmp_path / f"bank{run}.csv", tmp_path / f"bureau{run}.csv"
        loan_data.write_tables(bank, bureau, 2_500, seed)
        digests.append((sha256(bank), sha256(bureau)))
    assert digests[0] == digests[1]
    assert digests[2][0] != digests[0][0] and digests[2][1] != digests[0][1]


def test_the_providers_overlap_partly_and_join_on_their_pseudonyms(tmp_path):
    bank, bureau = tmp_path / "bank.csv", tmp_path / "bureau.csv"
    written = loan_data.write_tables(bank, bureau, 3_000, 1)
    key = bytes.fromhex(deid.new_pseudonym_key())
    prepared = {}
    for name, raw in (("bank", bank), ("bureau", bureau)):
        prepared[name] = tmp_path / f"{name}.prepared.csv"
        deid.prepare_csv(deid.load_config(loan_data.CONFIGS / f"{name}.json"), raw, prepared[name], key)
    loans, files = pd.read_csv(prepared["bank"]), pd.read_csv(prepared["bureau"])
    assert loans["customer"].is_unique and files["customer"].is_unique
    joined = loans.merge(files, on="customer")
    assert len(joined) == written["shared_customers"]
    assert 0.8 * len(loans) <= len(joined) <= 0.9 * len(loans)        # the bureau knows most of the bank's customers
    assert len(files) - len(joined) >= 0.15 * len(loans)               # and people who bank elsewhere
    assert list(joined.columns) == ["customer", *[c for c in FEATURE_COLUMNS if c in loans], TARGET,
                                    *[c for c in FEATURE_COLUMNS if c in files]]
    raw = pd.read_csv(bank, dtype=str)
    assert tuple(raw.columns) == loan_data.BANK_COLUMNS
    assert tuple(pd.read_csv(bureau, nrows=0).columns) == loan_data.BUREAU_COLUMNS
    assert not set(raw["customer_phone"]) & set(joined["customer"])   # pseudonyms, never the numbers
    published = prepared["bank"].read_text() + prepared["bureau"].read_text()
    for identifier in (raw["loan_id"][0], raw["application_date"][0], pd.read_csv(bureau, dtype=str)["bureau_file_id"][0]):
        assert identifier not in published


def test_a_bank_export_with_an_unknown_category_is_refused_and_writes_nothing(tmp_path):
    """A new home-ownership category in next month's export stops the preparation, naming the
    line and column but not the value; no prepared file is left behind."""
    bank, bureau = tmp_path / "bank.csv", tmp_path / "bureau.csv"
    loan_data.write_tables(bank, bureau, 50, 1)
    lines = bank.read_text().splitlines()
    fields = lines[7].split(",")
    fields[loan_data.BANK_COLUMNS.index("person_home_ownership")] = "SHARED"
    lines[7] = ",".join(fields)
    bank.write_text("\n".join(lines) + "\n")
    out = tmp_path / "bank.prepared.csv"
    with pytest.raises(deid.DeidError) as refused:
        deid.prepare_csv(deid.load_config(loan_data.CONFIGS / "bank.json"), bank, out, bytes(32))
    assert "line 8" in str(refused.value) and "person_home_ownership" in str(refused.value)
    assert "SHARED" not in str(refused.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank.csv", "bureau.csv"]


def test_every_value_lies_inside_the_public_bounds_but_the_income_clip():
    """The bounds come from the schema's domain; the generator stays inside them, except for
    income, whose upper bound is a clip level (loan_reference.py) a few high earners pass."""
    x, y = loan_data.joined_sample(20_000, 3, FEATURE_COLUMNS, TARGET)
    for index, column in enumerate(FEATURE_COLUMNS):
        (low, high), values = FEATURE_BOUNDS[column], x[:, index]
        assert low <= values.min(), column
        if column == "person_income":
            assert 0 < (values > high).mean() < 0.01
        else:
            assert values.max() <= high, column
    assert set(np.unique(y)) == {0, 1}


@pytest.mark.parametrize("rows", [0, -3, 2.5, True])
def test_a_bad_row_count_is_refused_before_any_file_is_written(tmp_path, rows):
    with pytest.raises(ValueError, match="rows must be a whole number of at least 1"):
        loan_data.write_tables(tmp_path / "bank.csv", tmp_path / "bureau.csv", rows, 1)
    assert list(tmp_path.iterdir()) == []


def test_writing_holds_one_block_at_a_time(tmp_path, monkeypatch):
    """However many rows, at most one block's tables are alive while the next is drawn:
    millions of rows stream in constant memory (bench/loan_generate.py measures rows/s)."""
    monkeypatch.setattr(loan_data, "BLOCK_ROWS", 400)
    drawn, alive_when_drawing = [], []
    draw = loan_data._block

    def tracked(*args):
        alive_when_drawing.append(sum(ref() is not None for ref in drawn))
        block = draw(*args)
        drawn.append(weakref.ref(block.bank))
        return block

    monkeypatch.setattr(loan_data, "_block", tracked)
    loan_data.write_tables(tmp_path / "bank.csv", tmp_path / "bureau.csv", 4_000, 1)
    assert len(drawn) == 10 and max(alive_when_drawing) <= 1, alive_when_drawing
    assert (tmp_path / "bank.csv").read_text().count("\n") == 4_001
