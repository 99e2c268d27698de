"""`medfed stats` output: stats.json, stats.md and the plots a researcher would draw by hand
(per-site histograms overlaid, a missingness heat map, per-site Kaplan-Meier curves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medfed import __version__
from medfed.io import atomic_write_bytes
from medfed.reports.common import fmt

MAX_PLOTTED = 12  # variables in the histogram figure (flagged ones first)


def shown(value: Any) -> str:
    """A cell as the report shows it: numbers, or the site's ``<k``/``suppressed``."""
    if isinstance(value, dict) and "count" in value:
        hidden = value.get("suppressed_at") or []
        return f"{value['count']}" + (f" (+ suppressed at {', '.join(hidden)})" if hidden else "")
    return fmt(value)


def harmonisation_lines(section: dict[str, Any] | None) -> list[str]:
    """Warning lines for a report header (``medfed simulate``, ``stats.md``)."""
    if not section:
        return []
    if section.get("skipped"):
        return [f"- harmonisation check: {section['skipped']}"]
    flags = section.get("flags") or []
    if not flags:
        return [f"- harmonisation check: no site differs from the others by more than KS "
                f"distance {section.get('threshold', '?')} on any variable"]
    listed = "; ".join(f"{f['site']} on {f['variable']} (KS {f['distance']:.2f})"
                       for f in flags[:8])
    more = f" and {len(flags) - 8} more" if len(flags) > 8 else ""
    return [f"- **warning — harmonisation**: {len(flags)} site/variable pair(s) differ from the "
            f"other sites (KS distance > {flags[0]['threshold']} on merged histograms): "
            f"{listed}{more}; see `medfed stats`"]


def _header(result: dict[str, Any], title: str) -> list[str]:
    sites = result["sites"]
    pooled = result["pooled"]
    lines = [f"# MedFed federated statistics: {title}", "",
             f"- {len(sites)} site(s) answered: {', '.join(sites)}; one row is one "
             f"{result['unit'].rstrip('s')}; variables: {result['source']}",
             f"- small cells: any count below **{result['min_count']}** is suppressed at the "
             "site (`<k`; `suppressed` = hidden so a small cell cannot be derived from a "
             "total); pooled figures add only released cells and name the sites whose cells "
             "were suppressed",
             f"- rows, all sites: {shown(pooled['rows'])}"
             + (f"; individuals: {shown(pooled['individuals'])}"
                if pooled.get("individuals") != pooled["rows"] else "")]
    if result.get("not_answered"):
        lines.append(f"- did not answer (refused or failed): {result['not_answered']}")
    if result.get("privacy"):
        one = next(iter(result["privacy"].values()))
        lines.append(f"- noise: Gaussian, epsilon {one['epsilon']:g}, delta {one['delta']:g} per "
                     f"site and query ({one['releases']} released statistics, noise multiplier "
                     f"{one['noise_multiplier']:.2f}); recorded in each site's privacy ledger")
    lines += harmonisation_lines({"flags": result.get("flags"),
                                  "threshold": result.get("threshold")})
    return [*lines, ""]


def _numeric_lines(result: dict[str, Any]) -> list[str]:
    rows = [(n, v) for n, v in result["pooled"]["variables"].items() if v["kind"] == "numeric"]
    if not rows:
        return []
    lines = ["## Numeric variables (pooled over the sites that summarised them)", "",
             "| variable | n | missing | mean | std | q05 | q25 | median | q75 | q95 | sites |",
             "|---" * 11 + "|"]
    for name, v in rows:
        q = v.get("quantiles", {})
        lines.append(f"| {name} | {fmt(v.get('n'))} | {shown(v['missing'])} | "
                     f"{fmt(v.get('mean'))} | {fmt(v.get('std'))} | "
                     + " | ".join(fmt(q.get(k)) for k in ("q05", "q25", "q50", "q75", "q95"))
                     + f" | {len(v['sites_summarised'])} |")
    lines += ["", "Mean and std are exact (from per-site sums); quantiles come from the merged "
              "histogram on the agreed bins (suppressed bins count 0).", ""]
    return lines


def _per_site_lines(result: dict[str, Any]) -> list[str]:
    sites = list(result["sites"])
    rows = [(n, v) for n, v in result["pooled"]["variables"].items()
            if v["kind"] == "numeric" and v.get("per_site")]
    if not rows:
        return []
    lines = ["## Mean (std) per site", "", "| variable | " + " | ".join(sites) + " |",
             "|---" * (len(sites) + 1) + "|"]
    for name, v in rows:
        cells = []
        for site in sites:
            m = v["per_site"].get(site)
            cells.append(f"{m['mean']:.3g} ({m['std']:.3g})" if m else "not summarised")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def _categorical_lines(result: dict[str, Any]) -> list[str]:
    rows = [(n, v) for n, v in result["pooled"]["variables"].items()
            if v["kind"] == "categorical"]
    if not rows:
        return []
    lines = ["## Categorical variables (pooled counts)", "", "| variable | level | count |",
             "|---|---|---|"]
    for name, v in rows:
        for level, count in v["counts"].items():
            lines.append(f"| {name} | {level} | {shown(count)} |")
    return [*lines, ""]


def _outcome_lines(result: dict[str, Any]) -> list[str]:
    pooled, lines = result["pooled"], []
    if pooled.get("labels"):
        lines += [f"## Labels (counted in {result['unit']})", "",
                  "| class | all sites | " + " | ".join(result["sites"]) + " |",
                  "|---" * (len(result["sites"]) + 2) + "|"]
        for label, count in pooled["labels"].items():
            per = [fmt(s.get("labels", {}).get(label)) for s in result["sites"].values()]
            lines.append(f"| {label} | {shown(count)} | " + " | ".join(per) + " |")
        lines.append("")
    survival = pooled.get("survival")
    if survival:
        lines += ["## Survival", "", f"- events: {shown(survival['events'])}; censored: "
                  f"{shown(survival['censored'])}",
                  "- Kaplan-Meier per site (life-table estimate at the end of blocks of the "
                  "agreed intervals, each block with at least min_count events; lines join "
                  "the block ends): `km.png`"]
        empty = [site for site, curve in survival["km_per_site"].items() if not curve]
        if empty:
            lines.append(f"- no curve (fewer than min_count events, or too few at risk): "
                         f"{', '.join(empty)}")
        lines.append("")
    return lines


def _image_lines(result: dict[str, Any]) -> list[str]:
    images = result["pooled"].get("images")
    if not images:
        return []
    lines = ["## Images", "", f"- images: {shown(images['n'])}"]
    for fact in ("modality", "manufacturer", "model", "shape", "spacing", "orientation",
                 "region"):
        if images.get(fact):
            lines.append(f"- {fact}: " + ", ".join(f"{k}: {shown(v)}"
                                                   for k, v in images[fact].items()))
    for key, label in (("intensity", "intensity (inside mask/body)"),
                       ("lesion_ml", "lesion volume (mL)")):
        if images.get(key):
            v = images[key]
            q = v.get("quantiles", {})
            lines.append(f"- {label}: mean {fmt(v['mean'])}, std {fmt(v['std'])}, median "
                         f"{fmt(q.get('q50'))} (n {v['n']})")
    return [*lines, ""]


def _excluded_lines(result: dict[str, Any]) -> list[str]:
    excluded = {c: why for s in result["sites"].values() for c, why in s["excluded"].items()}
    not_shared = result["query"].get("not_shared") or []
    lines = []
    if excluded:
        lines += ["## Never summarised (stayed at the sites)", ""]
        lines += [f"- {c}: {why}" for c, why in excluded.items()]
    if not_shared:
        lines += ["", f"- fewer than min_count values at every site: {', '.join(not_shared)}"]
    return [*lines, ""] if lines else []


def markdown(result: dict[str, Any], title: str) -> str:
    lines = [*_header(result, title), *_numeric_lines(result), *_per_site_lines(result),
             *_categorical_lines(result), *_outcome_lines(result), *_image_lines(result),
             *_excluded_lines(result), "## Figures", "",
             "![per-site histograms](histograms.png)", "",
             "![missingness](missingness.png)", ""]
    if result["pooled"].get("survival"):
        lines += ["![Kaplan-Meier per site](km.png)", ""]
    return "\n".join(lines)


# --- plots ---------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    _plt().close(fig)
    return buffer.getvalue()


def _histogram_panels(result: dict[str, Any]) -> list[tuple[str, list[float], dict]]:
    """(name, edges, {site: histogram}) for numeric variables and image intensity."""
    flagged = [f["variable"] for f in result.get("flags", [])]
    panels = []
    for name, v in result["pooled"]["variables"].items():
        if v["kind"] == "numeric" and v.get("sites_summarised"):
            hists = {s: result["sites"][s]["variables"][name].get("hist")
                     for s in v["sites_summarised"]}
            panels.append((name, v["edges"], hists))
    intensity = result["pooled"].get("images", {}).get("intensity")
    if intensity:
        hists = {s: r["images"]["intensity"]["hist"] for s, r in result["sites"].items()
                 if r.get("images", {}).get("intensity")}
        panels.append(("image intensity", intensity["edges"], hists))
    panels.sort(key=lambda p: p[0] not in flagged)
    return panels[:MAX_PLOTTED]


def plot_histograms(result: dict[str, Any]) -> bytes:
    """Per-site histograms overlaid (share of the site's values per bin; suppressed bins 0)."""
    plt = _plt()
    panels = _histogram_panels(result)
    cols = 3
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (name, edges, hists) in zip(axes.flat, panels, strict=False):
        for site, hist in hists.items():
            counts = np.asarray([v if isinstance(v, int | float) else 0 for v in hist], float)
            if counts.sum() > 0:
                ax.stairs(counts / counts.sum(), edges, label=site, linewidth=1.4)
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    if panels:
        axes.flat[0].legend(fontsize=7)
    else:
        axes.flat[0].text(0.5, 0.5, "no numeric variable summarised", ha="center")
    fig.suptitle(f"share per bin, per site (bins < {result['min_count']} suppressed)",
                 fontsize=10)
    return _png(fig)


def missingness_matrix(result: dict[str, Any]) -> tuple[list[str], list[str], np.ndarray]:
    """(variables, sites, share missing) with NaN where the site suppressed the count."""
    sites = list(result["sites"])
    names = [n for n in result["pooled"]["variables"]]
    share = np.full((len(names), len(sites)), np.nan)
    for j, site in enumerate(sites):
        reply = result["sites"][site]
        for i, name in enumerate(names):
            entry = reply["variables"].get(name, {})
            n, missing = entry.get("n"), entry.get("missing")
            if isinstance(n, int | float) and isinstance(missing, int | float) and n + missing:
                share[i, j] = missing / (n + missing)
    return names, sites, share


def plot_missingness(result: dict[str, Any]) -> bytes:
    plt = _plt()
    names, sites, share = missingness_matrix(result)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(sites), 1.0 + 0.22 * max(len(names), 1)))
    if names:
        masked = np.ma.masked_invalid(share)
        image = ax.imshow(masked, aspect="auto", cmap="viridis", vmin=0, vmax=1)
        ax.set_facecolor("#dddddd")
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xticks(range(len(sites)), sites, fontsize=8, rotation=30, ha="right")
        fig.colorbar(image, ax=ax, label="share missing")
    ax.set_title("missing values per site (grey: count suppressed)", fontsize=10)
    return _png(fig)


def plot_km(result: dict[str, Any]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    curves = result["pooled"].get("survival", {}).get("km_per_site", {})
    for site, curve in curves.items():
        if curve:
            times = [0.0, *[p["time"] for p in curve]]
            values = [1.0, *[p["survival"] for p in curve]]
            ax.plot(times, values, marker="o", markersize=3, label=site)  # block ends only
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("follow-up time")
    ax.set_ylabel("survival (life-table)")
    ax.set_title(f"Kaplan-Meier per site (blocks with >= {result['min_count']} events)",
                 fontsize=10)
    if any(curves.values()):
        ax.legend(fontsize=8)
    return _png(fig)


def write_stats_report(result: dict[str, Any], out: str | Path, title: str) -> list[Path]:
    """Render everything first, then write each file atomically."""
    out = Path(out)
    document = {"medfed_version": __version__, "title": title, **result}
    files = {"stats.json": json.dumps(document, indent=2, default=float).encode() + b"\n",
             "stats.md": markdown(result, title).encode(),
             "histograms.png": plot_histograms(result),
             "missingness.png": plot_missingness(result)}
    if result["pooled"].get("survival"):
        files["km.png"] = plot_km(result)
    for name, payload in files.items():
        atomic_write_bytes(out / name, payload)
    return [out / name for name in files]
