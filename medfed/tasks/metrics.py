"""Clinical metrics from labels and scores (scikit-learn); undefined values are NaN."""

from __future__ import annotations

import math

import numpy as np

BINARY_METRICS = ["accuracy", "balanced_accuracy", "auroc", "auprc", "sensitivity",
                  "specificity"]


def binary_metrics(y: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Metrics of a binary classifier; ``score`` is P(y = 1), shape (N,)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y).astype(int)
    pred = (np.asarray(score) >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    pos, neg = int((y == 1).sum()), int((y == 0).sum())
    sens = tp / pos if pos else math.nan
    spec = tn / neg if neg else math.nan
    both = pos > 0 and neg > 0
    return {
        "accuracy": float((pred == y).mean()) if len(y) else math.nan,
        "balanced_accuracy": (sens + spec) / 2 if both else math.nan,
        "auroc": float(roc_auc_score(y, score)) if both else math.nan,
        "auprc": float(average_precision_score(y, score)) if both else math.nan,
        "sensitivity": sens,
        "specificity": spec,
    }


def multiclass_metrics(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy and one-vs-rest macro AUROC; ``proba`` is (N, K)."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    y = np.asarray(y).astype(int)
    pred = proba.argmax(axis=1)
    out = {"accuracy": float((pred == y).mean()) if len(y) else math.nan,
           "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(y) else math.nan}
    present = np.unique(y)
    if len(present) == proba.shape[1]:
        out["auroc"] = float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    else:
        out["auroc"] = math.nan
    return out


def clean(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN -> None so that JSON stays valid."""
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
