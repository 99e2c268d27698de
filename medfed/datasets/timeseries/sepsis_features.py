"""PhysioNet 2019 sepsis variables and leakage-free hourly features.

Every feature of hour t of a stay is computed from hours <= t of that stay only: forward
fill within the stay, missingness indicators, and rolling statistics / trends over trailing
windows. Values never measured yet are filled with a textbook reference value (no data
statistics, so nothing is pooled across sites or taken from test rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

VITALS = ["HR", "O2Sat", "Temp", "SBP", "MAP", "DBP", "Resp", "EtCO2"]
LABS = ["BaseExcess", "HCO3", "FiO2", "pH", "PaCO2", "SaO2", "AST", "BUN", "Alkalinephos",
        "Calcium", "Chloride", "Creatinine", "Bilirubin_direct", "Glucose", "Lactate",
        "Magnesium", "Phosphate", "Potassium", "Bilirubin_total", "TroponinI", "Hct", "Hgb",
        "PTT", "WBC", "Fibrinogen", "Platelets"]
DEMOGRAPHICS = ["Age", "Gender", "Unit1", "Unit2", "HospAdmTime", "ICULOS"]
COLUMNS = VITALS + LABS + DEMOGRAPHICS  # the 40 variables, in the challenge's order
LABEL = "SepsisLabel"
DYNAMIC = VITALS + LABS
# (typical ICU value, spread): fill for never-measured values and the demo generator's centre
REFERENCE = {
    "HR": (84, 15), "O2Sat": (97, 2.5), "Temp": (36.9, 0.6), "SBP": (122, 20), "MAP": (82, 14),
    "DBP": (63, 12), "Resp": (18.5, 4.5), "EtCO2": (33, 6), "BaseExcess": (-0.5, 3.5),
    "HCO3": (24, 3.5), "FiO2": (0.5, 0.15), "pH": (7.38, 0.06), "PaCO2": (41, 8),
    "SaO2": (92, 6), "AST": (60, 40), "BUN": (22, 14), "Alkalinephos": (95, 40),
    "Calcium": (8.2, 0.8), "Chloride": (105, 4.5), "Creatinine": (1.2, 0.7),
    "Bilirubin_direct": (0.6, 0.5), "Glucose": (130, 35), "Lactate": (1.5, 0.6),
    "Magnesium": (2.0, 0.3), "Phosphate": (3.4, 0.9), "Potassium": (4.1, 0.5),
    "Bilirubin_total": (0.9, 0.7), "TroponinI": (0.3, 0.5), "Hct": (31, 5), "Hgb": (10.5, 1.8),
    "PTT": (33, 9), "WBC": (10.5, 4), "Fibrinogen": (300, 100), "Platelets": (210, 80),
}
REFERENCE_AGE = 62.0
# rolling statistics by default over the vitals and the labs that move before sepsis
WINDOW_VARIABLES = VITALS[:7] + ["Lactate", "WBC", "Creatinine", "Platelets", "Bilirubin_total"]
STATS = ("mean", "min", "max", "trend")


def _by_stay(frame: pd.DataFrame, stays: np.ndarray):
    return frame.groupby(stays, sort=False)


def base_features(raw: pd.DataFrame, stays: np.ndarray) -> pd.DataFrame:
    """Per hour: forward-filled values, ``<var>_missing`` (not measured this hour), demographics.

    ``raw``: one row per stay-hour, rows of a stay contiguous and in time order; ``stays``
    (N,) the stay of each row.
    """
    dynamic = raw[DYNAMIC]
    filled = _by_stay(dynamic, stays).ffill().fillna({v: REFERENCE[v][0] for v in DYNAMIC})
    missing = dynamic.isna().astype(np.float32).add_suffix("_missing")
    demo = raw[DEMOGRAPHICS].copy()
    demo["Age"] = demo["Age"].fillna(REFERENCE_AGE)
    demo = demo.fillna(0.0)  # unknown unit / admission time / sex: 0 (their own indicator below)
    demo_missing = raw[["Unit1", "HospAdmTime"]].isna().astype(np.float32).add_suffix("_missing")
    return pd.concat([filled, missing, demo, demo_missing], axis=1).astype(np.float32)


def window_features(filled: pd.DataFrame, stays: np.ndarray, windows: Sequence[int],
                    variables: Sequence[str]) -> pd.DataFrame:
    """Trailing-window mean/min/max and trend ((x_t - x_{t-w}) / w) of forward-filled values.

    Windows shorter than ``w`` at the start of a stay use the hours there are; the trend then
    compares with the stay's first hour.
    """
    values = filled[list(variables)]
    grouped = _by_stay(values, stays)
    first = grouped.transform("first")
    parts = []
    for w in windows:
        rolling = grouped.rolling(int(w), min_periods=1)
        for stat in ("mean", "min", "max"):
            frame = getattr(rolling, stat)().reset_index(level=0, drop=True).sort_index()
            parts.append(frame.add_suffix(f"_{stat}{w}h"))
        lagged = grouped.shift(int(w)).fillna(first)
        parts.append(((values - lagged) / float(w)).add_suffix(f"_trend{w}h"))
    return pd.concat(parts, axis=1).astype(np.float32) if parts else values.iloc[:, :0]


def hourly_features(raw: pd.DataFrame, stays: np.ndarray, windows: Sequence[int] = (3, 6, 12),
                    variables: Sequence[str] | None = None) -> pd.DataFrame:
    """All window features of every stay-hour, (N, F); see ``base_features``."""
    raw = raw.reset_index(drop=True)
    base = base_features(raw, stays)
    rolled = window_features(base[DYNAMIC], stays, windows, variables or WINDOW_VARIABLES)
    return pd.concat([base, rolled], axis=1)


def sequence_features(raw: pd.DataFrame, stays: np.ndarray, hours: int = 12) -> np.ndarray:
    """(N, hours, F + 1): for each stay-hour, its ``base_features`` and those of the
    ``hours - 1`` hours before it; hours before the stay's start are zeros with the last
    column (padding indicator) set to 1."""
    base = base_features(raw.reset_index(drop=True), stays).to_numpy(np.float32)
    n, f = base.shape
    out = np.zeros((n, hours, f + 1), np.float32)
    position = _by_stay(pd.Series(np.ones(n)), stays).cumsum().to_numpy().astype(int) - 1
    for lag in range(hours):
        step = hours - 1 - lag  # slot `step` holds hour t - lag
        valid = position >= lag
        rows = np.flatnonzero(valid)
        out[rows, step, :f] = base[rows - lag]
        out[~valid, step, f] = 1.0
    return out
