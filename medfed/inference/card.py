"""The model card's contract and its reader-facing sections.

``preprocessing_section``: everything needed to make new data look like the training data.
``card_sections``: intended use, training sites and dates, per-site metrics with bootstrap
CIs, calibration, the operating threshold, privacy per site and known limits.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

from medfed.config import ExperimentConfig
from medfed.datasets.base import DataInfo, Site, TableDataset
from medfed.federation.secagg import describe
from medfed.inference.bundle import default_threshold
from medfed.inference.calibration import calibration_curve
from medfed.privacy.report import card_lines, card_section
from medfed.privacy.units import ROW_LEVEL
from medfed.tasks import get_task

INTENDED_USE = {
    "binary": "decision support: a risk score for one finding, to be read by a clinician",
    "multiclass": "decision support: class probabilities, to be read by a clinician",
    "segmentation": "contouring support: a draft mask a clinician reviews and corrects",
    "survival": "research and decision support: a relative risk ranking (Cox), not a "
                "survival time",
    "timeseries": "early warning: an hourly score and alarm that prompts a bedside review",
}
IMAGING_KEYS = ("spatial_size", "window", "spacing", "as_slices", "slice_axis", "series_uid",
                "volume_index", "task")
BOOTSTRAP = 200


def preprocessing_section(cfg: ExperimentConfig, info: DataInfo,
                          scaling: tuple[np.ndarray, np.ndarray] | None,
                          data: TableDataset | None, modality: str | None = None
                          ) -> dict[str, Any]:
    """What `medfed predict` applies to new data: the contract between training and use."""
    options = dict(cfg.dataset.options)
    section: dict[str, Any] = {
        "dataset": cfg.dataset.name, "options": options, "task": info.task,
        "input_shape": list(info.input_shape), "n_classes": info.n_classes,
        "scaling": None if scaling is None else {"mean": np.asarray(scaling[0]).tolist(),
                                                 "std": np.asarray(scaling[1]).tolist()},
        "feature_names": list(data.feature_names) if data is not None else None,
        "class_names": list(data.class_names) if data is not None else None,
        "threshold": default_threshold(info.task),
    }
    if len(info.input_shape) >= 3:
        section["imaging"] = {"channels": int(info.input_shape[0]), "modality": modality,
                              **{k: options.get(k) for k in IMAGING_KEYS}}
    if info.task == "timeseries":
        section["alarm"] = options.get("alarm") or {}
    return section


def primary_value(task_name: str, y: np.ndarray, scores: np.ndarray) -> float | None:
    """The task's primary metric, computed alone (bootstraps call it hundreds of times)."""
    from scipy.stats import rankdata
    from sklearn.metrics import average_precision_score

    if task_name in ("binary", "timeseries"):
        labels = np.asarray(y).reshape(len(y), -1)[:, 0].astype(int)
        if len(np.unique(labels)) < 2:
            return None
        if task_name == "binary":  # Mann-Whitney form of the AUROC (ties count 1/2)
            ranks = rankdata(scores)
            n_pos = int(labels.sum())
            n_neg = len(labels) - n_pos
            return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
        return float(average_precision_score(labels, scores))
    value = get_task(task_name).metrics(y, scores).get(get_task(task_name).primary_metric)
    return None if value is None or value != value else float(value)


def bootstrap_ci(task_name: str, y: np.ndarray, scores: np.ndarray, metric: str | None = None,
                 seed: int = 0) -> list[float] | None:
    """95 % percentile bootstrap CI of the task's primary metric (None when undefined).

    Rows are resampled, or whole ICU stays for time series (hours of a stay are not
    independent)."""
    rng = np.random.default_rng(seed)
    y, scores = np.asarray(y), np.asarray(scores)
    units = None
    if task_name == "timeseries":
        from medfed.tasks.timeseries import stays_of

        units = stays_of(y)
    values = []
    for _ in range(BOOTSTRAP):
        if units is None:
            rows = rng.integers(0, len(y), len(y))
        else:
            rows = np.concatenate([units[k] for k in rng.integers(0, len(units), len(units))])
        value = primary_value(task_name, y[rows], scores[rows])
        if value is not None:
            values.append(value)
    if len(values) < BOOTSTRAP // 2:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def site_metrics(task_name: str, sites: list[Site], scores: dict[str, np.ndarray]
                 ) -> list[dict[str, Any]]:
    """Each site's test metrics and a 95 % bootstrap CI of the primary metric."""
    task = get_task(task_name)
    rows = []
    for site in sites:
        s = scores[site.name]
        metrics = {k: (None if v != v else float(v))
                   for k, v in task.metrics(site.y_test, s).items()}
        ci = None if task_name == "segmentation" else bootstrap_ci(
            task_name, site.y_test, s, task.primary_metric)
        rows.append({"site": site.name, "n_train": site.n_train, "n_test": site.n_test,
                     "metrics": metrics, "primary_metric": task.primary_metric,
                     "ci95": ci, "single_class_test": _single_class(task_name, site.y_test)})
    return rows


def _single_class(task_name: str, y: np.ndarray) -> bool:
    if task_name in ("binary", "multiclass"):
        return len(np.unique(y)) < 2
    if task_name == "timeseries":
        return len(np.unique(np.asarray(y)[:, 0])) < 2
    return False


def positive_scores(task_name: str, y: np.ndarray, scores: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, P(positive)) to calibrate, for binary-like tasks; None otherwise."""
    if task_name == "binary":
        return np.asarray(y).astype(int), np.asarray(scores, float)
    if task_name == "timeseries":
        return np.asarray(y)[:, 0].astype(int), np.asarray(scores, float)
    if task_name == "multiclass":  # top-class confidence vs being right
        proba = np.asarray(scores, float)
        return (proba.argmax(1) == np.asarray(y)).astype(int), proba.max(1)
    return None


def card_sections(cfg: ExperimentConfig, info: DataInfo, sites: list[Site],
                  scores: dict[str, np.ndarray], privacy: dict[str, Any] | None,
                  history: list[dict[str, Any]], trained_at: str | None = None
                  ) -> dict[str, Any]:
    """Intended use, sites and dates, per-site metrics with CIs, calibration, threshold,
    privacy per site and known limits; ``scores``: the final model on each site's test split."""
    per_site = site_metrics(info.task, sites, scores)
    pooled = None
    if sites:
        pooled = positive_scores(info.task, np.concatenate([s.y_test for s in sites]),
                                 np.concatenate([scores[s.name] for s in sites]))
    calibration = None if pooled is None else calibration_curve(*pooled)
    return {
        "intended_use": INTENDED_USE.get(info.task, ""),
        "training": {"sites": [s.name for s in sites], "rounds": cfg.rounds,
                     "date": trained_at or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                     "secure_aggregation": describe(cfg.strategy.model_dump())},
        "per_site_metrics": per_site,
        "metrics_cover": "each listed site's own test split (rows never used in training)",
        "calibration": calibration,
        "threshold": default_threshold(info.task),
        "privacy": card_section(cfg, privacy),
        "privacy_per_site": privacy_per_site(cfg, privacy, [s.name for s in sites]),
        "known_limits": known_limits(per_site, history),
    }


def privacy_per_site(cfg: ExperimentConfig, privacy: dict[str, Any] | None,
                     names: list[str]) -> dict[str, Any]:
    """Each site's guarantee, named by its unit (patient, stay or row under DP-SGD)."""
    mode = cfg.privacy.mode
    if mode == "dp-sgd" and privacy and privacy.get("per_site"):
        level = privacy.get("level", ROW_LEVEL)
        return {n: {"mode": mode, "unit": level,
                    "epsilon": privacy["per_site"].get(n, {}).get("epsilon"),
                    "delta": privacy["per_site"].get(n, {}).get("delta")} for n in names}
    if mode == "central" and privacy:
        return {n: {"mode": mode, "unit": privacy.get("level", "site"),
                    "epsilon": privacy.get("epsilon"), "delta": privacy.get("delta")}
                for n in names}
    return {n: {"mode": mode, "guarantee": "none beyond the data staying on site"}
            for n in names}


def known_limits(per_site: list[dict[str, Any]], history: list[dict[str, Any]]) -> list[str]:
    limits = [f"site {r['site']}: single-class test split, its {r['primary_metric']} is "
              "undefined" for r in per_site if r["single_class_test"]]
    refused = sorted({node for h in history for node in (h.get("sites_refused") or {})})
    if refused:
        limits.append(f"node(s) {', '.join(refused)} stopped training before the last round "
                      "(privacy budget spent)")
    trained = [h.get("sites_trained") for h in history if h.get("sites_trained") is not None]
    if trained and min(trained) < max(trained):
        limits.append(f"sites per round varied from {min(trained)} to {max(trained)} "
                      "(dropouts)")
    limits.append("validated only on the sites listed; check a new hospital with "
                  "`medfed validate` before use")
    return limits


def card_markdown_lines(card: dict[str, Any]) -> list[str]:
    """model_card.md lines of the sections above."""
    lines = ["", "## Intended use", "", card.get("intended_use") or "—", "",
             "## Training", "", f"- sites: {', '.join(card['training']['sites'])}",
             f"- trained: {card['training']['date']} ({card['training']['rounds']} rounds)",
             f"- secure aggregation: {card['training'].get('secure_aggregation', 'none')}",
             f"- operating threshold: {card.get('threshold')}", "",
             "## Per-site metrics (" + card["metrics_cover"] + ")", "",
             "| site | test rows | primary metric | 95 % CI |", "|---|---|---|---|"]
    for row in card["per_site_metrics"]:
        value = row["metrics"].get(row["primary_metric"])
        ci = row["ci95"]
        lines.append(f"| {row['site']} | {row['n_test']} | {row['primary_metric']} "
                     f"{'—' if value is None else f'{value:.3f}'} | "
                     f"{'—' if ci is None else f'{ci[0]:.3f}–{ci[1]:.3f}'} |")
    if card.get("calibration"):
        lines += ["", f"Calibration (pooled test rows): ECE {card['calibration']['ece']:.3f} "
                      f"over {card['calibration']['bins']} bins."]
    if card.get("privacy"):
        lines += ["", "## Privacy", "", *card_lines(card["privacy"])]
    lines += ["", "## Privacy per site", ""]
    lines += [f"- {site}: {', '.join(f'{k} {v}' for k, v in entry.items())}"
              for site, entry in card["privacy_per_site"].items()]
    lines += ["", "## Known limits", "", *[f"- {limit}" for limit in card["known_limits"]]]
    return lines


def deployment_sections(cfg: ExperimentConfig, task_name: str, sites: list[dict[str, Any]],
                        history: list[dict[str, Any]], trained_at: str) -> dict[str, Any]:
    """The card sections of a real federation, where only the sites saw their test rows:
    their reported metrics (no CI: the coordinator holds no per-row scores)."""
    primary = get_task(task_name).primary_metric
    per_site = [{"site": s["site"], "n_train": s.get("n_train"), "n_test": s.get("n_test"),
                 "metrics": s.get("metrics") or {}, "primary_metric": primary, "ci95": None,
                 "single_class_test": (s.get("metrics") or {}).get(primary, 0) is None}
                for s in sites]
    return {
        "intended_use": INTENDED_USE.get(task_name, ""),
        "training": {"sites": [s["site"] for s in sites], "rounds": cfg.rounds,
                     "date": trained_at, "secure_aggregation": describe(cfg.strategy.model_dump())},
        "per_site_metrics": per_site,
        "metrics_cover": "each site's own test split, evaluated at the site (no CI: the "
                         "coordinator sees no per-patient scores)",
        "calibration": None,
        "threshold": default_threshold(task_name),
        "privacy": card_section(cfg, None),
        "privacy_per_site": {s["site"]: s.get("privacy") or {"mode": cfg.privacy.mode}
                             for s in sites},
        "known_limits": known_limits(per_site, history),
    }
