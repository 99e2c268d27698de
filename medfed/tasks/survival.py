"""Survival task: Cox proportional hazards trained on the partial likelihood, judged by C-index.

Labels ``y`` are float (N, 2): column 0 the follow-up time (>= 0), column 1 the event (1 =
event observed, 0 = censored). The model outputs one log-risk per row (higher = sooner event).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from medfed.tasks.base import BaseTask


def cox_loss(log_risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow ties, averaged over events.

    ``log_risk``, ``time``, ``event``: (N,). The risk set of an event at time t is every row
    with time >= t (tied rows share one risk set: Breslow). No event in the batch: 0 (with a
    gradient path, so optimisers and DP accountants see a normal step).
    """
    event = event.to(log_risk.dtype)
    n_events = event.sum()
    if float(n_events) == 0:
        return log_risk.sum() * 0.0
    at_risk = time[None, :] >= time[:, None]  # (N, N): row i's risk set
    masked = log_risk[None, :].masked_fill(~at_risk, float("-inf"))
    log_denominator = torch.logsumexp(masked, dim=1)
    return -((log_risk - log_denominator) * event).sum() / n_events


def harrell_c_index(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance: share of comparable pairs the risk score orders correctly.

    A pair (i, j) is comparable when i has an event and t_i < t_j, or t_i == t_j and j is
    censored (lifelines' convention). Concordant: risk_i > risk_j; tied risks count 1/2.
    NaN when no pair is comparable. O(N^2) memory in blocks of rows.
    """
    time = np.asarray(time, dtype=np.float64)
    event = np.asarray(event).astype(bool)
    risk = np.asarray(risk, dtype=np.float64)
    concordant, comparable = 0.0, 0
    for i in np.flatnonzero(event):
        later = (time > time[i]) | ((time == time[i]) & ~event)
        if not later.any():
            continue
        others = risk[later]
        comparable += len(others)
        concordant += (others < risk[i]).sum() + 0.5 * (others == risk[i]).sum()
    return concordant / comparable if comparable else math.nan


def check_survival_labels(time: np.ndarray, event: np.ndarray, where: str) -> str | None:
    """None, or a one-line description of what is wrong with (time, event)."""
    if np.isnan(time).any() or np.isnan(event).any():
        return f"{where}: missing time or event values; drop or fill those rows"
    if (time < 0).any():
        return (f"{where}: {int((time < 0).sum())} negative survival time(s) (first "
                f"{time[time < 0][0]:g}); times must be >= 0 (days since diagnosis)")
    bad = ~np.isin(event, (0, 1))
    if bad.any():
        return (f"{where}: event values must be 0 (censored) or 1 (event); found "
                f"{sorted({float(v) for v in event[bad]})[:5]}")
    return None


@dataclass(frozen=True)
class SurvivalTask(BaseTask):
    """One log-risk per row; y (N, 2) = (time, event)."""

    name: str = "survival"
    primary_metric: str = "c_index"
    metric_names: tuple[str, ...] = ("c_index",)

    def n_outputs(self, n_classes: int) -> int:
        return 1

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        y = y.to(outputs.dtype)
        return cox_loss(outputs[:, 0], y[:, 0], y[:, 1])

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs[:, 0]

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        y = np.asarray(y, dtype=np.float64).reshape(-1, 2)
        return {"c_index": harrell_c_index(y[:, 0], y[:, 1], scores)}

    def label_summary(self, y: np.ndarray) -> dict[str, float]:
        y = np.asarray(y, dtype=np.float64).reshape(-1, 2)
        events = y[:, 1] == 1
        return {"patients": len(y), "events": int(events.sum()),
                "median_time": float(np.median(y[:, 0])) if len(y) else math.nan}

    def stratify(self, y: np.ndarray) -> np.ndarray | None:
        events = np.asarray(y).reshape(-1, 2)[:, 1].astype(int)
        _, counts = np.unique(events, return_counts=True)
        return events if len(counts) > 1 and counts.min() >= 2 else None

    def partition_labels(self, y: np.ndarray) -> np.ndarray:
        """What label-skew partitioners split by: the event indicator."""
        return np.asarray(y).reshape(-1, 2)[:, 1].astype(np.int64)

    def check_train_labels(self, y: np.ndarray) -> str | None:
        events = np.asarray(y).reshape(-1, 2)[:, 1]
        return None if events.sum() >= 1 else "no event in its training split (Cox needs one)"
