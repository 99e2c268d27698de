"""``medfed simulate --sweep key=v1,v2,...``: one simulation per value, a table and a plot.

``privacy.epsilon=...,inf``: ``inf`` is the non-private reference (privacy.mode=none); any
other privacy.* value turns DP-SGD on. Each point writes its own report and ledgers in
``<out>/<key>=<value>/``; the summary goes to ``<out>/sweep.json``, ``sweep.md``, ``sweep.png``
(rendered by ``medfed.reports.sweep``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfed.config import ExperimentConfig, load_config
from medfed.errors import MedFedError
from medfed.reports.common import ARMS
from medfed.reports.sweep import write_sweep

PointFn = Callable[[ExperimentConfig, Path], dict[str, Any]]  # (config, point folder) -> report


def parse_sweep(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not items:
        raise MedFedError(f"--sweep {text!r}: expected KEY=V1,V2,..., e.g. "
                          "--sweep privacy.epsilon=0.5,1,2,4,8,inf")
    return key.strip(), items


def point_overrides(key: str, value: str, base_mode: str) -> list[str]:
    """Overrides for one sweep point (epsilon=inf: the non-private run)."""
    if key == "privacy.epsilon" and value.lower() in ("inf", "infinity", "none"):
        return ["privacy.mode=none"]
    extra = ["privacy.mode=dp-sgd"] if key.startswith("privacy.") and base_mode == "none" else []
    return [*extra, f"{key}={value}"]


def point_row(key: str, value: str, report: dict[str, Any]) -> dict[str, Any]:
    """One point's summary: pooled primary metric per arm, largest epsilon, sites exhausted."""
    metric = report["primary_metric"]
    row: dict[str, Any] = {key: value, "metric": metric}
    for arm in ARMS:
        if arm in report["metrics"]:
            row[arm] = report["metrics"][arm]["pooled"].get(metric)
    privacy = report.get("privacy") or {}
    eps = [e["epsilon"] for e in (privacy.get("per_site") or {}).values()]
    row["max_site_epsilon"] = max(eps) if eps else None
    row["sites_exhausted_early"] = sum(e["rounds_refused"] > 0 for e in
                                       (privacy.get("per_site") or {}).values())
    return row


def point_configs(config: Path, overrides: list[str], key: str, values: list[str], out: Path,
                  base_mode: str) -> list[tuple[str, ExperimentConfig, Path]]:
    """(value, config, folder) of every point, all validated before any runs."""
    points = []
    for value in values:
        cfg = load_config(config, [*overrides, *point_overrides(key, value, base_mode)])
        point_out = out / f"{key}={value}"
        if cfg.privacy.mode == "dp-sgd" and cfg.privacy.ledger_dir is None:
            ledgers = point_out / "privacy"
            if any(ledgers.glob("*.json")):
                raise MedFedError(f"{ledgers}: ledgers of an earlier sweep are there (their "
                                  "epsilon is spent); sweep into a new --out")
            cfg.privacy.ledger_dir = str(ledgers)
        points.append((value, cfg, point_out))
    return points


def run_sweep(config: Path, out: Path, overrides: list[str], sweep: str,
              run_point: PointFn) -> list[dict[str, Any]]:
    """Run every point (``run_point(cfg, point_out) -> report``); write the summary."""
    key, values = parse_sweep(sweep)
    base = load_config(config, overrides)
    points = point_configs(config, overrides, key, values, out, base.privacy.mode)
    rows = [point_row(key, value, run_point(cfg, point_out)) for value, cfg, point_out in points]
    write_sweep(out, key, config, overrides, rows, base.dataset.name)
    return rows
