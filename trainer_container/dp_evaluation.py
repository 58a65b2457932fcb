"""DP evaluation: the validation metrics that leave the trainer are post-processing of Gaussian
mechanisms on the held-out rows, each charged to the run's one accountant before it runs.

- `confusion_counts`: the k x k confusion matrix (true class, predicted class) plus noise of
  standard deviation sigma on every cell. Each validation row adds 1 to exactly one cell, so
  adding or removing a person changes the matrix by one unit vector: L2 sensitivity 1. Accuracy,
  precision, recall and F1 (binary: positive class 1; multiclass: macro average) are computed
  from the noisy cells (clamped at 0), and the noisy matrix itself is released.
- `score_histogram` (roc_auc, binary models): the positive-class scores (in [0, 1]) in
  HISTOGRAM_BINS equal bins, one histogram per true class; one row is one unit vector again
  (sensitivity 1). ROC AUC is the Mann-Whitney statistic of the two noisy histograms (ties
  within a bin count one half).
- `validation_loss` (loss): the sum of per-row losses clipped to [0, LOSS_BOUND] (sensitivity
  LOSS_BOUND) plus noise, divided by the noisy row count of the confusion matrix.
One evaluation at the end of training: no per-epoch values leave.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shared.pipeline import TrainingConfig
from trainer_container.accountant import Accountant, GaussianRelease
from trainer_container.privacy_plan import HISTOGRAM_BINS, LOSS_BOUND, FixedNoise
from trainer_container.secure_random import SecureRandom
from trainer_container.training import loss_function, predictions, targets


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Exact counts [true][predicted]: never released as they are."""
    matrix = np.zeros((n_classes, n_classes))
    np.add.at(matrix, (y_true.astype(int), y_pred.astype(int)), 1)
    return matrix


def release_confusion(matrix: np.ndarray, noise_multiplier: float, noise: SecureRandom,
                      accountant: Accountant) -> np.ndarray:
    """The Gaussian mechanism on the confusion matrix (sensitivity 1)."""
    accountant.charge(GaussianRelease("confusion_counts", noise_multiplier))
    return matrix + noise.normal(matrix.shape, noise_multiplier).numpy()


def score_histograms(y_true: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Exact [class][bin] counts of the positive-class scores: never released as they are."""
    bins = np.clip((np.clip(score, 0.0, 1.0) * HISTOGRAM_BINS).astype(int), 0, HISTOGRAM_BINS - 1)
    histogram = np.zeros((2, HISTOGRAM_BINS))
    np.add.at(histogram, (y_true.astype(int), bins), 1)
    return histogram


def release_histograms(histogram: np.ndarray, noise_multiplier: float, noise: SecureRandom,
                       accountant: Accountant) -> np.ndarray:
    accountant.charge(GaussianRelease("score_histogram", noise_multiplier))
    return histogram + noise.normal(histogram.shape, noise_multiplier).numpy()


def release_loss_sum(per_row_loss: np.ndarray, noise_multiplier: float, noise: SecureRandom,
                     accountant: Accountant) -> float:
    accountant.charge(GaussianRelease("validation_loss", noise_multiplier))
    clipped = np.clip(per_row_loss, 0.0, LOSS_BOUND)
    return float(clipped.sum() + noise.normal(1, noise_multiplier * LOSS_BOUND)[0])


def metrics_from_confusion(noisy: np.ndarray) -> dict:
    """Accuracy, precision, recall, F1 from noisy counts (post-processing)."""
    matrix = np.clip(noisy, 0.0, None)
    n_classes = len(matrix)
    tp = np.diag(matrix)
    ratio = lambda a, b: np.divide(a, b, out=np.zeros_like(a, dtype=float), where=b > 0)
    precision_c, recall_c = ratio(tp, matrix.sum(0)), ratio(tp, matrix.sum(1))
    f1_c = ratio(2 * precision_c * recall_c, precision_c + recall_c)
    pick = (lambda v: float(v[1])) if n_classes == 2 else (lambda v: float(v.mean()))
    total = matrix.sum()
    return {"accuracy": float(tp.sum() / total) if total > 0 else 0.0, "precision": pick(precision_c),
            "recall": pick(recall_c), "f1": pick(f1_c)}


def auc_from_histograms(noisy: np.ndarray) -> float | None:
    negatives, positives = np.clip(noisy, 0.0, None)
    n_neg, n_pos = negatives.sum(), positives.sum()
    if n_neg <= 0 or n_pos <= 0:
        return None
    above = np.cumsum(positives[::-1])[::-1] - positives  # positives in higher bins
    return float(np.clip((negatives * (above + positives / 2)).sum() / (n_neg * n_pos), 0.0, 1.0))


def evaluate_private(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainingConfig,
                     fixed: FixedNoise, noise: SecureRandom, accountant: Accountant) -> dict:
    """The validation metrics the config asks for, every one from a charged DP mechanism:
    {"metrics": {...}, "mechanisms": {...}} (the noise each mechanism added)."""
    model.eval()
    with torch.no_grad():
        output = model(x)
        per_row = loss_function(config.loss, "none")(output, targets(y, config.loss))
    per_row = per_row.reshape(len(y), -1).sum(1).numpy()
    predicted, score = predictions(output, config.loss)
    n_classes = output.shape[1] if config.loss == "cross_entropy" else 2
    y_true = y.numpy()
    noisy = release_confusion(confusion_matrix(y_true, predicted, n_classes), fixed.confusion, noise, accountant)
    values = {**metrics_from_confusion(noisy), "confusion_matrix": np.round(noisy, 2).tolist()}
    mechanisms = {"confusion_counts": {"noise_std": fixed.confusion, "sensitivity": 1}}
    if fixed.histogram is not None and n_classes == 2 and score is not None:
        histograms = release_histograms(score_histograms(y_true, score), fixed.histogram, noise, accountant)
        values["roc_auc"] = auc_from_histograms(histograms)
        mechanisms["score_histogram"] = {"noise_std": fixed.histogram, "sensitivity": 1, "bins": HISTOGRAM_BINS}
    if fixed.loss is not None:
        loss_sum = release_loss_sum(per_row, fixed.loss, noise, accountant)
        values["loss"] = loss_sum / max(float(np.clip(noisy, 0, None).sum()), 1.0)
        mechanisms["validation_loss"] = {"noise_std": fixed.loss * LOSS_BOUND, "sensitivity": LOSS_BOUND,
                                         "per_row_clip": [0.0, LOSS_BOUND]}
    wanted = {name: values[name] for name in config.metrics if name in values}
    return {"metrics": wanted, "mechanisms": mechanisms}
