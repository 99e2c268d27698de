"""Files in the exact UCI ``processed.<centre>.data`` format, for tests (no copy of the real
data is stored here): 14 comma-separated values, no header, ``?`` for missing, ``num`` 0-4.

The generated files have the real files' character (counted on the UCI originals): rows per
file 303/294/123/200; after FLamby's cleaning (drop slope, ca, thal, then rows with a missing
value) 303/261/46/130 patients with 139/98/45/101 positive, so Switzerland is 45 with disease
and 1 without, and that one lands in the test split of FLamby's seed-43 split (as it does on
the real file); missing values where the real files have them (Hungary: chol; Switzerland:
fbs; VA: trestbps, thalach, exang and oldpeak together, or fbs); chol recorded as 0 at
Switzerland (every row) and at a quarter of VA; Hungary's ``num`` is 0 or 1 only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FILES = {"cleveland": "processed.cleveland.data", "hungarian": "processed.hungarian.data",
         "switzerland": "processed.switzerland.data", "va": "processed.va.data"}
# centre -> (complete negatives, complete positives, incomplete negatives, incomplete positives)
COUNTS = {"cleveland": (164, 139, 0, 0), "hungarian": (163, 98, 25, 8),
          "switzerland": (1, 45, 7, 70), "va": (29, 101, 22, 48)}
SIZES = {c: sum(n) for c, n in COUNTS.items()}  # rows per file: 303, 294, 123, 200
CLEAN = {c: n[0] + n[1] for c, n in COUNTS.items()}  # patients after cleaning: 303/261/46/130
MISSING = {"cleveland": [], "hungarian": [["chol"]], "switzerland": [["fbs"]],
           "va": [["trestbps", "thalach", "exang", "oldpeak"], ["fbs"]]}
COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
           "oldpeak", "slope", "ca", "thal", "num"]


def patient(sick: bool, centre: str, rng: np.random.Generator) -> dict[str, float]:
    """One patient's 14 values (before any is blanked); disease shifts the usual signs."""
    num = (1 if centre == "hungarian" else int(rng.integers(1, 5))) if sick else 0
    return {
        "age": round(rng.normal(56 if sick else 52, 9)),
        "sex": float(rng.random() < (0.85 if sick else 0.65)),
        "cp": float(4 if rng.random() < (0.72 if sick else 0.25) else rng.integers(1, 4)),
        "trestbps": round(rng.normal(134, 18)),
        "chol": 0.0 if centre == "switzerland" or (centre == "va" and rng.random() < 0.25)
        else round(rng.normal(245, 50)),
        "fbs": float(rng.random() < 0.15),
        "restecg": float(rng.integers(0, 3)),
        "thalach": round(rng.normal(138 if sick else 156, 22)),
        "exang": float(rng.random() < (0.55 if sick else 0.15)),
        "oldpeak": round(abs(rng.normal(1.4 if sick else 0.6, 1.2)), 1),
        "slope": float(rng.integers(1, 4)), "ca": float(rng.integers(0, 4)),
        "thal": float(rng.choice([3, 6, 7])), "num": num,
    }


def line(values: dict[str, float], blank: list[str]) -> str:
    cells = ["?" if c in blank else (str(values[c]) if c == "num" else f"{values[c]:.1f}")
             for c in COLUMNS]
    return ",".join(cells)


def first_test_row(n: int) -> int:
    """A row FLamby's unstratified seed-43 66/34 split of ``n`` rows puts in test."""
    from sklearn.model_selection import train_test_split

    _, test = train_test_split(np.arange(n), test_size=0.34, random_state=43)
    return int(test[0])


def centre_lines(centre: str, rng: np.random.Generator) -> list[str]:
    neg, pos, bad_neg, bad_pos = COUNTS[centre]
    clean = [False] * neg + [True] * pos
    rng.shuffle(clean)
    if neg == 1:  # Switzerland: the one negative sits where the split tests it
        clean.remove(False)
        clean.insert(first_test_row(neg + pos), False)
    # dropped columns (slope, ca, thal) are mostly '?' outside Cleveland, as in the real files
    gone = [] if centre == "cleveland" else ["ca", "thal"]
    lines = [line(patient(sick, centre, rng), gone) for sick in clean]
    patterns = MISSING[centre]
    for i, sick in enumerate([False] * bad_neg + [True] * bad_pos):
        blank = patterns[0] if i % 8 or len(patterns) == 1 else patterns[1]
        row = line(patient(sick, centre, rng), [*blank, *gone])
        lines.insert(int(rng.integers(0, len(lines) + 1)), row)
    return lines  # incomplete rows are dropped before the split: clean rows keep their order


def write_uci_heart(folder: Path, seed: int = 0) -> Path:
    """Write the four centres' files into ``folder/heart-disease/``; returns ``folder``."""
    rng = np.random.default_rng(seed)
    target = folder / "heart-disease"
    target.mkdir(parents=True, exist_ok=True)
    for centre, filename in FILES.items():
        (target / filename).write_text("\n".join(centre_lines(centre, rng)) + "\n")
    return folder
