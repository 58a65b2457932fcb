"""Joined table -> train/validation tensors: a secret random split, every feature clipped to
its public bounds, then standardization fitted on the training split only (validation
statistics never leak into training) and with differential privacy (the scaling constants
leave in the model).

The split: every joined row goes to validation independently with probability p (the
contract's `evaluation.validation_split`), drawn from the run's secure source. Row by row and
secret, so adding or removing a person moves at most that person's row in or out of one side,
and nobody, the TDC included, knows which rows validate. The split's sizes are private.

The scaling statistics are one Gaussian mechanism (`scaling_statistics`, charged to the run's
accountant). Each feature is clipped to its bounds [low, high] and normalized to
u = (x - mid) / half in [-1, 1]. One release adds N(0, (sigma * sensitivity)^2) to every entry
of the vector (sum u_j, sum u_j^2 for j = 1..d, and the row count) over the training rows.
Adding or removing one row changes it by (u_1..u_d, u_1^2..u_d^2, 1), whose L2 norm is at most
sqrt(2d + 1): the sensitivity. With n~ the noisy count (never the exact one), mean = S1 / n~ and
variance = S2 / n~ - mean^2, clamped to [floor, 1] (1: the largest variance in [-1, 1]). The
floor is the noise's standard deviation on S2 / n~, sigma * sqrt(2d + 1) / n~: a smaller
variance cannot be told from zero, and scaling a feature up by noise would hurt training; the
scale is never 0. Everything after the noisy sums is post-processing (no further privacy cost).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from trainer_container.accountant import Accountant, GaussianRelease
from trainer_container.secure_random import SecureRandom

MIN_STATISTICS_ROWS = 1.0  # the noisy count is clamped below here before dividing by it
# Rows widened to float64 at a time: the scaling's temporaries stay a few tens of MB whatever the
# table's size (bench/loan_scale.py: 4 M rows peaked above the trainer's default 2 GB when each
# step made a float64 copy of the whole table). Chunking changes no value: float32 -> float64 is
# exact and every operation is per element (the sums only add in another order).
ROWS_AT_ONCE = 1 << 18


@dataclass(frozen=True)
class Standardizer:
    """Clip to [low, high], then (x - mean) / scale; every constant here goes into the model."""
    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit_private(cls, x: np.ndarray, low: np.ndarray, high: np.ndarray, noise: SecureRandom,
                    noise_multiplier: float, accountant: Accountant) -> "Standardizer":
        """Mean and scale from the noisy sums of the module docstring (x: training rows only)."""
        accountant.charge(GaussianRelease("scaling_statistics", noise_multiplier))
        n, d = x.shape
        mid, half = (high + low) / 2, (high - low) / 2
        sums = np.zeros(2 * d + 1)
        sums[-1] = n
        for start in range(0, n, ROWS_AT_ONCE):
            u = (np.clip(x[start:start + ROWS_AT_ONCE].astype(np.float64), low, high) - mid) / half
            sums[:d] += u.sum(axis=0)
            sums[d:2 * d] += np.square(u).sum(axis=0)
        noise_std = noise_multiplier * math.sqrt(2 * d + 1)  # sigma * L2 sensitivity
        noisy = sums + noise.normal(2 * d + 1, noise_std).numpy()
        rows = max(float(noisy[-1]), MIN_STATISTICS_ROWS)
        mean_u = np.clip(noisy[:d] / rows, -1.0, 1.0)
        variance_u = np.clip(noisy[d:2 * d] / rows - np.square(mean_u), min(noise_std / rows, 1.0), 1.0)
        return cls(low, high, mid + half * mean_u, half * np.sqrt(variance_u))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Scaled float32 features, computed in float64 a chunk of rows at a time."""
        scaled = np.empty(np.shape(x), dtype=np.float32)
        for start in range(0, len(x), ROWS_AT_ONCE):
            chunk = np.asarray(x[start:start + ROWS_AT_ONCE], dtype=np.float64)
            scaled[start:start + ROWS_AT_ONCE] = (np.clip(chunk, self.low, self.high) - self.mean) / self.scale
        return scaled


@dataclass(frozen=True)
class Split:
    train_x: torch.Tensor  # clipped and standardized
    train_y: torch.Tensor
    val_x: torch.Tensor  # clipped and standardized
    val_y: torch.Tensor
    val_raw_x: np.ndarray  # raw features, to verify the exported model (which clips and standardizes itself)
    standardizer: Standardizer


def secret_split(n: int, validation_split: float, noise: SecureRandom) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, validation indices): each row validates with probability p."""
    validates = noise.bernoulli(n, validation_split)
    return np.flatnonzero(~validates), np.flatnonzero(validates)


def split_and_scale(table: pd.DataFrame, feature_columns: tuple[str, ...], target: str, validation_split: float,
                    bounds: Mapping[str, tuple[float, float]], noise: SecureRandom, statistics_noise: float,
                    accountant: Accountant) -> Split:
    """Exactly `feature_columns` become features (in that order); nothing else of the table does.
    `bounds` holds every feature column's public (low, high) (checked by check_compatible);
    `statistics_noise` is the plan's, charged to `accountant` as `scaling_statistics`."""
    low, high = (np.array([bounds[c][i] for c in feature_columns], dtype=np.float64) for i in (0, 1))
    x, y, train_idx, val_idx = _secret_split(table, feature_columns, target, validation_split, noise)
    standardizer = Standardizer.fit_private(x[train_idx], low, high, noise, statistics_noise, accountant)
    return _scaled(x, y, train_idx, val_idx, standardizer)


def split_with_standardizer(table: pd.DataFrame, feature_columns: tuple[str, ...], target: str,
                            validation_split: float, noise: SecureRandom, standardizer: Standardizer) -> Split:
    """As `split_and_scale`, scaled by a previous run's released constants (a continued run,
    trainer_container/model_state.py): no scaling statistics are released, nothing is charged."""
    x, y, train_idx, val_idx = _secret_split(table, feature_columns, target, validation_split, noise)
    return _scaled(x, y, train_idx, val_idx, standardizer)


def _secret_split(table: pd.DataFrame, feature_columns: tuple[str, ...], target: str, validation_split: float,
                  noise: SecureRandom) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    # the join's float32 stays float32 here (half the memory of a float64 copy), widened per chunk
    narrow = all(table[c].dtype == np.float32 for c in feature_columns)
    x = table.loc[:, list(feature_columns)].to_numpy(dtype=np.float32 if narrow else np.float64)
    y = table[target].to_numpy(dtype=np.float64)
    return (x, y, *secret_split(len(table), validation_split, noise))


def _scaled(x: np.ndarray, y: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
            standardizer: Standardizer) -> Split:
    return Split(torch.from_numpy(standardizer.apply(x[train_idx])), torch.from_numpy(y[train_idx]).float(),
                 torch.from_numpy(standardizer.apply(x[val_idx])), torch.from_numpy(y[val_idx]).float(),
                 x[val_idx].astype(np.float32), standardizer)
