"""The scaling works a chunk of rows at a time (bounded memory at millions of rows,
trainer_container/features.py): chunking changes no scaled value, and the statistics' sums
only by rounding."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd

from trainer_container import features
from trainer_container.accountant import Accountant
from trainer_container.features import Standardizer, split_and_scale
from trainer_container.secure_random import SecureRandom

LOW, HIGH = np.array([0.0, -5.0, 10.0]), np.array([100.0, 5.0, 20.0])


def rows(n: int = 1000) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.normal([50, 0, 15], [60, 4, 6], size=(n, 3)).astype(np.float32)  # some beyond the bounds


def test_chunked_scaling_equals_the_whole_array_formula(monkeypatch):
    monkeypatch.setattr(features, "ROWS_AT_ONCE", 7)  # many chunks, the last one partial
    x = rows()
    scaling = Standardizer(LOW, HIGH, np.array([40.0, 0.5, 14.0]), np.array([20.0, 2.0, 3.0]))
    whole = ((np.clip(x.astype(np.float64), LOW, HIGH) - scaling.mean) / scaling.scale).astype(np.float32)
    assert np.array_equal(scaling.apply(x), whole)
    assert np.array_equal(scaling.apply(x.astype(np.float64)), whole)


def test_chunked_statistics_match_the_whole_array_sums(monkeypatch):
    x = rows()
    whole = Standardizer.fit_private(x, LOW, HIGH, SecureRandom(bytes(32)), 1.0, Accountant())
    monkeypatch.setattr(features, "ROWS_AT_ONCE", 7)
    chunked = Standardizer.fit_private(x, LOW, HIGH, SecureRandom(bytes(32)), 1.0, Accountant())  # same noise
    assert np.allclose(chunked.mean, whole.mean, rtol=0, atol=1e-12)
    assert np.allclose(chunked.scale, whole.scale, rtol=1e-12)


def test_splitting_a_float32_table_peaks_below_three_float64_copies_of_its_features(monkeypatch):
    """Measured: 4.6 copies when the whole table was widened to float64 and scaled at once,
    2.2 now (what the split keeps, its float32 tensors, targets and indices, included)."""
    monkeypatch.setattr(features, "ROWS_AT_ONCE", 4096)
    x = np.tile(rows(), (200, 1))  # 200 k rows
    table = pd.DataFrame({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "t": np.float32(1)})
    tracemalloc.start()
    try:
        split = split_and_scale(table, ("a", "b", "c"), "t", 0.25, {"a": (0, 100), "b": (-5, 5), "c": (10, 20)},
                                SecureRandom(bytes(32)), 1.0, Accountant())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(split.train_x) + len(split.val_x) == len(x) and split.val_raw_x.dtype == np.float32
    assert peak < 3 * x.size * 8, f"peak {peak / (x.size * 8):.1f} float64 copies of the features"
