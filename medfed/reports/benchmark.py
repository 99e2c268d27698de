"""The summary of ``medfed benchmark``: statistics over seeds, tables, plots, MLflow runs.

A *row* is one arm of one grid combination (e.g. ``fedprox · ditto`` / ``ditto``) with one
value per seed. For each metric it holds the value pooled over all sites' test splits, the mean
over sites of the per-site values (FLamby's "mean per-client", the sites where the metric is
defined) and each site's value. Each is summarised as mean, sample std (ddof 1) and a 95 %
confidence interval of the mean from the t-distribution (n - 1 degrees of freedom). The paired
comparison takes each row's difference to the FedAvg federated row seed by seed and asks
whether its 95 % CI excludes 0 (equivalently, a paired t-test at 5 %).
"""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from medfed.io import atomic_write_bytes

BASELINE_ARMS = ("local_only", "centralized")  # they do not depend on the strategy
SCOPES = ("site_mean", "pooled")
REFERENCE_VALUES = ("fedavg", "none")  # the reference cell's value for each grid key


def summarize(values: list[float | None]) -> dict[str, Any]:
    """n, mean, std (ddof 1) and the t-based 95 % CI of the mean over the defined values."""
    from scipy import stats

    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    out: dict[str, Any] = {"n": int(x.size), "mean": None, "std": None, "ci_low": None,
                           "ci_high": None}
    if x.size == 0:
        return out
    out["mean"] = float(x.mean())
    if x.size > 1:
        std = float(x.std(ddof=1))
        half = float(stats.t.ppf(0.975, x.size - 1)) * std / math.sqrt(x.size)
        out |= {"std": std, "ci_low": out["mean"] - half, "ci_high": out["mean"] + half}
    return out


def number(value: Any) -> float | None:
    """A metric value, or None where a report holds a note (e.g. 'single class') or NaN."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def site_mean(per_site: dict[str, dict[str, Any]], metric: str) -> float | None:
    """Mean over sites of one metric (sites where it is undefined, e.g. one class, left out)."""
    values = [number(m.get(metric)) for m in per_site.values()]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _arm_order(arms: list[str]) -> list[str]:
    middle = [a for a in arms if a != "federated" and a not in BASELINE_ARMS]
    return [a for a in ("federated", *middle, *BASELINE_ARMS) if a in arms]


def collect_rows(records: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """One row per (grid combination, arm): per-seed values of every metric and scope."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        report = record["report"]
        label = " · ".join(record["group"].values()) or "(no grid)"
        for arm in _arm_order(list(report["metrics"])):
            row = rows.setdefault((label, arm), {"label": label, "group": record["group"],
                                                 "arm": arm, "seeds": [], "values": {}})
            row["seeds"].append(record["seed"])
            per_site = report["metrics"][arm]["per_site"]
            for metric in metrics:
                values = row["values"].setdefault(metric, {"site_mean": [], "pooled": [],
                                                           "per_site": {}})
                values["site_mean"].append(site_mean(per_site, metric))
                values["pooled"].append(number(report["metrics"][arm]["pooled"].get(metric)))
                for site, m in per_site.items():
                    values["per_site"].setdefault(site, []).append(number(m.get(metric)))
    return _merge_baselines(list(rows.values()))


def _merge_baselines(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A baseline arm with the same values in every grid combination (or trained in one only:
    ``benchmark.baselines: once``) is shown once, as ``any``."""
    kept = []
    combinations = len({r["label"] for r in rows})
    for arm in BASELINE_ARMS:
        same = [r for r in rows if r["arm"] == arm]
        if combinations > 1 and same and all(r["values"] == same[0]["values"] and r["seeds"] ==
                                             same[0]["seeds"] for r in same):
            kept.append({**same[0], "label": "any", "group": {}})
        else:
            kept.extend(same)
    return [r for r in rows if r["arm"] not in BASELINE_ARMS] + kept


def row_stats(row: dict[str, Any]) -> dict[str, Any]:
    """Every metric's summary: site mean, pooled and each site."""
    return {metric: {"site_mean": summarize(v["site_mean"]), "pooled": summarize(v["pooled"]),
                     "per_site": {s: summarize(x) for s, x in v["per_site"].items()}}
            for metric, v in row["values"].items()}


def reference_row(rows: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any] | None:
    """FedAvg's federated row for ``row``: its own grid values, with strategy ``fedavg`` and
    ``personalize: none`` where the grid has them; None when the grid has no such row."""
    target = {k: next((r for r in REFERENCE_VALUES if any(
        x["group"].get(k) == r for x in rows)), v) for k, v in row["group"].items()}
    if not row["group"]:  # a merged baseline row: the first combination's FedAvg
        target = next((r["group"] for r in rows if r["arm"] == "federated"), {})
        target = {k: next((r for r in REFERENCE_VALUES if any(
            x["group"].get(k) == r for x in rows)), v) for k, v in target.items()}
    return next((r for r in rows if r["arm"] == "federated" and r["group"] == target), None)


def paired(row: dict[str, Any], ref: dict[str, Any], metric: str, scope: str) -> dict[str, Any]:
    """row - reference over the seeds both have: mean difference, its 95 % CI, paired t-test."""
    from scipy import stats

    mine = dict(zip(row["seeds"], row["values"][metric][scope], strict=True))
    theirs = dict(zip(ref["seeds"], ref["values"][metric][scope], strict=True))
    pairs = [(mine[s], theirs[s]) for s in row["seeds"] if s in theirs
             and None not in (mine[s], theirs[s])]
    diff = summarize([a - b for a, b in pairs])
    out = {"label": row["label"], "arm": row["arm"], "metric": metric, "scope": scope,
           "reference": f"{ref['label']} / federated", **diff, "p_value": None,
           "exceeds_noise": False}
    if diff["std"] is None:
        return out
    if diff["std"] == 0:  # the same difference at every seed: no noise to exceed
        out["exceeds_noise"] = diff["mean"] != 0
        return out
    a, b = zip(*pairs, strict=True)
    out["p_value"] = float(stats.ttest_rel(a, b).pvalue)
    out["exceeds_noise"] = bool(diff["ci_low"] > 0 or diff["ci_high"] < 0)
    return out


def comparisons(rows: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """Every row against its FedAvg reference, for each metric, on site mean and pooled."""
    out = []
    for row in rows:
        ref = reference_row(rows, row)
        if ref is None or ref is row:
            continue
        out.extend(paired(row, ref, m, scope) for m in metrics for scope in SCOPES)
    return out


def build_summary(records: list[dict[str, Any]], grid: dict[str, list[str]], seeds: list[int],
                  config: str) -> dict[str, Any]:
    """benchmark.json: rows with their per-seed values and statistics, the paired tests."""
    first = records[0]["report"]
    primary = first["primary_metric"]
    pooled = first["metrics"]["federated"]["pooled"]
    metrics = [primary, *(m for m, v in pooled.items() if m != primary and number(v) is not None)]
    rows = collect_rows(records, metrics)
    for row in rows:
        row["stats"] = row_stats(row)
    return {"config": config, "dataset": first["dataset"], "grid": grid, "seeds": seeds,
            "primary_metric": primary, "metrics": metrics,
            "sites": list(first["metrics"]["federated"]["per_site"]), "rows": rows,
            "paired": comparisons(rows, metrics), "cells": len(records)}


# --- rendering ----------------------------------------------------------------------------


def cell_text(s: dict[str, Any], ci: bool = True) -> str:
    """``0.812 ± 0.010 (0.800–0.824)``; ``—`` when undefined; no std with one seed."""
    if s["mean"] is None:
        return "—"
    if s["std"] is None:
        return f"{s['mean']:.3f}"
    text = f"{s['mean']:.3f} ± {s['std']:.3f}"
    return f"{text} ({s['ci_low']:.3f}–{s['ci_high']:.3f})" if ci else text


def _metric_table(summary: dict[str, Any], metric: str) -> list[str]:
    sites = summary["sites"]
    keys = " · ".join(summary["grid"]) or "grid"
    lines = [f"| {keys} | arm | site mean | pooled | " + " | ".join(sites) + " |",
             "|---" * (4 + len(sites)) + "|"]
    for row in summary["rows"]:
        s = row["stats"][metric]
        cells = [cell_text(s["site_mean"]), cell_text(s["pooled"]),
                 *(cell_text(s["per_site"][x], ci=False) if x in s["per_site"] else "—"
                   for x in sites)]
        lines.append(f"| {row['label']} | {row['arm'].replace('_', '-')} | "
                     + " | ".join(cells) + " |")
    return lines


def _paired_table(summary: dict[str, Any]) -> list[str]:
    lines = ["| row | arm | metric | scope | Δ mean | 95 % CI of Δ | p (paired t) | beyond "
             "seed noise |", "|---" * 8 + "|"]
    for p in summary["paired"]:
        ci = "—" if p["ci_low"] is None else f"{p['ci_low']:+.3f} to {p['ci_high']:+.3f}"
        mean = "—" if p["mean"] is None else f"{p['mean']:+.3f}"
        pval = "—" if p["p_value"] is None else f"{p['p_value']:.3g}"
        lines.append(f"| {p['label']} | {p['arm'].replace('_', '-')} | {p['metric']} | "
                     f"{p['scope'].replace('_', ' ')} | {mean} | {ci} | {pval} | "
                     f"{'**yes**' if p['exceeds_noise'] else 'no'} |")
    return lines


def markdown(summary: dict[str, Any]) -> str:
    """benchmark.md: one table per metric, the paired comparison, the plots."""
    n = len(summary["seeds"])
    lines = [f"# Benchmark: {summary['dataset']} ({summary['config']})", "",
             f"{summary['cells']} simulations: grid {summary['grid'] or '(none)'} × {n} seeds "
             f"{summary['seeds']}. Cells: mean ± std over seeds (95 % CI of the mean, "
             f"t-distribution, {n - 1} degrees of freedom); per site: mean ± std. *Site mean*: "
             "the mean over sites of each site's test metric (FLamby's per-client mean); "
             "*pooled*: all sites' test splits together. Row `any`: a baseline that is the "
             "same in every grid combination.", ""]
    for metric in summary["metrics"]:
        lines += [f"## {metric}", "", *_metric_table(summary, metric), "",
                  f"![{metric}](benchmark-{metric}.png)", ""]
    lines += ["## Paired comparison against FedAvg", "",
              "Δ = row − FedAvg's federated arm with the same other grid values, seed by seed "
              "(paired). *Beyond seed noise*: the 95 % CI of Δ excludes 0.", "",
              *_paired_table(summary), ""]
    return "\n".join(lines)


def plot(summary: dict[str, Any], metric: str) -> bytes:
    """benchmark-<metric>.png: per row, each site's mean over seeds (points) and the site
    mean's mean with its 95 % CI (black bar); pooled as a hollow square."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, sites = summary["rows"], summary["sites"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(rows) + 2), 4.2))
    colors = plt.get_cmap("tab10" if len(sites) <= 10 else "viridis")
    for i, row in enumerate(rows):
        s = row["stats"][metric]
        for j, site in enumerate(sites):
            mean = s["per_site"].get(site, {}).get("mean")
            if mean is not None:
                ax.plot(i + 0.25 * (j / max(1, len(sites) - 1) - 0.5), mean, "o", ms=4,
                        alpha=0.7, color=colors(j % 10 if len(sites) <= 10 else
                                                 j / max(1, len(sites) - 1)),
                        label=site if i == 0 and len(sites) <= 10 else None)
        _mean_and_ci(ax, i, s["site_mean"], "D", "black", "site mean (95 % CI)" if i == 0
                     else None)
        _mean_and_ci(ax, i + 0.3, s["pooled"], "s", "dimgray", "pooled" if i == 0 else None,
                     hollow=True)
    ax.set_xticks(range(len(rows)), [f"{r['label']}\n{r['arm'].replace('_', '-')}"
                                     for r in rows], rotation=30, ha="right", fontsize=8)
    ax.set(ylabel=metric, title=f"{summary['dataset']}: {metric} over "
           f"{len(summary['seeds'])} seeds")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the points
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _mean_and_ci(ax: Any, x: float, s: dict[str, Any], marker: str, color: str,
                 label: str | None, hollow: bool = False) -> None:
    if s["mean"] is None:
        return
    err = None if s["ci_low"] is None else [[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]]
    ax.errorbar(x, s["mean"], yerr=err, fmt=marker, color=color, capsize=4, ms=6,
                mfc="none" if hollow else color, label=label)


def write_benchmark(out: Path, summary: dict[str, Any]) -> list[Path]:
    """benchmark.json, benchmark.md and a PNG per metric, each written atomically."""
    files = {"benchmark.json": json.dumps(summary, indent=2, default=float).encode() + b"\n",
             "benchmark.md": markdown(summary).encode(),
             **{f"benchmark-{m}.png": plot(summary, m) for m in summary["metrics"]}}
    for name, payload in files.items():
        atomic_write_bytes(out / name, payload)
    return [out / name for name in files]


# --- MLflow: one parent run, a child run per cell -------------------------------------------


def metric_key(*parts: str) -> str:
    """An MLflow metric name: the characters MLflow allows, parts joined by ``/``."""
    return "/".join(re.sub(r"[^A-Za-z0-9_.\- ]+", "_", p).strip() for p in parts)


def log_benchmark(summary: dict[str, Any], records: list[dict[str, Any]], out: Path,
                  files: list[Path], experiment: str, run_name: str) -> dict[str, Any]:
    """Parent run (summary statistics, files as artifacts) with one child run per cell
    (per-round and per-site metrics, its cell.json). Returns the run ids."""
    from medfed.reports.tracking import Tracker

    parent = Tracker(experiment, run_name, {"config": summary["config"], "grid": summary["grid"],
                                            "seeds": summary["seeds"], "cells": len(records)})
    parent.client.set_tag(parent.run_id, "medfed.kind", "benchmark")
    _log_many(parent, {metric_key(row["label"], row["arm"], metric, f"{scope}_{k}"):
                       s[scope][k] for row in summary["rows"]
                       for metric, s in row["stats"].items() for scope in SCOPES
                       for k in ("mean", "std")})
    for name in files:
        parent.client.log_artifact(parent.run_id, str(name))
    children = [_log_cell(record, out, experiment, parent.run_id) for record in records]
    parent.finish()
    return {"tracking_uri": parent.uri, "run_id": parent.run_id, "children": children}


def _log_cell(record: dict[str, Any], out: Path, experiment: str, parent_id: str) -> str:
    from medfed.reports.tracking import Tracker

    report = record["report"]
    child = Tracker(experiment, record["name"], {"grid": record["group"],
                                                 "seed": record["seed"], **report["config"]})
    child.client.set_tag(child.run_id, "mlflow.parentRunId", parent_id)
    primary = report["primary_metric"]
    for h in report["history"]:
        per_site = h.get("per_site") or {}
        child.log_metrics({f"pooled_{k}": number(v) for k, v in (h.get("pooled") or {}).items()}
                          | {"train_loss": h.get("train_loss")}
                          | ({metric_key("round", s, primary): number(m.get(primary))
                              for s, m in per_site.items()} if len(per_site) <= 50 else {}),
                          step=h["round"])
    _log_many(child, {metric_key(arm, where, k): number(v)
                      for arm, m in report["metrics"].items()
                      for where, values in {"pooled": m["pooled"], **m["per_site"]}.items()
                      for k, v in values.items()})
    child.client.log_artifact(child.run_id, str(out / "cells" / record["name"] / "cell.json"))
    child.finish()
    return child.run_id


def _log_many(tracker: Any, metrics: dict[str, float | None], size: int = 900) -> None:
    """MLflow takes at most 1,000 metrics per batch."""
    items = list(metrics.items())
    for start in range(0, len(items), size):
        tracker.log_metrics(dict(items[start:start + size]))
