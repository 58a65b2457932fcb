"""Declarative pipeline models: the join spec (from the contract) and the training config
(from the TDC's model package). Both are plain data checked against allow-lists, so no party
can make the clean room run code, SQL or an unknown loss/optimizer.

Join spec (contract `pipeline.join`):
    {"datasets": [{"name": "icmr", "join_key": "pseudonym", "columns": ["a_test_ct_value", ...]}, ...],
     "drop_columns": [...], "target": "a_icmr_test_result"}
Every dataset is inner-joined on its `join_key` (the keys hold the same identifier under
different names); the join keys never become features. Features are exactly the selected
`columns` (in order, dataset by dataset) minus `drop_columns` and the target.

Training config (`training.json` in the model package): see `TrainingConfig`. Its
`feature_bounds` ({"age": [0, 120], ...}, one entry per feature column of the join) are public
bounds: the trainer clips every feature to them and fits the scaling with differential privacy
inside them, so they must come from domain knowledge, never from the data.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

LOSSES = ("bce_with_logits", "bce", "mse", "cross_entropy")
OPTIMIZERS = ("sgd", "adam")
METRICS = ("loss", "accuracy", "precision", "recall", "f1", "roc_auc", "confusion_matrix")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]{0,127}$")


class PipelineConfigError(ValueError):
    """A join spec or training config that is malformed or outside the allow-lists."""


def _require_keys(where: str, data, required: set[str], optional: set[str] = frozenset()) -> None:
    if not isinstance(data, dict):
        raise PipelineConfigError(f"{where} must be a JSON object")
    missing = sorted(required - data.keys())
    if missing:
        raise PipelineConfigError(f"{where} is missing {', '.join(missing)}")
    unknown = sorted(data.keys() - required - optional)
    if unknown:
        raise PipelineConfigError(f"{where} has unknown field(s) {', '.join(unknown)}")


def _name(where: str, value) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise PipelineConfigError(f"{where} must be a plain column/dataset name")
    return value


def _names(where: str, values) -> tuple[str, ...]:
    if not isinstance(values, list):
        raise PipelineConfigError(f"{where} must be a list of names")
    names = tuple(_name(where, v) for v in values)
    if len(set(names)) != len(names):
        raise PipelineConfigError(f"{where} lists a name twice")
    return names


@dataclass(frozen=True)
class JoinDataset:
    name: str
    join_key: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class JoinSpec:
    datasets: tuple[JoinDataset, ...]
    drop_columns: tuple[str, ...]
    target: str

    @classmethod
    def from_dict(cls, data: dict) -> "JoinSpec":
        _require_keys("pipeline.join", data, {"datasets", "target"}, {"drop_columns"})
        if not isinstance(data["datasets"], list) or not data["datasets"]:
            raise PipelineConfigError("pipeline.join.datasets must be a non-empty list")
        datasets = []
        for i, item in enumerate(data["datasets"]):
            where = f"pipeline.join.datasets[{i}]"
            _require_keys(where, item, {"name", "join_key", "columns"})
            datasets.append(JoinDataset(_name(f"{where}.name", item["name"]),
                                        _name(f"{where}.join_key", item["join_key"]),
                                        _names(f"{where}.columns", item["columns"])))
        if len({d.name for d in datasets}) != len(datasets):
            raise PipelineConfigError("pipeline.join.datasets names a dataset twice")
        seen: dict[str, str] = {}
        for d in datasets:
            if d.join_key in d.columns:
                raise PipelineConfigError(f"join key {d.join_key!r} of {d.name} cannot be a selected column")
            for column in d.columns:
                if column in seen:
                    raise PipelineConfigError(f"column {column!r} is selected from both {seen[column]} and {d.name}")
                seen[column] = d.name
        target = _name("pipeline.join.target", data["target"])
        if target not in seen:
            raise PipelineConfigError(f"target column {target!r} is not a selected column")
        drop = _names("pipeline.join.drop_columns", data.get("drop_columns", []))
        if target in drop:
            raise PipelineConfigError(f"target column {target!r} cannot be dropped")
        spec = cls(tuple(datasets), drop, target)
        if not spec.feature_columns:
            raise PipelineConfigError("pipeline.join selects no feature column")
        return spec

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """Exactly the selected columns, minus dropped ones and the target: never a key or index."""
        return tuple(c for d in self.datasets for c in d.columns
                     if c not in self.drop_columns and c != self.target)


@dataclass(frozen=True)
class TrainingConfig:
    """The TDC's training choices, every one from an allow-list or a bounded range."""
    loss: str
    optimizer: str
    learning_rate: float
    batch_size: int
    epochs: int
    metrics: tuple[str, ...]
    seed: int
    target_column: str
    max_grad_norm: float
    epsilon: float
    feature_bounds: dict[str, tuple[float, float]]  # public: domain facts, never read off the data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainingConfig":
        fields = {"loss", "optimizer", "learning_rate", "batch_size", "epochs", "metrics", "seed",
                  "target_column", "max_grad_norm", "epsilon", "feature_bounds"}
        if isinstance(data, dict) and "validation_split" in data:
            raise PipelineConfigError("validation_split is a term of the contract (evaluation.validation_split), "
                                      "not of the training config: remove it")
        _require_keys("training config", data, fields)
        if data["loss"] not in LOSSES:
            raise PipelineConfigError(f"loss must be one of {', '.join(LOSSES)}")
        if data["optimizer"] not in OPTIMIZERS:
            raise PipelineConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}")
        if not isinstance(data["metrics"], list) or any(m not in METRICS for m in data["metrics"]):
            raise PipelineConfigError(f"metrics must be a list drawn from {', '.join(METRICS)}")
        return cls(
            loss=data["loss"], optimizer=data["optimizer"],
            learning_rate=_number("learning_rate", data["learning_rate"], 0.0, 10.0),
            batch_size=int(_number("batch_size", data["batch_size"], 1, 65536, integer=True)),
            epochs=int(_number("epochs", data["epochs"], 1, 1000, integer=True)),
            metrics=tuple(dict.fromkeys(data["metrics"])),
            seed=int(_number("seed", data["seed"], 0, 2**32 - 1, integer=True)),
            target_column=_name("target_column", data["target_column"]),
            max_grad_norm=_number("max_grad_norm", data["max_grad_norm"], 0.0, 1e4),
            epsilon=_number("epsilon", data["epsilon"], 0.0, 100.0),
            feature_bounds=_bounds(data["feature_bounds"]),
        )


BOUND_LIMIT = 1e12  # the exported model computes in float32: wider bounds would mean nothing there


def _bounds(data) -> dict[str, tuple[float, float]]:
    """column -> (low, high): finite numbers within +-BOUND_LIMIT, low < high."""
    if not isinstance(data, dict) or not data:
        raise PipelineConfigError("feature_bounds must be a non-empty object: feature column -> [low, high]")
    bounds = {}
    for column, pair in data.items():
        where = f"feature_bounds.{_name('feature_bounds', column)}"
        if not (isinstance(pair, list) and len(pair) == 2 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                and abs(v) <= BOUND_LIMIT for v in pair)):
            raise PipelineConfigError(f"{where} must be [low, high]: two finite numbers within +-{BOUND_LIMIT:g}")
        if not pair[0] < pair[1]:
            raise PipelineConfigError(f"{where} must have low < high")
        bounds[column] = (float(pair[0]), float(pair[1]))
    return bounds


def _number(name: str, value, low: float, high: float, integer: bool = False) -> float:
    """A finite number in (low, high] (integers: [low, high]); bools and strings are refused."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value):
        raise PipelineConfigError(f"{name} must be {'an integer' if integer else 'a number'}")
    in_range = low <= value <= high if integer else low < value <= high
    if not in_range:
        raise PipelineConfigError(f"{name} must be in {'[' if integer else '('}{low}, {high}]")
    return value


def check_compatible(join: JoinSpec, training: TrainingConfig) -> None:
    """The training config fits the contract's join: checked before any data is read."""
    if training.target_column != join.target:
        raise PipelineConfigError(
            f"training target {training.target_column!r} differs from the contract's {join.target!r}")
    missing = [c for c in join.feature_columns if c not in training.feature_bounds]
    if missing:
        raise PipelineConfigError(f"feature_bounds has no bounds for feature column(s) {', '.join(missing)}")
    unknown = sorted(training.feature_bounds.keys() - set(join.feature_columns))
    if unknown:
        raise PipelineConfigError(f"feature_bounds names column(s) {', '.join(unknown)}, "
                                  "which are not feature columns of the join")
