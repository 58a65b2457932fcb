"""The non-private yardstick for the loan scenario: a plain logistic regression (numpy, Newton's
method on standardized features) fitted on the joined synthetic table, and the ROC AUC that
both it and the clean room's DP model are judged by on fresh synthetic rows. What a TDC would
get with no privacy at all, so the DP model's AUC reads against it."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RIDGE = 1e-3  # keeps Newton's steps finite if a feature is (nearly) constant in a small sample


@dataclass(frozen=True)
class LogisticModel:
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # the intercept first

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, np.float64) - self.mean) / self.scale
        return self.weights[0] + z @ self.weights[1:]


def fit_logistic(x: np.ndarray, y: np.ndarray, iterations: int = 25) -> LogisticModel:
    """Maximum-likelihood logistic regression (a small ridge for stability)."""
    x = np.asarray(x, np.float64)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    design = np.hstack([np.ones((len(x), 1)), (x - mean) / scale])
    weights = np.zeros(design.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-design @ weights))
        gradient = design.T @ (p - y) + RIDGE * weights
        hessian = (design * (p * (1 - p))[:, None]).T @ design + RIDGE * np.eye(len(weights))
        step = np.linalg.solve(hessian, gradient)
        weights -= step
        if np.abs(step).max() < 1e-8:
            break
    return LogisticModel(mean, scale, weights)


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    labels = np.asarray(labels).astype(bool)
    positives, negatives = labels.sum(), (~labels).sum()
    if positives == 0 or negatives == 0:
        raise ValueError("the ROC AUC needs both classes among the labels")
    ranks = pd.Series(np.asarray(scores, np.float64).ravel()).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))
