"""The loan-default scenario's inputs the TDC brings: an 11 -> 32 -> 1 MLP as ONNX (legacy
exporter, dynamic batch axis, a logit out), its training.json with public feature bounds, and
the contract's join spec over the bank's loan records and the bureau's history (both keyed by
the `customer` pseudonym configs/loan/*.json make of the mobile number)."""
from __future__ import annotations

import torch
from torch import nn

from local_emulator.covid_reference import logit_model_onnx

FEATURES = {  # provider -> selected columns, in the model's input order (the target is not a feature)
    "bank": ["person_age", "person_income", "person_home_ownership", "person_emp_length", "loan_intent",
              "loan_grade", "loan_amnt", "loan_int_rate", "loan_percent_income", "loan_status"],
    "bureau": ["cb_person_default_on_file", "cb_person_cred_hist_length"],
}
TARGET = "loan_status"
JOIN_KEY = "customer"  # both configs' pseudonym of the mobile number
FEATURE_COLUMNS = tuple(c for columns in FEATURES.values() for c in columns if c != TARGET)
N_FEATURES = len(FEATURE_COLUMNS)

# Public bounds, each from the schema's domain (a codebook, a legal or product limit, a human
# lifespan), never from the data: the trainer clips to them and fits its DP scaling inside them.
FEATURE_BOUNDS = {
    "person_age": [18, 100],           # contractual capacity starts at 18; 100 caps a human borrower's age
    "person_income": [0, 300_000],     # a yearly income; above 300k a loan of at most 35k (below) is under 12%
                                       # of it, so risk no longer moves with income: a clip level, not an observation
    "person_home_ownership": [0, 3],   # codebook: OWN 0, MORTGAGE 1, OTHER 2, RENT 3
    "person_emp_length": [0, 82],      # years employed: at most the years since 18, and 100 - 18 = 82
    "loan_intent": [0, 5],             # codebook: the schema's six intents, 0..5
    "loan_grade": [0, 6],              # codebook: grades A..G as 0..6
    "loan_amnt": [500, 35_000],        # the product's published smallest and largest loan
    "loan_int_rate": [0, 36],          # % a year: 36% is the usury cap on consumer loans (e.g. the US MLA's APR cap)
    "loan_percent_income": [0, 1],     # loan / yearly income: the product lends at most a year's income
    "cb_person_default_on_file": [0, 1],    # codebook: N 0, Y 1
    "cb_person_cred_hist_length": [0, 82],  # years of credit history: at most the years since 18, as above
}


def loan_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 32), nn.ReLU(), nn.Linear(32, 1))


def loan_onnx(seed: int = 0) -> bytes:
    """The untrained model as ONNX bytes (logit output, for bce_with_logits)."""
    return logit_model_onnx(loan_mlp(seed), N_FEATURES)


def loan_training_config(**overrides) -> dict:
    """The TDC's training.json: DP accuracy and ROC AUC as its validation metrics."""
    config = {"loss": "bce_with_logits", "optimizer": "adam", "learning_rate": 0.02, "batch_size": 128,
              "epochs": 3, "metrics": ["accuracy", "roc_auc"], "seed": 7, "target_column": TARGET,
              "max_grad_norm": 1.0, "epsilon": 3.0,
              "feature_bounds": {column: list(bounds) for column, bounds in FEATURE_BOUNDS.items()}}
    config.update(overrides)
    return config


def loan_join_spec() -> dict:
    return {"datasets": [{"name": name, "join_key": JOIN_KEY, "columns": list(columns)}
                         for name, columns in FEATURES.items()],
            "drop_columns": [], "target": TARGET}
