"""Joined table -> train/validation tensors: a seeded split, every feature clipped to its public
bounds, then standardization fitted on the training split only (validation statistics never
leak into training) and with differential privacy (the scaling constants leave in the model).

The scaling is a Gaussian mechanism, charged to the run's budget in dp_sgd.py. Each feature is
clipped to its bounds [low, high] and normalized to u = (x - mid) / half in [-1, 1]. One release
adds N(0, (sigma * sensitivity)^2) to every entry of the vector of per-feature sums
(sum u_j, sum u_j^2), j = 1..d. Adding or removing one row (Opacus's adjacency) changes that
vector by (u_1..u_d, u_1^2..u_d^2), whose L2 norm is at most sqrt(2d): the sensitivity. The
row count n is treated as public, as plan_privacy does (the sample rate needs it), so
mean = S1 / n and variance = S2 / n - mean^2, clamped to [floor, 1] (1: the largest variance in
[-1, 1]). The floor is the noise's standard deviation on S2 / n, sigma * sqrt(2d) / n: a smaller
variance cannot be told from zero, and scaling a feature up by noise would hurt training; the
scale is never 0. Noise is drawn from the run's DP noise generator. Everything after the noisy
sums is post-processing (no further privacy cost).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from trainer_container.join import JoinError


@dataclass(frozen=True)
class Standardizer:
    """Clip to [low, high], then (x - mean) / scale; every constant here goes into the model."""
    low: np.ndarray
    high: np.ndarray
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit_private(cls, x: np.ndarray, low: np.ndarray, high: np.ndarray, noise: torch.Generator,
                    noise_multiplier: float) -> "Standardizer":
        """Mean and scale from the noisy sums of the module docstring (x: training rows only)."""
        n, d = x.shape
        mid, half = (high + low) / 2, (high - low) / 2
        u = (np.clip(x, low, high) - mid) / half
        sums = np.concatenate([u.sum(axis=0), np.square(u).sum(axis=0)])
        noise_std = noise_multiplier * math.sqrt(2 * d)  # sigma * L2 sensitivity
        noisy = sums + torch.normal(0.0, noise_std, (2 * d,), generator=noise, dtype=torch.float64).numpy()
        mean_u = np.clip(noisy[:d] / n, -1.0, 1.0)
        variance_u = np.clip(noisy[d:] / n - np.square(mean_u), min(noise_std / n, 1.0), 1.0)
        return cls(low, high, mid + half * mean_u, half * np.sqrt(variance_u))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((np.clip(x, self.low, self.high) - self.mean) / self.scale).astype(np.float32)


@dataclass(frozen=True)
class Split:
    train_x: torch.Tensor  # clipped and standardized
    train_y: torch.Tensor
    val_x: torch.Tensor  # clipped and standardized
    val_y: torch.Tensor
    val_raw_x: np.ndarray  # raw features, to verify the exported model (which clips and standardizes itself)
    standardizer: Standardizer


def training_rows(n: int, validation_split: float) -> int:
    """How many of n joined rows the split keeps for training (the rest validate)."""
    n_val = math.ceil(n * validation_split)
    if n_val < 1 or n - n_val < 2:
        raise JoinError(f"the join has too few rows for a {validation_split} validation split")  # n is private
    return n - n_val


def split_and_scale(table: pd.DataFrame, feature_columns: tuple[str, ...], target: str, validation_split: float,
                    seed: int, bounds: Mapping[str, tuple[float, float]], noise: torch.Generator,
                    statistics_noise: float) -> Split:
    """Exactly `feature_columns` become features (in that order); nothing else of the table does.
    `bounds` holds every feature column's public (low, high) (checked by check_compatible);
    `statistics_noise` is the plan's (dp_sgd.statistics_noise_multiplier), so that the accountant
    charges exactly the noise the scaling statistics get."""
    low, high = (np.array([bounds[c][i] for c in feature_columns], dtype=np.float64) for i in (0, 1))
    x = table.loc[:, list(feature_columns)].to_numpy(dtype=np.float64)
    y = table[target].to_numpy(dtype=np.float64)
    n = len(table)
    n_val = n - training_rows(n, validation_split)
    order = np.random.default_rng(seed).permutation(n)
    train_idx, val_idx = order[n_val:], order[:n_val]
    standardizer = Standardizer.fit_private(x[train_idx], low, high, noise, statistics_noise)
    return Split(torch.from_numpy(standardizer.apply(x[train_idx])), torch.from_numpy(y[train_idx]).float(),
                 torch.from_numpy(standardizer.apply(x[val_idx])), torch.from_numpy(y[val_idx]).float(),
                 x[val_idx].astype(np.float32), standardizer)
