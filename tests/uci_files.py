"""Files in the exact UCI ``processed.<centre>.data`` format, for tests (no copy of the real
data exists here): 14 comma-separated values, no header, ``?`` for missing, ``num`` 0-4."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZES = {"cleveland": 303, "hungarian": 294, "switzerland": 123, "va": 200}
FILES = {"cleveland": "processed.cleveland.data", "hungarian": "processed.hungarian.data",
         "switzerland": "processed.switzerland.data", "va": "processed.va.data"}


def uci_rows(n: int, rng: np.random.Generator, missing: float = 0.05) -> list[list[str]]:
    rows = []
    for _ in range(n):
        num = int(rng.choice([0, 1, 2, 3, 4], p=[0.5, 0.2, 0.12, 0.12, 0.06]))
        sick = num > 0
        values = [
            f"{rng.normal(58 if sick else 50, 8):.1f}",            # age
            f"{float(rng.random() < (0.8 if sick else 0.55)):.1f}",  # sex
            f"{float(4 if sick and rng.random() < 0.7 else rng.integers(1, 4)):.1f}",  # cp
            f"{rng.normal(134, 18):.1f}",                           # trestbps
            f"{rng.normal(250, 50):.1f}",                           # chol
            f"{float(rng.random() < 0.15):.1f}",                    # fbs
            f"{float(rng.integers(0, 3)):.1f}",                     # restecg
            f"{rng.normal(135 if sick else 158, 20):.1f}",          # thalach
            f"{float(rng.random() < (0.55 if sick else 0.15)):.1f}",  # exang
            f"{abs(rng.normal(1.6 if sick else 0.6, 1.0)):.1f}",    # oldpeak
            f"{float(rng.integers(1, 4)):.1f}",                     # slope
            f"{float(rng.integers(0, 4)):.1f}",                     # ca
            f"{float(rng.choice([3, 6, 7])):.1f}",                  # thal
            str(num),
        ]
        for i in range(len(values) - 1):
            if rng.random() < missing:
                values[i] = "?"
        rows.append(values)
    return rows


def write_uci_heart(folder: Path, seed: int = 0, scale: float = 1.0) -> Path:
    """Write the four centres' files into ``folder/heart-disease/``; returns ``folder``."""
    rng = np.random.default_rng(seed)
    target = folder / "heart-disease"
    target.mkdir(parents=True, exist_ok=True)
    for centre, n in SIZES.items():
        rows = uci_rows(max(int(n * scale), 40), rng)
        (target / FILES[centre]).write_text("\n".join(",".join(r) for r in rows) + "\n")
    return folder
