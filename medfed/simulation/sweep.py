"""``medfed simulate --sweep key=v1,v2,...``: one simulation per value, a table and a plot.

``privacy.epsilon=...,inf``: ``inf`` is the non-private reference (privacy.mode=none); any
other privacy.* value turns DP-SGD on. Each point writes its own report and ledgers in
``<out>/<key>=<value>/``; the summary goes to ``<out>/sweep.json``, ``sweep.md``, ``sweep.png``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes

ARMS = ("federated", "local_only", "centralized")


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


def markdown(key: str, rows: list[dict[str, Any]], dataset: str) -> str:
    metric = rows[0]["metric"].upper()
    arms = [a for a in ARMS if a in rows[0]]
    lines = [f"# Sweep of {key}: {dataset}", "", f"Pooled {metric} on all sites' test splits.",
             "", f"| {key} | " + " | ".join(a.replace("_", "-") for a in arms)
             + " | max site epsilon spent |", "|---" * (len(arms) + 2) + "|"]
    for r in rows:
        cells = [f"{r[a]:.4f}" if isinstance(r.get(a), float) else "—" for a in arms]
        eps = r.get("max_site_epsilon")
        lines.append(f"| {r[key]} | " + " | ".join(cells) + " | "
                     + ("—" if eps is None else f"{eps:.3f}") + " |")
    return "\n".join([*lines, "", "![sweep](sweep.png)", ""])


def plot(key: str, rows: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def x_of(v: str) -> float:
        try:
            return float(v)
        except ValueError:
            return math.nan

    xs = [x_of(r[key]) for r in rows]
    finite = [x for x in xs if math.isfinite(x)]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm in (a for a in ARMS if a in rows[0]):
        pts = [(x, r[arm]) for x, r in zip(xs, rows, strict=True)
               if math.isfinite(x) and r.get(arm) is not None]
        line, = ax.plot(*zip(*pts, strict=True), "o-", label=arm.replace("_", "-")) if pts \
            else (None,)
        ref = [r[arm] for x, r in zip(xs, rows, strict=True) if not math.isfinite(x)]
        if ref and ref[0] is not None and line is not None:
            ax.axhline(ref[0], ls="--", color=line.get_color(), alpha=0.6)
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        ax.set_xscale("log")
        ax.minorticks_off()
    if finite:
        ax.set_xticks(finite, [r[key] for x, r in zip(xs, rows, strict=True) if math.isfinite(x)])
    ax.set(xlabel=key, ylabel=rows[0]["metric"].upper(),
           title=f"Utility vs {key} (dashed: non-private)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def run_sweep(config: Path, out: Path, overrides: list[str], sweep: str,
              run_point: Callable[[Any, Path], dict[str, Any]]) -> list[dict[str, Any]]:
    """Run every point (``run_point(cfg, point_out) -> report``); write the summary."""
    from medfed.config import load_config

    key, values = parse_sweep(sweep)
    base = load_config(config, overrides)
    configs = []
    for value in values:  # validate every point before running any
        cfg = load_config(config, [*overrides, *point_overrides(key, value,
                                                                base.privacy.mode)])
        point_out = out / f"{key}={value}"
        if cfg.privacy.mode == "dp-sgd" and cfg.privacy.ledger_dir is None:
            ledgers = point_out / "privacy"
            if any(ledgers.glob("*.json")):
                raise MedFedError(f"{ledgers}: ledgers of an earlier sweep are there (their "
                                  "epsilon is spent); sweep into a new --out")
            cfg.privacy.ledger_dir = str(ledgers)
        configs.append((value, cfg, point_out))
    rows = [point_row(key, value, run_point(cfg, point_out)) for value, cfg, point_out
            in configs]
    atomic_write_bytes(out / "sweep.json", json.dumps(
        {"key": key, "config": str(config), "overrides": overrides, "rows": rows},
        indent=2).encode() + b"\n")
    atomic_write_bytes(out / "sweep.md", markdown(key, rows, base.dataset.name).encode())
    atomic_write_bytes(out / "sweep.png", plot(key, rows))
    return rows
