"""Aggregate validation metrics (no per-sample values ever leave this module)."""
from __future__ import annotations

import numpy as np


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve as the Mann-Whitney U statistic (ties get average ranks)."""
    positives = y_true == 1
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(score, kind="mergesort")
    sorted_scores = score[order]
    ranks = np.empty(len(score))
    _, inverse, counts = np.unique(sorted_scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average = ends - (counts - 1) / 2.0
    ranks[order] = average[inverse]
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, score: np.ndarray | None,
                           n_classes: int, wanted: tuple[str, ...]) -> dict:
    """Accuracy, precision/recall/F1 (binary: positive class 1; multiclass: macro average),
    ROC AUC (binary only) and the confusion matrix [true][predicted]; only the `wanted` ones."""
    y_true, y_pred = y_true.astype(int), y_pred.astype(int)
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    tp = np.diag(matrix).astype(float)
    precision_c = np.divide(tp, matrix.sum(0), out=np.zeros(n_classes), where=matrix.sum(0) > 0)
    recall_c = np.divide(tp, matrix.sum(1), out=np.zeros(n_classes), where=matrix.sum(1) > 0)
    f1_c = np.divide(2 * precision_c * recall_c, precision_c + recall_c, out=np.zeros(n_classes),
                     where=(precision_c + recall_c) > 0)
    pick = (lambda v: float(v[1])) if n_classes == 2 else (lambda v: float(v.mean()))
    values = {"accuracy": float(tp.sum() / max(1, len(y_true))), "precision": pick(precision_c),
              "recall": pick(recall_c), "f1": pick(f1_c), "confusion_matrix": matrix.tolist()}
    if "roc_auc" in wanted and n_classes == 2 and score is not None:
        values["roc_auc"] = roc_auc(y_true, score)
    return {name: values[name] for name in wanted if name in values}
