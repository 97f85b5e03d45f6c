"""Classification metrics and calibration, in numpy only (used by ``wbc evaluate`` without torch)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from wbcproc.stats import softmax  # numpy only: no OpenCV import chain on a bare GPU machine


def confusion(y_true: np.ndarray, y_pred: np.ndarray, k: int) -> np.ndarray:
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, classes: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, macro-F1 and the confusion matrix.

    Macro-F1 averages over the classes present in ``y_true`` (a class with no test cells has no recall).
    """
    k = len(classes)
    cm = confusion(np.asarray(y_true), np.asarray(y_pred), k)
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    present = support > 0
    return {
        "n": int(cm.sum()),
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": {
            c: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": cm.tolist(),
        "classes": list(classes),
    }


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    p = softmax(logits / temperature)
    return float(-np.log(np.clip(p[np.arange(len(y_true)), y_true], 1e-12, 1)).mean())


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the T in [0.05, 20] minimising validation NLL."""
    if len(y_true) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 200))
    losses = [nll(logits, y_true, t) for t in grid]
    return float(grid[int(np.argmin(losses))])


def review_threshold(probs: np.ndarray, y_true: np.ndarray, target_accuracy: float = 0.99) -> float:
    """The lowest confidence t such that cells with confidence >= t are right at least ``target_accuracy``
    of the time on validation data; cells below t get the review mark.  Clamped to [0.5, 0.95]."""
    if len(y_true) == 0:
        return 0.7
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    for t in np.linspace(0.3, 0.99, 70):
        kept = conf >= t
        if kept.sum() >= max(1, 0.2 * len(conf)) and correct[kept].mean() >= target_accuracy:
            return float(np.clip(t, 0.5, 0.95))
    return 0.95
