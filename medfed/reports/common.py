"""What every report table shares: the arms in display order and the cell format."""

from __future__ import annotations

from typing import Any

# report["metrics"] keys, in table order (the personalised arms: `personalize:` in the config)
ARMS = ("federated", "finetune", "fedbn", "ditto", "perhead", "local_only", "centralized")


def fmt(value: Any) -> str:
    """A table cell: ``—`` for missing, 3 decimals for floats, else as is."""
    return "—" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)
