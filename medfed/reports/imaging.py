"""Report sections for multiclass and segmentation runs (markdown from ``report.json``).

Multiclass: per-class precision/recall/F1 and the confusion matrix of each arm on the pooled
test set (``metrics.<arm>.details``). Segmentation: mean Dice per site and per label, or per
named region (``regions:wt,tc,et`` runs: whole tumour, tumour core, enhancing tumour).
"""

from __future__ import annotations

from typing import Any

from medfed.reports.common import ARMS, fmt


def class_lines(report: dict[str, Any]) -> list[str]:
    """Per-class table and confusion matrix (rows true, columns predicted) for each arm."""
    lines: list[str] = []
    for arm in (a for a in ARMS if "details" in report["metrics"].get(a, {})):
        pooled = report["metrics"][arm]["details"]["pooled"]
        classes = list(pooled["per_class"])
        lines += ["", f"## Per class, pooled test set ({arm.replace('_', '-')})", "",
                  "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for c in classes:
            m = pooled["per_class"][c]
            lines.append(f"| {c} | {fmt(m['precision'])} | {fmt(m['recall'])} | "
                         f"{fmt(m['f1'])} | {m['support']} |")
        lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
                  "| true \\ predicted | " + " | ".join(classes) + " |",
                  "|---" * (len(classes) + 1) + "|"]
        for c, row in zip(classes, pooled["confusion_matrix"], strict=True):
            lines.append(f"| {c} | " + " | ".join(str(v) for v in row) + " |")
    return lines


def _column(key: str, regions: bool) -> str:
    """``dice_3`` -> 'label 3'; a region's ``dice_wt`` -> 'WT'."""
    name = key.removeprefix("dice_")
    return name.upper() if regions else f"label {name}"


def dice_lines(report: dict[str, Any]) -> list[str]:
    """Mean Dice per site (rows) for every arm, per label (or region, in the task's order)."""
    arms = [a for a in ARMS if a in report["metrics"]]
    fed = report["metrics"][arms[0]]["pooled"]
    regions = report["task"].startswith("regions:")
    labels = [k for k in fed if k.startswith("dice_")]
    labels = labels if regions else sorted(labels)
    names = ["pooled"] + [s["name"] for s in report["sites"]]

    def row(arm: str, site: str) -> dict:
        m = report["metrics"][arm]
        return m["pooled"] if site == "pooled" else m["per_site"][site]

    what = "region" if regions else "label"
    lines = ["", f"## Dice per site and {what} (test images)", "",
             "| site | " + " | ".join(f"{a.replace('_', '-')} {_column(lab, regions)}"
                                    for a in arms for lab in labels) + " |",
             "|---" * (len(arms) * len(labels) + 1) + "|"]
    for site in names:
        lines.append(f"| {site} | " + " | ".join(fmt(row(a, site).get(lab)) for a in arms
                                                  for lab in labels) + " |")
    return lines


def imaging_markdown(report: dict[str, Any]) -> list[str]:
    """Extra markdown lines for multiclass and segmentation reports (none otherwise)."""
    if report["task"] == "segmentation":
        return dice_lines(report)
    if report["task"].startswith("regions:"):
        options = report.get("config", {}).get("dataset", {}).get("options", {})
        mapping = options.get("mask_labels") or {}
        legend = "; ".join(f"{k.upper()} = mask values {v}" for k, v in mapping.items())
        return [*dice_lines(report), *(["", f"Regions: {legend}."] if legend else [])]
    if report["task"] == "multiclass":
        return class_lines(report)
    return []
