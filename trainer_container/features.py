"""Joined table -> train/validation tensors: a seeded split, then standardization fitted on
the training split only (validation statistics never leak into training)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from trainer_container.join import JoinError


@dataclass(frozen=True)
class Standardizer:
    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> "Standardizer":
        scale = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(scale > 0, scale, 1.0))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale).astype(np.float32)


@dataclass(frozen=True)
class Split:
    train_x: torch.Tensor  # standardized
    train_y: torch.Tensor
    val_x: torch.Tensor  # standardized
    val_y: torch.Tensor
    val_raw_x: np.ndarray  # raw features, to verify the exported model (which standardizes itself)
    standardizer: Standardizer


def split_and_scale(table: pd.DataFrame, feature_columns: tuple[str, ...], target: str,
                    validation_split: float, seed: int) -> Split:
    """Exactly `feature_columns` become features (in that order); nothing else of the table does."""
    x = table.loc[:, list(feature_columns)].to_numpy(dtype=np.float64)
    y = table[target].to_numpy(dtype=np.float64)
    n = len(table)
    n_val = math.ceil(n * validation_split)
    if n_val < 1 or n - n_val < 2:
        raise JoinError(f"{n} joined rows are too few for a {validation_split} validation split")
    order = np.random.default_rng(seed).permutation(n)
    train_idx, val_idx = order[n_val:], order[:n_val]
    standardizer = Standardizer.fit(x[train_idx])
    return Split(torch.from_numpy(standardizer.apply(x[train_idx])), torch.from_numpy(y[train_idx]).float(),
                 torch.from_numpy(standardizer.apply(x[val_idx])), torch.from_numpy(y[val_idx]).float(),
                 x[val_idx].astype(np.float32), standardizer)
