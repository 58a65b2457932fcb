"""The COVID reference inputs the TDC brings: a 10 -> 128 -> 64 -> 1 MLP as ONNX (legacy
exporter, dynamic batch axis), its training.json, and the contract's join spec over the
three providers' tables. Used by tests and the demo."""
from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import nn

from shared.settings import PROJECT_ROOT

FEATURES = {  # provider -> selected columns (the join key is never a feature)
    "icmr": ["a_icmr_test_result", "a_test_ct_value", "a_sample_genetic_sequenced", "a_sample_genetic_strain"],
    "cowin": ["age", "vaccine_name"],
    "index": ["pasymp", "dsinfection", "potravel", "labcode", "page"],
}
TARGET = "a_icmr_test_result"
RAW_JOIN_KEYS = {"icmr": "icmr_patient_mobilenumber", "cowin": "cowin_registered_mobile", "index": "pcnumber"}
COVID_DATA = Path(os.environ.get("CCR_COVID_DATA", PROJECT_ROOT.parent / "shared" / "data" / "covid"))
RAW_FILES = {"icmr": "poc_data_icmr_data.csv", "cowin": "poc_data_cowin_data.csv",
             "index": "poc_data_statewarroom_data.csv"}
N_FEATURES = sum(len(c) for c in FEATURES.values()) - 1


def covid_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(N_FEATURES, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 1))


def logit_model_onnx(model: nn.Module, n_features: int) -> bytes:
    """A TDC's untrained model as it publishes it: ONNX bytes, `features` in (any batch size),
    one `logit` out (for bce_with_logits)."""
    buffer = io.BytesIO()
    torch.onnx.export(model.eval(), torch.zeros(1, n_features), buffer, dynamo=False,
                      input_names=["features"], output_names=["logit"],
                      dynamic_axes={"features": {0: "batch"}, "logit": {0: "batch"}})
    return buffer.getvalue()


def covid_onnx(seed: int = 0) -> bytes:
    """The untrained reference model as ONNX bytes (logit output, for bce_with_logits)."""
    return logit_model_onnx(covid_mlp(seed), N_FEATURES)


# Public bounds of the ten features, from what the columns mean (never from the data): the
# trainer clips to them and fits the DP scaling inside them. Codes without a published code
# book get the range of the code set they name.
FEATURE_BOUNDS = {
    "a_test_ct_value": [0, 40],  # RT-PCR cycle threshold: at most the 40 cycles of a standard run
    "a_sample_genetic_sequenced": [0, 1],  # yes/no flag
    "a_sample_genetic_strain": [0, 13],  # strain code: 0 none, 1..13 the WHO Greek-letter variant labels
    "age": [0, 120],  # years
    "vaccine_name": [0, 3],  # CoWIN vaccine code: 0 none, 1..3 Covishield, Covaxin, Sputnik V (2021)
    "pasymp": [0, 1],  # asymptomatic: yes/no flag
    "dsinfection": [0, 1],  # yes/no flag
    "potravel": [0, 1],  # travel history: yes/no flag
    "labcode": [0, 999],  # three-digit lab code
    "page": [0, 120],  # patient age in years
}


def covid_training_config(**overrides) -> dict:
    """The TDC's training.json. Its metrics are all derived from the DP confusion counts: asking
    for roc_auc or loss adds a mechanism, so every fixed mechanism (the confusion counts among
    them) gets more noise at the same epsilon (trainer_container/privacy_plan.py)."""
    config = {"loss": "bce_with_logits", "optimizer": "adam", "learning_rate": 0.01, "batch_size": 64,
              "epochs": 5, "metrics": ["accuracy", "precision", "recall", "f1", "confusion_matrix"],
              "seed": 7, "target_column": TARGET, "max_grad_norm": 1.0,
              "epsilon": 1.5, "feature_bounds": {column: list(bounds) for column, bounds in FEATURE_BOUNDS.items()}}
    config.update(overrides)
    return config


def covid_join_spec(join_keys: dict[str, str] | None = None) -> dict:
    """Join spec over the three tables; `join_keys` defaults to the raw mobile-number columns
    (after de-identification it is the pseudonym column)."""
    keys = join_keys or RAW_JOIN_KEYS
    return {"datasets": [{"name": name, "join_key": keys[name], "columns": list(columns)}
                         for name, columns in FEATURES.items()],
            "drop_columns": [], "target": TARGET}


DEID_JOIN_KEYS = {name: "pseudonym" for name in RAW_FILES}  # configs/covid/*.json: the mobile number's pseudonym


def deidentified_covid(out_dir, pseudonym_key: bytes) -> dict:
    """The three providers' tables as they publish them: prepared by shared.deid with
    configs/covid/<name>.json (keyed-HMAC pseudonym join key, identifiers dropped)."""
    from shared import deid

    paths = {}
    for name, file in RAW_FILES.items():
        config = deid.load_config(PROJECT_ROOT / "configs" / "covid" / f"{name}.json")
        paths[name] = Path(out_dir) / f"{name}.csv"
        deid.prepare_csv(config, COVID_DATA / file, paths[name], pseudonym_key)
    return paths
