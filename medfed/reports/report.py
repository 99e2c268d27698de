"""The simulation report: ``report.json`` (stable keys), ``report.md`` and plots."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from medfed import __version__
from medfed.config import ExperimentConfig
from medfed.datasets.base import DataInfo, Site
from medfed.federation import secagg
from medfed.io import atomic_write_bytes
from medfed.privacy.report import markdown_lines as privacy_lines
from medfed.reports.caveats import caveat_lines, cell_note
from medfed.reports.common import ARMS, fmt
from medfed.reports.imaging import imaging_markdown
from medfed.reports.multimodal import multimodal_markdown
from medfed.reports.stats import harmonisation_lines
from medfed.reports.task import extra_figures, extra_markdown
from medfed.tasks import get_task

SCALING_NOTE = ("federated: each site sent its row count and per-feature sums and sums of "
                "squares of its training split; the server combined them into one mean and "
                "standard deviation (no test rows, no raw rows). Local-only models use their "
                "site's own statistics.")


def build_report(cfg: ExperimentConfig, info: DataInfo, sites: list[Site],
                 metrics: dict[str, Any], history: list[dict[str, Any]],
                 timing: dict[str, float], description: str = "") -> dict[str, Any]:
    return {
        "medfed_version": __version__,
        "dataset": cfg.dataset.name,
        "description": description,
        "task": info.task,
        "primary_metric": get_task(info.task).primary_metric,
        "config": json.loads(cfg.to_json()),
        "sites": [{"name": s.name, "n_train": s.n_train, "n_test": s.n_test,
                   "label_counts": s.label_counts()} for s in sites],
        "feature_scaling": SCALING_NOTE if info.standardize else "none",
        "metrics": metrics,
        "history": [{"round": h["round"], "train_loss": h.get("train_loss"),
                     "pooled": h.get("pooled"), "per_site": h.get("per_site"),
                     "federated_eval": h.get("federated_eval"),
                     **({"sites_refused": h["sites_refused"]} if h.get("sites_refused") else {}),
                     **({k: h[k] for k in ("secure_aggregation",) if k in h})}
                    for h in history],
        "privacy": None,
        "timing": timing,
    }


def comparison_rows(report: dict[str, Any], metric: str) -> list[list[str]]:
    """Rows of (site, federated, local-only, centralized) for one metric, pooled first."""
    arms = [a for a in ARMS if a in report["metrics"]]
    rows = [["pooled", *[fmt(report["metrics"][a]["pooled"].get(metric)) for a in arms]]]
    for site in report["sites"]:
        rows.append([site["name"], *[fmt(report["metrics"][a]["per_site"][site["name"]]
                                         .get(metric)) + cell_note(report, a, site["name"])
                                     for a in arms]])
    return rows


def personal_lines(cfg: dict[str, Any]) -> list[str]:
    """The personalised arms and the feature shift of a run, one line each (if any)."""
    lines, options = [], cfg.get("personalization") or {}
    if cfg.get("personalize"):
        tune = "{epochs} epoch(s)" if (options.get("finetune") or {}).get("epochs") else \
            "{steps} steps"
        details = {"finetune": f"final global model + {tune} on each site",
                   "ditto": "personal model, lam {lam}, {local_epochs} epoch(s) a round",
                   "fedbn": "normalisation layers stay on each site",
                   "perhead": "classification head stays on each site"}
        arms = [f"**{a}** ({details[a].format(**options.get(a, {}))})"
                for a in cfg["personalize"]]
        lines.append("- personalised arms: " + "; ".join(arms))
    if (cfg.get("partition") or {}).get("shift"):
        lines.append("- feature shift: each site's own acquisition effect (gamma, contrast, "
                     "blur, noise, bias field), a fixed draw per site (`partition.shift`)")
    return lines


def _summary_lines(report: dict[str, Any]) -> list[str]:
    """Title, description and the run's settings, privacy and timing."""
    cfg = report["config"]
    return [f"# MedFed simulation: {report['dataset']}", "",
            f"{report['description']}", "",
            f"- strategy **{cfg['strategy']['name']}**, model **{cfg['model']['name']}**, "
            f"{cfg['rounds']} rounds x {cfg['train']['local_epochs']} local epoch(s), "
            f"partition **{cfg['partition']['scheme']}** ({len(report['sites'])} sites), "
            f"seed {cfg['seed']}",
            f"- feature scaling: {report['feature_scaling']}",
            f"- secure aggregation: {secagg.describe(cfg['strategy'])}",
            *privacy_lines(report.get("privacy")),
            *harmonisation_lines(report.get("harmonisation")),  # `medfed stats` flags
            *personal_lines(cfg),
            f"- time: {report['timing']['total_s']:.1f} s in all, federated rounds "
            f"{report['timing']['federated_s']:.1f} s", ""]


def _metric_tables(report: dict[str, Any]) -> list[str]:
    """The primary metric per site and arm, then every metric of each arm, pooled."""
    metric = report["primary_metric"]
    names = get_task(report["task"]).metric_names
    arms = [a for a in ARMS if a in report["metrics"]]
    lines = [f"## {metric.upper()} on each site's test split", "",
             "| site | " + " | ".join(a.replace("_", "-") for a in arms) + " |",
             "|---" * (len(arms) + 1) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in comparison_rows(report, metric)]
    lines += ["", "## All metrics, pooled test set", "",
              "| arm | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for arm in arms:
        pooled = report["metrics"][arm]["pooled"]
        lines.append(f"| {arm} | " + " | ".join(fmt(pooled.get(m)) for m in names) + " |")
    return lines


def _site_lines(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Sites", "", "| site | train | test | train labels |", "|---|---|---|---|"]
    for s in report["sites"]:
        lines.append(f"| {s['name']} | {s['n_train']} | {s['n_test']} | "
                     f"{s['label_counts']['train']} |")
    return [*lines, *_small_cell_lines(report), "",
            "![metric per round](metric_per_round.png)", "",
            "![federated vs local vs centralized](comparison.png)", ""]


def _small_cell_lines(report: dict[str, Any]) -> list[str]:
    """Which feature sums each site withheld from the scaling (fewer than k patients in a
    cell) or sent with noise (privacy.mode set)."""
    small = report.get("small_cells") or {}
    rows = [(name, s) for name, s in small.get("sites", {}).items()
            if s["withheld_features"] or s["count_like_sums_noised"]]
    if not rows:
        return []
    lines = ["", "Small cells in the feature scaling (feature indexes; a withheld feature is "
             "pooled over the other sites):", "", "| site | k | withheld | noised |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {s['min_count']} | {s['withheld_features'] or '-'} | "
              f"{'yes' if s['count_like_sums_noised'] else 'no'} |" for name, s in rows]
    if small.get("unscaled_features"):
        lines.append(f"\nNo site sent features {small['unscaled_features']}: left unscaled.")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """report.md: settings, metric tables, sites, then any task/imaging/multimodal sections."""
    lines = [*_summary_lines(report), *_metric_tables(report), *caveat_lines(report),
             *_site_lines(report),
             *extra_markdown(report),  # e.g. the sepsis alarm table
             *imaging_markdown(report),  # per-class tables, confusion matrix, Dice per label
             *multimodal_markdown(report)]  # multimodal vs single modality, ablations
    return "\n".join(lines)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def plot_rounds(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = report["primary_metric"]
    rows = [h for h in report["history"] if h.get("pooled")]
    fig, ax = plt.subplots(figsize=(7, 4))
    rounds = [h["round"] for h in rows]
    for site in report["sites"]:
        ax.plot(rounds, [h["per_site"][site["name"]].get(metric) for h in rows],
                label=site["name"], alpha=0.7)
    ax.plot(rounds, [h["pooled"].get(metric) for h in rows], "k-", lw=2.5, label="pooled")
    ax.set(xlabel="round", ylabel=metric.upper(), title=f"Global model {metric.upper()} per round")
    ax.legend(fontsize=8, ncol=2)
    ax.grid(alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    return data


def plot_comparison(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    metric = report["primary_metric"]
    arms = [a for a in ARMS if a in report["metrics"]]
    names = ["pooled"] + [s["name"] for s in report["sites"]]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(names)), 4))
    width = 0.8 / len(arms)
    for i, arm in enumerate(arms):
        m = report["metrics"][arm]
        values = [m["pooled"].get(metric)] + [m["per_site"][n].get(metric) for n in names[1:]]
        values = [np.nan if v is None else v for v in values]
        ax.bar(np.arange(len(names)) + i * width, values, width, label=arm.replace("_", "-"))
    ax.set_xticks(np.arange(len(names)) + width * (len(arms) - 1) / 2, names, rotation=20)
    ax.set(ylabel=metric.upper(), title=f"{metric.upper()}: federated vs local-only vs "
           "centralized", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    data = _png(fig)
    plt.close(fig)
    return data


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """Render everything first, then write each file atomically: no half-written --out."""
    out = Path(out)
    files = {"report.json": json.dumps(report, indent=2, default=float).encode() + b"\n",
             "report.md": markdown(report).encode(),
             "metric_per_round.png": plot_rounds(report),
             "comparison.png": plot_comparison(report),
             **extra_figures(report)}
    for name, payload in files.items():
        atomic_write_bytes(out / name, payload)
    return [out / name for name in files]

