"""What a reader must know next to the numbers: degenerate local-only sites, undefined metrics."""

from __future__ import annotations

from typing import Any

from medfed.reports.common import ARMS


def degenerate_sites(report: dict[str, Any]) -> dict[str, str]:
    """{site: reason} for sites whose local-only model is a constant predictor."""
    local = report["metrics"].get("local_only") or {}
    return {site: m["degenerate"] for site, m in (local.get("per_site") or {}).items()
            if m.get("degenerate")}


def cell_note(report: dict[str, Any], arm: str, site: str) -> str:
    """`` (constant)`` for a degenerate local-only site's cell, else ``""``."""
    return " (constant)" if arm == "local_only" and site in degenerate_sites(report) else ""


def caveat_lines(report: dict[str, Any]) -> list[str]:
    """report.md lines: each degenerate local-only site, then each undefined metric and why."""
    lines = []
    for site, reason in degenerate_sites(report).items():
        labels = next((s["label_counts"]["train"] for s in report["sites"]
                       if s["name"] == site), {})
        lines.append(f"- local-only at **{site}**: degenerate ({reason}; training labels "
                     f"{labels}): a constant predictor of its training label frequencies, "
                     "scored as such. The site still trains in the federation.")
    for arm in ARMS:
        undefined = (report["metrics"].get(arm) or {}).get("undefined") or {}
        for metric, why in (undefined.get("pooled") or {}).items():
            lines.append(f"- {arm.replace('_', '-')}, pooled: {metric} undefined ({why})")
        for site, metrics in (undefined.get("per_site") or {}).items():
            for metric, why in metrics.items():
                lines.append(f"- {arm.replace('_', '-')}, {site}: {metric} undefined ({why})")
    return ["", "## Caveats", "", *lines] if lines else []
