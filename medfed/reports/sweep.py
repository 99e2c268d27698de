"""The summary of ``medfed simulate --sweep``: ``sweep.json``, ``sweep.md`` and ``sweep.png``.

The rows (one per sweep point) are computed by ``medfed.simulation.sweep``; this module only
renders them and writes the files.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

from medfed.io import atomic_write_bytes
from medfed.reports.common import ARMS


def markdown(key: str, rows: list[dict[str, Any]], dataset: str) -> str:
    """sweep.md: pooled primary metric of every arm, and the largest epsilon, per point."""
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


def _x_of(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _plot_arm(ax: Any, arm: str, xs: list[float], rows: list[dict[str, Any]]) -> None:
    """One arm: its finite points joined, its non-private reference as a dashed line."""
    pts = [(x, r[arm]) for x, r in zip(xs, rows, strict=True)
           if math.isfinite(x) and r.get(arm) is not None]
    line, = ax.plot(*zip(*pts, strict=True), "o-", label=arm.replace("_", "-")) if pts \
        else (None,)
    ref = [r[arm] for x, r in zip(xs, rows, strict=True) if not math.isfinite(x)]
    if ref and ref[0] is not None and line is not None:
        ax.axhline(ref[0], ls="--", color=line.get_color(), alpha=0.6)


def _x_axis(ax: Any, key: str, xs: list[float], rows: list[dict[str, Any]]) -> None:
    finite = [x for x in xs if math.isfinite(x)]
    if finite and min(finite) > 0 and max(finite) / min(finite) > 10:
        ax.set_xscale("log")
        ax.minorticks_off()
    if finite:
        ax.set_xticks(finite, [r[key] for x, r in zip(xs, rows, strict=True) if math.isfinite(x)])


def plot(key: str, rows: list[dict[str, Any]]) -> bytes:
    """sweep.png: utility against the swept value, one line per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [_x_of(r[key]) for r in rows]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for arm in (a for a in ARMS if a in rows[0]):
        _plot_arm(ax, arm, xs, rows)
    _x_axis(ax, key, xs, rows)
    ax.set(xlabel=key, ylabel=rows[0]["metric"].upper(),
           title=f"Utility vs {key} (dashed: non-private)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def write_sweep(out: Path, key: str, config: Path, overrides: list[str],
                rows: list[dict[str, Any]], dataset: str) -> list[Path]:
    """Render sweep.json, sweep.md and sweep.png, then write each atomically."""
    files = {"sweep.json": json.dumps({"key": key, "config": str(config),
                                       "overrides": overrides, "rows": rows},
                                      indent=2).encode() + b"\n",
             "sweep.md": markdown(key, rows, dataset).encode(),
             "sweep.png": plot(key, rows)}
    for name, payload in files.items():
        atomic_write_bytes(out / name, payload)
    return [out / name for name in files]
