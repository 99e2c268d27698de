"""Hourly early warning (sepsis): one logit per stay-hour, judged per hour and as an alarm.

``y`` is float (N, 4): label (SepsisLabel of the hour), stay id, hour of stay, weight of a
positive hour (class weighting for ~1-2 % positive hours). Per hour: AUROC and AUPRC. Per
stay, an alarm policy turns the hourly scores into alarms (see ``stay_alarms``) and reports
alarms per 100 patient-hours, the share of hours in alarm, the PPV of alarms and the share of
septic stays warned 0-``horizon`` h before onset. Onset = first positive hour + ``lead`` (the
challenge labels hours from 6 h before onset). The challenge's own score, the normalized
utility (``normalized_utility``), judges the hourly alarms (score >= threshold) of every stay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medfed.tasks.base import BaseTask
from medfed.tasks.metrics import binary_metrics, clean

POLICY = {"threshold": 0.5, "dwell": 2, "cooldown": 6, "horizon": 12, "lead": 6,
          "thresholds": [0.3, 0.5, 0.7, 0.8, 0.9, 0.95]}
ALARM_METRICS = ("alarms_per_100h", "hours_in_alarm", "alarm_ppv", "septic_warned")

# PhysioNet/CinC 2019 utility (evaluate_sepsis_score.py): hours relative to onset t_sepsis
DT_EARLY, DT_OPTIMAL, DT_LATE = -12, -6, 3
MAX_U_TP, MIN_U_FN, U_FP, U_TN = 1.0, -2.0, -0.05, 0.0
_M1 = MAX_U_TP / (DT_OPTIMAL - DT_EARLY)  # early true alarm: 0 at -12 h rising to 1 at -6 h
_M2 = -MAX_U_TP / (DT_LATE - DT_OPTIMAL)  # late true alarm: 1 at -6 h falling to 0 at +3 h
_M3 = MIN_U_FN / (DT_LATE - DT_OPTIMAL)  # missed: 0 at -6 h falling to -2 at +3 h


def stay_utility(labels: np.ndarray, alarms: np.ndarray) -> float:
    """The challenge's utility of one stay: ``labels`` and binary ``alarms`` (T,), hour order.

    Septic stays (any label 1): onset t_sepsis = first labelled hour + 6; an alarm at hour t
    earns max((t - t_sepsis + 12) / 6, -0.05) up to 6 h before onset, then falls linearly to
    0 at 3 h after; a missed hour after -6 h costs down to -2 at +3 h; hours after +3 h count 0.
    Other stays: -0.05 per alarm hour.
    """
    labels, alarms = np.asarray(labels) > 0, np.asarray(alarms) > 0
    if not labels.any():
        return float(np.where(alarms, U_FP, U_TN).sum())
    d = np.arange(len(labels)) - (np.argmax(labels) - DT_OPTIMAL)
    early = d <= DT_OPTIMAL
    hit = np.where(early, np.maximum(_M1 * (d - DT_EARLY), U_FP), _M2 * (d - DT_LATE))
    miss = np.where(early, 0.0, _M3 * (d - DT_OPTIMAL))
    return float(np.where(d > DT_LATE, 0.0, np.where(alarms, hit, miss)).sum())


def best_alarms(labels: np.ndarray) -> np.ndarray:
    """The best possible alarms of a stay: 12 h before to 3 h after onset (septic only)."""
    labels = np.asarray(labels) > 0
    best = np.zeros(len(labels), dtype=bool)
    if labels.any():
        onset = int(np.argmax(labels)) - DT_OPTIMAL
        best[max(0, onset + DT_EARLY):onset + DT_LATE + 1] = True
    return best


def utility_sums(y: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """(observed, best, inaction) utility summed over stays. Sums of stays add up, so sites can
    send theirs and the federation's utility is computed without pooling a row."""
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    scores = np.asarray(scores)
    total = np.zeros(3)
    for rows in stays_of(y):
        label = y[rows, 0]
        total += (stay_utility(label, scores[rows] >= threshold),
                  stay_utility(label, best_alarms(label)),
                  stay_utility(label, np.zeros(len(rows))))
    return total


def normalized_utility(y: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """The challenge score: (observed - inaction) / (best - inaction) over all stays of ``y``
    (1 = perfect, 0 = never alarming, negative = worse than silence); NaN without septic
    stays. ``y`` is (N, 4) as the task's, ``scores`` (N,)."""
    return utility_from_sums(utility_sums(y, scores, threshold))


def utility_from_sums(sums: np.ndarray) -> float:
    observed, best, inaction = sums
    return (observed - inaction) / (best - inaction) if best != inaction else math.nan


def stay_alarms(scores: np.ndarray, threshold: float, dwell: int = 1,
                cooldown: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Alarms of one stay from its hourly scores (in time order).

    The alarm condition holds at hour t when the score was >= ``threshold`` for the last
    ``dwell`` hours (t - dwell + 1 .. t). An alarm fires at the first such hour and again only
    once ``cooldown`` hours have passed since the last alarm (hours t + 1 .. t + cooldown are
    silent). Returns (hours at which alarms fire, (T,) bool: condition holds = hour in alarm).
    """
    above = np.asarray(scores) >= threshold
    run = np.zeros(len(above), dtype=int)
    count = 0
    for t, hit in enumerate(above):
        count = count + 1 if hit else 0
        run[t] = count
    in_alarm = run >= max(int(dwell), 1)
    fired, last = [], -math.inf
    for t in np.flatnonzero(in_alarm):
        if t - last > cooldown:
            fired.append(int(t))
            last = t
    return np.asarray(fired, dtype=int), in_alarm


def stays_of(y: np.ndarray) -> list[np.ndarray]:
    """Row indices of each stay, each in hour order."""
    y = np.asarray(y).reshape(len(y), -1)
    order = np.lexsort((y[:, 2], y[:, 1]))
    _, starts = np.unique(y[order, 1], return_index=True)
    return np.split(order, starts[1:])


def alarm_summary(y: np.ndarray, scores: np.ndarray, threshold: float, dwell: int,
                  cooldown: int, horizon: int = 12, lead: int = 6) -> dict[str, float]:
    """The alarm policy applied to every stay; see the module docstring for each figure."""
    alarms = true_alarms = hours = alarm_hours = 0
    septic = warned = 0
    for rows in stays_of(y):
        label, hour = y[rows, 0], y[rows, 2]
        fired, in_alarm = stay_alarms(scores[rows], threshold, dwell, cooldown)
        hours += len(rows)
        alarm_hours += int(in_alarm.sum())
        alarms += len(fired)
        if label.max() < 1:
            continue
        septic += 1
        onset = hour[np.argmax(label >= 1)] + lead
        when = hour[fired] if len(fired) else np.zeros(0)
        true_alarms += int((when >= onset - horizon).sum())
        warned += int(((when >= onset - horizon) & (when <= onset)).any())
    return {"alarms_per_100h": 100 * alarms / hours if hours else math.nan,
            "hours_in_alarm": alarm_hours / hours if hours else math.nan,
            "alarm_ppv": true_alarms / alarms if alarms else math.nan,
            "septic_warned": warned / septic if septic else math.nan}


def policy_of(options: dict[str, Any] | None) -> dict[str, Any]:
    policy = {**POLICY, **(options or {})}
    unknown = sorted(set(policy) - set(POLICY))
    if unknown:
        from medfed.errors import MedFedError

        raise MedFedError(f"dataset.options.alarm: unknown key(s) {unknown}; allowed: "
                          f"{sorted(POLICY)}")
    return policy


def alarm_table(y: np.ndarray, scores: np.ndarray, options: dict[str, Any] | None = None
                ) -> dict[str, Any]:
    """The report's alarm section: the policy, one row per threshold, a per-hour PR curve."""
    from sklearn.metrics import precision_recall_curve

    policy = policy_of(options)
    y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
    scores = np.asarray(scores, dtype=np.float64)
    rows = []
    for threshold in policy["thresholds"]:
        hourly = binary_metrics(y[:, 0], scores, threshold)
        rows.append(clean({"threshold": float(threshold),
                           "utility": normalized_utility(y, scores, threshold),
                           "hour_sensitivity": hourly["sensitivity"],
                           "hour_precision": _precision(y[:, 0], scores, threshold),
                           **alarm_summary(y, scores, threshold, policy["dwell"],
                                           policy["cooldown"], policy["horizon"],
                                           policy["lead"])}))
    curve = {}
    if 0 < y[:, 0].sum() < len(y):
        precision, recall, _ = precision_recall_curve(y[:, 0], scores)
        keep = np.unique(np.linspace(0, len(precision) - 1, 200).astype(int))
        curve = {"precision": precision[keep].round(4).tolist(),
                 "recall": recall[keep].round(4).tolist()}
    return {"policy": {k: policy[k] for k in ("dwell", "cooldown", "horizon", "lead")},
            "stays": len(stays_of(y)), "hours": len(y), "rows": rows, "pr_curve": curve}


def _precision(label: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    flagged = scores >= threshold
    return float(label[flagged].mean()) if flagged.any() else math.nan


@dataclass(frozen=True)
class TimeSeriesTask(BaseTask):
    """One logit per stay-hour; class-weighted BCE; hourly and per-stay alarm metrics."""

    name: str = "timeseries"
    has_report_section: bool = True  # the alarm table and the precision-recall plot
    primary_metric: str = "auprc"
    metric_names: tuple[str, ...] = ("auroc", "auprc", "utility", *ALARM_METRICS)

    def n_outputs(self, n_classes: int) -> int:
        return 1

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        label = y[:, 0].to(logits.dtype)
        weight = torch.where(label > 0, y[:, 3].to(logits.dtype), torch.ones_like(label))
        return F.binary_cross_entropy_with_logits(logits[:, 0], label, weight=weight)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits[:, 0])

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        y = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        hourly = binary_metrics(y[:, 0], scores)
        policy = POLICY
        return {"auroc": hourly["auroc"], "auprc": hourly["auprc"],
                "utility": normalized_utility(y, np.asarray(scores), policy["threshold"]),
                **alarm_summary(y, np.asarray(scores), policy["threshold"], policy["dwell"],
                                policy["cooldown"], policy["horizon"], policy["lead"])}

    def label_summary(self, y: np.ndarray) -> dict[str, int]:
        y = np.asarray(y).reshape(len(y), -1)
        stays = stays_of(y)
        return {"stays": len(stays), "septic_stays": sum(int(y[r, 0].max() >= 1) for r in stays),
                "hours": len(y), "positive_hours": int(y[:, 0].sum())}

    def stratify(self, y: np.ndarray) -> np.ndarray | None:
        return None  # the loader splits whole stays

    def partition_labels(self, y: np.ndarray) -> np.ndarray:
        return np.asarray(y).reshape(len(y), -1)[:, 0].astype(np.int64)

    def check_train_labels(self, y: np.ndarray) -> str | None:
        y = np.asarray(y).reshape(len(y), -1)
        return None if y[:, 0].sum() >= 1 else "no positive (septic) hour in its training split"

    def report_extras(self, y: np.ndarray, scores: np.ndarray,
                      dataset_options: dict[str, Any]) -> dict[str, Any]:
        """The alarm table of the final global model on the pooled test stays."""
        return {"alarms": alarm_table(y, scores, dataset_options.get("alarm"))}

    def markdown(self, extras: dict[str, Any]) -> list[str]:
        return alarm_markdown(extras["alarms"])

    def figures(self, extras: dict[str, Any]) -> dict[str, bytes]:
        return {"precision_recall.png": plot_pr(extras["alarms"])}


def _fmt(value: Any, percent: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.1f} %" if percent else f"{value:.2f}"


def alarm_markdown(table: dict[str, Any]) -> list[str]:
    p = table["policy"]
    lines = ["", "## Alarm policy (federated model, pooled test stays)", "",
             f"{table['stays']} stays, {table['hours']} patient-hours. An alarm fires after "
             f"{p['dwell']} h at or above the threshold, then stays silent {p['cooldown']} h. "
             f"True alarm: a septic stay, no earlier than {p['horizon']} h before onset "
             f"(onset = first labelled hour + {p['lead']} h). Warned: an alarm 0-"
             f"{p['horizon']} h before onset.", "",
             "Utility: the PhysioNet/CinC 2019 challenge score of the hourly alarms (score at or "
             "above the threshold), normalized per the challenge: 1 = every septic stay alarmed "
             "12 h to 3 h around onset and no false alarm, 0 = no alarm ever, below 0 = worse "
             "than silence.", "",
             "| threshold | utility | alarms / 100 h | hours in alarm | alarm PPV | septic stays "
             "warned | hourly sensitivity | hourly precision |", "|---" * 8 + "|"]
    for r in table["rows"]:
        lines.append(f"| {r['threshold']:.2f} | {_fmt(r.get('utility'))} | "
                     f"{_fmt(r['alarms_per_100h'])} | "
                     f"{_fmt(r['hours_in_alarm'], True)} | {_fmt(r['alarm_ppv'], True)} | "
                     f"{_fmt(r['septic_warned'], True)} | {_fmt(r['hour_sensitivity'], True)} | "
                     f"{_fmt(r['hour_precision'], True)} |")
    lines += ["", "![precision-recall](precision_recall.png)", ""]
    return lines


def plot_pr(table: dict[str, Any]) -> bytes:
    """Per-hour precision-recall curve with the table's thresholds marked."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    curve = table["pr_curve"]
    if curve:
        ax.plot(curve["recall"], curve["precision"], "k-", lw=1.5, label="per hour")
    for r in table["rows"]:
        if not (r["hour_sensitivity"] is None or math.isnan(r["hour_sensitivity"])
                or r["hour_precision"] is None or math.isnan(r["hour_precision"])):
            ax.plot(r["hour_sensitivity"], r["hour_precision"], "o")
            ax.annotate(f"{r['threshold']:.2f}", (r["hour_sensitivity"], r["hour_precision"]),
                        fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set(xlabel="recall (sensitivity, per hour)", ylabel="precision (PPV, per hour)",
           xlim=(0, 1.02), ylim=(0, 1.02), title="Sepsis warning: precision-recall")
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()
