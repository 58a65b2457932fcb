"""A seeded, schema-faithful synthetic stand-in for Kaggle's credit-risk table (which cannot be
downloaded here), split the way two providers would hold it: a bank's loan records and a
credit bureau's history, both keyed by the customer's mobile number, which each provider
writes in its own format and pseudonymises before publishing (configs/loan/*.json).

Columns, as in the Kaggle schema: person_age, person_income, person_home_ownership
(RENT, MORTGAGE, OWN, OTHER), person_emp_length (years), loan_intent (EDUCATION, MEDICAL,
VENTURE, PERSONAL, DEBTCONSOLIDATION, HOMEIMPROVEMENT), loan_grade (A..G), loan_amnt,
loan_int_rate (%), loan_percent_income, loan_status (1 = default) at the bank;
cb_person_default_on_file (Y/N) and cb_person_cred_hist_length (years) at the bureau
(exported as `default_on_file` and `credit_history_years`; the bureau's config prefixes them).
Each table also carries identifiers and dates its provider drops.

How the rows are drawn (each person independently; marginals close to the Kaggle table's):
- a latent creditworthiness z ~ N(0, 1) that nobody observes;
- age 20 + Gamma(2, 4) years (capped at 80), employment length at most age - 18, credit
  history 2..30 years growing with age; income log-normal around 52k, rising with employment
  and z; home ownership multinomial, mortgages likelier with income and age;
- a prior default on file with probability sigmoid(-2.1 - 1.1 z) (about 18%);
- grade A..G by thresholds on z - 0.9 * prior default + noise (about 35/31/18/11/4/1.3/0.8 %),
  interest rate the grade's base rate plus noise, amount log-normal around 8k (more with
  income, at most 35k and 0.8 of income), percent of income = amount / income.

Why a loan defaults (loan_status = 1, about 24% of rows): a logistic model of the observable
features, as lenders and the Kaggle data suggest:
    logit = -2.55 + 0.18 (rate - 11) + 0.18 grade + 8.0 (percent_income - 0.17)
            + home {RENT +0.9, OTHER +0.6, MORTGAGE 0, OWN -1.2} + 0.45 prior default
            - 0.7 ln(income / 55k) + intent {DEBTCONSOLIDATION +0.35, MEDICAL +0.3,
            HOMEIMPROVEMENT +0.25, PERSONAL 0, EDUCATION -0.25, VENTURE -0.45}
            - 0.03 employment years - 0.35 z
The burden of the loan (percent of income), its price (rate, grade), renting and a prior
default raise the risk; income, employment and owning a home lower it; age and history length
matter only through the rest. The unobserved z keeps a logistic regression on the joined
table near AUC 0.88 (measured 0.876-0.882 on 17k held-out joined rows for three seeds;
tests/loan/test_loan_data.py checks 0.85-0.95 for two seeds).

The bank holds every generated customer; the bureau has a file on BUREAU_COVERAGE of them, in
its own order, plus BUREAU_OTHERS as many people who bank elsewhere: the inner join keeps only
the bank's customers with a bureau file.

Rows are drawn in blocks of BLOCK_ROWS, each from its own generator seeded by (seed, block):
the bytes depend only on (seed, rows) (and BLOCK_ROWS), and writing millions of rows holds one block at a time.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shared.settings import PROJECT_ROOT

CONFIGS = PROJECT_ROOT / "configs" / "loan"
BLOCK_ROWS = 50_000
BUREAU_COVERAGE = 0.85  # share of the bank's customers the bureau has a file on
BUREAU_OTHERS = 0.20    # people only the bureau knows, per bank customer
HOME_OWNERSHIP = ("RENT", "MORTGAGE", "OWN", "OTHER")
LOAN_INTENTS = ("EDUCATION", "MEDICAL", "VENTURE", "PERSONAL", "DEBTCONSOLIDATION", "HOMEIMPROVEMENT")
INTENT_SHARES = (0.20, 0.19, 0.17, 0.17, 0.16, 0.11)
GRADES = tuple("ABCDEFG")
GRADE_THRESHOLDS = (0.40, -0.62, -1.40, -2.27, -2.97, -3.48)  # on the grade score: A above the first
GRADE_BASE_RATE = (7.3, 11.0, 13.5, 15.4, 17.0, 18.6, 20.2)    # % a year
HOME_EFFECT = {"RENT": 0.9, "MORTGAGE": 0.0, "OWN": -1.2, "OTHER": 0.6}
INTENT_EFFECT = {"EDUCATION": -0.25, "MEDICAL": 0.3, "VENTURE": -0.45, "PERSONAL": 0.0,
                 "DEBTCONSOLIDATION": 0.35, "HOMEIMPROVEMENT": 0.25}
BANK_COLUMNS = ("loan_id", "customer_phone", "application_date", "person_age", "person_income",
                "person_home_ownership", "person_emp_length", "loan_intent", "loan_grade", "loan_amnt",
                "loan_int_rate", "loan_percent_income", "loan_status")
BUREAU_COLUMNS = ("bureau_file_id", "phone_number", "default_on_file", "credit_history_years", "last_updated")
_OTHERS_FIRST_ID = 3_000_000_000  # ids of bureau-only people; the bank's customers are 0, 1, 2, ...
_APPLICATION_DATES = (np.datetime64("2024-01-01") + np.arange(366)).astype(str).astype(object)
_UPDATE_DATES = (np.datetime64("2022-07-01") + np.arange(731)).astype(str).astype(object)
_PHONE_SPAN, _PHONE_MULTIPLIER = 4_000_000_000, 2_654_435_761  # odd and not a multiple of 5: a bijection


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def mobile_numbers(ids: np.ndarray) -> np.ndarray:
    """A distinct 10-digit mobile number (6..9 first digit) per person id below 4e9."""
    return 6_000_000_000 + (ids.astype(np.int64) * _PHONE_MULTIPLIER) % _PHONE_SPAN


def people(rng: np.random.Generator, n: int) -> pd.DataFrame:
    """`n` people with every schema column (categories as the providers write them)."""
    z = rng.standard_normal(n)
    age = np.minimum(20 + np.floor(rng.gamma(2.0, 4.0, n)), 80).astype(np.int64)
    emp = np.minimum(np.floor(rng.gamma(1.3, 3.5, n)), age - 18).astype(np.float64)
    history = np.clip(2 + np.round((age - 20) * rng.uniform(0.3, 0.9, n)) + rng.integers(0, 3, n), 2, 30)
    log_income = rng.normal(np.log(52_000) + 0.02 * np.minimum(emp, 20) + 0.15 * z, 0.5)
    income = np.clip(np.round(np.exp(log_income), -2), 4_000, 2_000_000).astype(np.int64)
    income_log_ratio = np.log(income / 55_000)
    home_logits = np.stack([np.zeros(n), -0.3 + 0.9 * income_log_ratio + 0.04 * (age - 27),
                            -2.2 + 0.03 * (age - 27), np.full(n, -5.5)], axis=1)
    home = _categorical(rng, np.exp(home_logits))
    intent = rng.choice(len(LOAN_INTENTS), n, p=INTENT_SHARES)
    prior = rng.random(n) < _sigmoid(-2.1 - 1.1 * z)
    grade_score = z - 0.9 * prior + rng.normal(0, 0.6, n)
    grade = np.searchsorted(-np.asarray(GRADE_THRESHOLDS), -grade_score)
    rate = np.clip(np.asarray(GRADE_BASE_RATE)[grade] + rng.normal(0, 0.9, n), 5.42, 23.22).round(2)
    amount = np.exp(rng.normal(np.log(8_000) + 0.3 * income_log_ratio, 0.6))
    amount = np.clip(np.round(np.minimum(amount, 0.8 * income) / 25) * 25, 500, 35_000).astype(np.int64)
    percent = np.round(amount / income, 2)
    home_names, intent_names = np.asarray(HOME_OWNERSHIP)[home], np.asarray(LOAN_INTENTS)[intent]
    logit = (-2.55 + 0.18 * (rate - 11) + 0.18 * grade + 8.0 * (percent - 0.17)
             + pd.Series(home_names).map(HOME_EFFECT).to_numpy() + 0.45 * prior - 0.7 * income_log_ratio
             + pd.Series(intent_names).map(INTENT_EFFECT).to_numpy() - 0.03 * emp - 0.35 * z)
    status = (rng.random(n) < _sigmoid(logit)).astype(np.int64)
    return pd.DataFrame({
        "person_age": age, "person_income": income, "person_home_ownership": home_names, "person_emp_length": emp,
        "loan_intent": intent_names, "loan_grade": np.asarray(GRADES)[grade], "loan_amnt": amount,
        "loan_int_rate": rate, "loan_percent_income": percent, "loan_status": status,
        "cb_person_default_on_file": np.where(prior, "Y", "N"), "cb_person_cred_hist_length": history.astype(np.int64)})


def _categorical(rng: np.random.Generator, weights: np.ndarray) -> np.ndarray:
    """One category index per row, row i drawn with probabilities weights[i] / sum(weights[i])."""
    cumulative = np.cumsum(weights, axis=1)
    return (rng.random(len(weights))[:, None] * cumulative[:, -1:] > cumulative).sum(axis=1)


@dataclass(frozen=True)
class Block:
    """One block of both providers' raw exports, and which bank rows the bureau also holds."""
    bank: pd.DataFrame
    bureau: pd.DataFrame
    joined: pd.DataFrame  # the schema's columns of the bank customers with a bureau file


def _check_rows(rows: int) -> None:
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise ValueError(f"rows must be a whole number of at least 1, not {rows!r}")


def blocks(rows: int, seed: int) -> Iterator[Block]:
    """The `rows` bank customers (and the bureau's files) block by block."""
    _check_rows(rows)
    for number, start in enumerate(range(0, rows, BLOCK_ROWS)):
        yield _block(np.random.default_rng([seed, number]), number, start, min(BLOCK_ROWS, rows - start))


def _block(rng: np.random.Generator, number: int, start: int, n: int) -> Block:
    others = round(n * BUREAU_OTHERS)
    drawn = people(rng, n + others)
    customers, outsiders = drawn.iloc[:n], drawn.iloc[n:]
    ids = np.arange(start, start + n)
    other_ids = _OTHERS_FIRST_ID + round(start * BUREAU_OTHERS) + np.arange(others)
    covered = rng.random(n) < BUREAU_COVERAGE
    days = rng.integers(0, len(_APPLICATION_DATES), n)
    bank = pd.DataFrame({
        "loan_id": [f"LN{i:010d}" for i in ids.tolist()],
        "customer_phone": [f"+91 {p // 100_000} {p % 100_000:05d}" for p in mobile_numbers(ids).tolist()],
        "application_date": _APPLICATION_DATES[days],
        **{c: customers[c].to_numpy() for c in BANK_COLUMNS[3:]}})
    files = pd.concat([customers[covered], outsiders], ignore_index=True)
    file_ids = np.concatenate([ids[covered], other_ids])
    order = rng.permutation(len(files))
    files, file_ids = files.iloc[order], file_ids[order]
    bureau = pd.DataFrame({
        "bureau_file_id": [f"CB-{number:05d}-{i:06d}" for i in range(len(files))],
        "phone_number": [f"0{p}" for p in mobile_numbers(file_ids).tolist()],
        "default_on_file": files["cb_person_default_on_file"].to_numpy(),
        "credit_history_years": files["cb_person_cred_hist_length"].to_numpy(),
        "last_updated": _UPDATE_DATES[rng.integers(0, len(_UPDATE_DATES), len(files))]})
    return Block(bank, bureau, customers[covered].reset_index(drop=True))


def write_tables(bank_path: Path, bureau_path: Path, rows: int, seed: int) -> dict:
    """Both providers' raw CSV exports, written a block at a time; how many rows each got."""
    _check_rows(rows)
    written = {"bank_rows": 0, "bureau_rows": 0, "shared_customers": 0}
    with open(bank_path, "w", newline="", encoding="utf-8") as bank, \
            open(bureau_path, "w", newline="", encoding="utf-8") as bureau:
        for index, block in enumerate(blocks(rows, seed)):
            block.bank.to_csv(bank, index=False, header=index == 0, lineterminator="\n")
            block.bureau.to_csv(bureau, index=False, header=index == 0, lineterminator="\n")
            written["bank_rows"] += len(block.bank)
            written["bureau_rows"] += len(block.bureau)
            written["shared_customers"] += len(block.joined)
    return written


def category_codes() -> dict[str, dict[str, int]]:
    """Each categorical schema column's codes, as the providers' preparation configs map them."""
    codes = {}
    for name in ("bank", "bureau"):
        config = json.loads((CONFIGS / f"{name}.json").read_text())
        prefix, rename = config.get("prefix", ""), config.get("rename", {})
        for column, kind in config.get("types", {}).items():
            if isinstance(kind, dict):
                codes[prefix + rename.get(column, column)] = kind["map"]
    return codes


def joined_sample(rows: int, seed: int, features: tuple[str, ...], target: str) -> tuple[np.ndarray, np.ndarray]:
    """(features as float32 in the given order, target) of the inner join of a fresh synthetic
    draw of `rows` bank customers, categories coded as the providers' configs code them: the
    table the clean room trains on, for the TDC's own evaluation and the non-private baseline."""
    codes = category_codes()
    tables = [block.joined for block in blocks(rows, seed)]
    joined = pd.concat(tables, ignore_index=True)
    x = np.stack([joined[c].map(codes[c]).to_numpy() if c in codes else joined[c].to_numpy() for c in features],
                 axis=1).astype(np.float32)
    return x, joined[target].to_numpy().astype(np.int64)
