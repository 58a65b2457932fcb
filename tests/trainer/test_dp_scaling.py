"""The scaling constants that leave in the exported model are differentially private: fitted
inside public bounds (values clipped to them) from noisy sums, so the TDC cannot read the
training rows' exact statistics off the model, nor one row's value off two models."""
import math

import numpy as np
import onnx
import onnxruntime
import pandas as pd
import pytest
from onnx import numpy_helper
from torch import nn

from local_emulator import covid_reference as covid_model
from shared.pipeline import JoinSpec, PipelineConfigError, TrainingConfig, check_compatible
from trainer_container.accountant import Accountant
from trainer_container.secure_random import SecureRandom
from trainer_container.export import export_onnx, verify_onnx, with_standardization
from trainer_container.features import Standardizer, split_and_scale
from trainer_container.join import join_datasets
from trainer_container.onnx_convert import load_model, onnx_to_torch

BOUNDS = covid_model.covid_training_config()["feature_bounds"]
STATISTICS_NOISE_MULTIPLIER = 12.0  # privacy_plan's reference


def noise_generator(seed: int) -> SecureRandom:
    return SecureRandom(seed.to_bytes(32, "big"))


@pytest.fixture(scope="module")
def covid_table(covid_spec, covid_paths):
    return join_datasets(covid_spec, covid_paths)


def _bounds(columns):
    return tuple(np.array([BOUNDS[c][i] for c in columns], dtype=np.float64) for i in (0, 1))


def _train_rows(table, spec):
    """A fixed 80% of the rows (the split itself is secret: these tests need known rows)."""
    rows = table.loc[:, list(spec.feature_columns)].to_numpy(dtype=np.float64)
    return rows[np.random.default_rng(7).permutation(len(rows))[math.ceil(len(rows) * 0.2):]]


def _mean_noise_std(n, d, half):
    """Standard deviation of a released mean: sigma * sqrt(2d + 1) / n in normalized units
    (to first order: the count it divides by is noisy too)."""
    return STATISTICS_NOISE_MULTIPLIER * math.sqrt(2 * d + 1) / n * half


def _exported_constants(onnx_bytes):
    initializers = {i.name: numpy_helper.to_array(i) for i in onnx.load_from_string(onnx_bytes).graph.initializer}
    return initializers["0.mean"], initializers["0.scale"]


def test_exported_scaling_constants_are_noisy_not_the_exact_statistics(covid_table, covid_spec):
    rows = _train_rows(covid_table, covid_spec)
    low, high = _bounds(covid_spec.feature_columns)
    standardizer = Standardizer.fit_private(rows, low, high, noise_generator(3), STATISTICS_NOISE_MULTIPLIER,
                                            Accountant())
    exported = with_standardization(onnx_to_torch(load_model(covid_model.covid_onnx())), standardizer)
    onnx_bytes = export_onnx(exported, 10)
    verify_onnx(onnx_bytes, exported, rows[:50].astype(np.float32))
    mean, scale = _exported_constants(onnx_bytes)
    assert np.array_equal(mean, standardizer.mean.astype(np.float32))
    assert np.array_equal(scale, standardizer.scale.astype(np.float32))

    exact_mean, exact_std = np.clip(rows, low, high).mean(0), np.clip(rows, low, high).std(0)
    tolerance = 5 * _mean_noise_std(len(rows), 10, (high - low) / 2)
    assert np.all(np.abs(mean - exact_mean) > 1e-5 * tolerance)  # every constant carries noise
    assert np.all(np.abs(mean - exact_mean) < tolerance)  # and only noise of the mechanism's scale
    assert not np.allclose(scale, exact_std, rtol=1e-4)
    # Usable: the well-spread features' scales stay close to the exact ones.
    spread = [covid_spec.feature_columns.index(c) for c in ("a_test_ct_value", "a_sample_genetic_sequenced",
                                                            "pasymp", "dsinfection", "potravel", "labcode")]
    assert np.allclose(scale[spread], exact_std[spread], rtol=0.25)


def test_one_row_moves_the_constants_only_within_the_noise(covid_table, covid_spec):
    """Neighbouring training sets: row 0 moved from its value to the top of every bound. The
    exact fit gives the row away (n * the mean difference is its change); the DP fit cannot
    be told apart from its neighbour better than by chance."""
    rows = _train_rows(covid_table, covid_spec)
    low, high = _bounds(covid_spec.feature_columns)
    neighbour = rows.copy()
    neighbour[0] = high
    n = len(rows)
    exact_shift = neighbour.mean(0) - rows.mean(0)
    assert np.allclose(n * exact_shift, high - rows[0])  # the exact fit reveals the row

    noise_std = _mean_noise_std(n, 10, (high - low) / 2)
    assert np.all(np.abs(exact_shift) < 0.1 * noise_std)  # a row moves a mean by far less than the noise
    released = np.array([Standardizer.fit_private(rows, low, high, noise_generator(s), STATISTICS_NOISE_MULTIPLIER, Accountant()).mean for s in range(300)])
    released_neighbour = np.array([Standardizer.fit_private(neighbour, low, high, noise_generator(1000 + s), STATISTICS_NOISE_MULTIPLIER, Accountant()).mean
                                   for s in range(300)])
    assert np.allclose(released.std(0), noise_std, rtol=0.2)  # the mechanism's noise, as documented
    assert np.all(np.abs(released_neighbour - released) < 6 * math.sqrt(2) * noise_std)
    # The best single-feature test (threshold halfway between the two exact means) is a coin flip.
    age = covid_spec.feature_columns.index("age")
    threshold = (rows[:, age].mean() + neighbour[:, age].mean()) / 2
    right = np.mean(np.concatenate([released[:, age] < threshold, released_neighbour[:, age] >= threshold]))
    assert right < 0.6
    # The attacker's reading of row 0's new age from two models is noise many times the bound.
    guesses = rows[0, age] + n * (released_neighbour[:, age] - released[:, age])
    assert np.std(guesses - high[age]) > 10 * (high[age] - low[age])


def test_values_outside_the_bounds_are_clipped_in_training_and_in_the_exported_model():
    table = pd.DataFrame({"x": [-5.0, 0.0, 3.0, 10.0, 250.0, 4.0, 6.0, 7.0], "t": [0, 1, 0, 1, 0, 1, 0, 1]})
    split = split_and_scale(table, ("x",), "t", 0.25, {"x": (0, 10)}, noise_generator(0), 0.01, Accountant())
    standardizer = split.standardizer
    assert standardizer.apply(np.array([[-5.0], [250.0]])).tolist() == standardizer.apply(
        np.array([[0.0], [10.0]])).tolist()
    standardized = np.concatenate([split.train_x.numpy(), split.val_x.numpy()])
    assert standardized.min() >= standardizer.apply(np.array([[0.0]]))[0, 0]
    assert standardized.max() <= standardizer.apply(np.array([[10.0]]))[0, 0]

    model = with_standardization(nn.Sequential(nn.Linear(1, 1)), standardizer)
    onnx_bytes = export_onnx(model, 1)
    session = onnxruntime.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    out = session.run(None, {"features": np.array([[-5.0], [0.0], [250.0], [10.0], [1e9]], np.float32)})[0]
    assert out[0] == out[1] and out[2] == out[3] == out[4] and out[1] != out[3]


def _config(bounds):
    return TrainingConfig.from_dict(covid_model.covid_training_config(feature_bounds=bounds))


@pytest.mark.parametrize("bounds, message", [
    ({**BOUNDS, "age": [120, 0]}, "feature_bounds.age must have low < high"),
    ({**BOUNDS, "age": [5, 5]}, "feature_bounds.age must have low < high"),
    ({**BOUNDS, "age": [0, float("inf")]}, r"feature_bounds.age must be \[low, high\]: two finite numbers"),
    ({**BOUNDS, "age": [0, float("nan")]}, r"feature_bounds.age must be \[low, high\]"),
    ({**BOUNDS, "age": [0]}, r"feature_bounds.age must be \[low, high\]"),
    ({**BOUNDS, "age": [False, True]}, r"feature_bounds.age must be \[low, high\]"),
    ({**BOUNDS, "age": ["0", "120"]}, r"feature_bounds.age must be \[low, high\]"),
    ({**BOUNDS, "age": [0, 1e13]}, r"within \+-1e\+12"),
    ({**BOUNDS, "x; DROP": [0, 1]}, "plain column"),
    ({}, "feature_bounds must be a non-empty object"),
    ([[0, 1]], "feature_bounds must be a non-empty object"),
])
def test_malformed_feature_bounds_are_refused(bounds, message):
    with pytest.raises(PipelineConfigError, match=message):
        _config(bounds)


def test_training_config_without_feature_bounds_is_refused():
    config = covid_model.covid_training_config()
    del config["feature_bounds"]
    with pytest.raises(PipelineConfigError, match="training config is missing feature_bounds"):
        TrainingConfig.from_dict(config)


def test_bounds_must_cover_exactly_the_joins_feature_columns():
    join = JoinSpec.from_dict(covid_model.covid_join_spec())
    check_compatible(join, _config(BOUNDS))
    missing = {c: b for c, b in BOUNDS.items() if c not in ("age", "labcode")}
    with pytest.raises(PipelineConfigError, match="no bounds for feature column.s. age, labcode$"):
        check_compatible(join, _config(missing))
    with pytest.raises(PipelineConfigError, match="names column.s. a_icmr_test_result, gender, which are not"):
        check_compatible(join, _config({**BOUNDS, "gender": [0, 1], "a_icmr_test_result": [0, 1]}))
