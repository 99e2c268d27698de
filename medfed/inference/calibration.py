"""Calibration: reliability curve, expected calibration error, threshold for a sensitivity."""

from __future__ import annotations

from typing import Any

import numpy as np


def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> dict[str, Any]:
    """Equal-width bins of predicted probability ``p`` (N,) vs observed rate of ``y`` (N,).

    ECE = sum over bins of (bin rows / N) * |mean predicted - observed rate|.
    """
    y, p = np.asarray(y, float), np.clip(np.asarray(p, float), 0.0, 1.0)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    predicted, observed, counts = [], [], []
    ece = 0.0
    for b in range(bins):
        rows = which == b
        n = int(rows.sum())
        counts.append(n)
        if n == 0:
            predicted.append(None)
            observed.append(None)
            continue
        mean_p, rate = float(p[rows].mean()), float(y[rows].mean())
        predicted.append(mean_p)
        observed.append(rate)
        ece += n / max(len(y), 1) * abs(mean_p - rate)
    return {"bins": bins, "predicted": predicted, "observed": observed, "counts": counts,
            "ece": float(ece)}


def threshold_for_sensitivity(y: np.ndarray, p: np.ndarray, target: float) -> dict[str, Any]:
    """The highest threshold whose sensitivity reaches ``target`` on these rows."""
    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    positives = np.sort(p[y == 1])[::-1]
    if len(positives) == 0:
        return {"target_sensitivity": target, "threshold": None,
                "reason": "no positive rows at this site"}
    k = max(int(np.ceil(target * len(positives))), 1)
    threshold = float(positives[k - 1])
    pred = p >= threshold
    negatives = y == 0
    return {"target_sensitivity": target, "threshold": threshold,
            "sensitivity": float(pred[y == 1].mean()),
            "specificity": float((~pred[negatives]).mean()) if negatives.any() else None}
