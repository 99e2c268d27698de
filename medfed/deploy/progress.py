"""One plain line per completed round of a deployed run (`medfed run` without a terminal)."""

from __future__ import annotations

from typing import Any

SHOWN_METRICS = ("auroc", "accuracy", "balanced_accuracy", "c_index", "dice")


def round_line(record: dict[str, Any], rounds: int, elapsed_s: float) -> str:
    """``round 2/5: 3 sites trained, auroc 0.812 (federated eval), 4.1 s elapsed``.

    ``record``: one entry of the run's ``progress.json`` history.
    """
    parts = [f"round {record.get('round')}/{rounds}: "
             f"{record.get('sites_trained', '?')} sites trained"]
    metrics = record.get("federated_eval") or {}
    shown = next((k for k in SHOWN_METRICS if metrics.get(k) is not None), None)
    if shown is not None:
        parts.append(f"{shown} {metrics[shown]:.3f} (federated eval)")
    elif record.get("train_loss") is not None:
        parts.append(f"train loss {record['train_loss']:.4f}")
    if record.get("sites_refused"):
        parts.append(f"{len(record['sites_refused'])} refused")
    return ", ".join(parts) + f", {elapsed_s:.1f} s elapsed"
