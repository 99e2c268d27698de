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


def reference_fill() -> dict[str, float]:
    """The textbook value that stands in for a variable not measured yet."""
    return {v: REFERENCE[v][0] for v in DYNAMIC}


def base_features(raw: pd.DataFrame, stays: np.ndarray,
                  fill: dict[str, float] | None = None) -> pd.DataFrame:
    """Per hour: forward-filled values, ``<var>_missing`` (not measured this hour), demographics.

    ``raw``: one row per stay-hour, rows of a stay contiguous and in time order; ``stays``
    (N,) the stay of each row; ``fill``: value before the first measurement (default
    ``reference_fill()``).
    """
    dynamic = raw[DYNAMIC]
    filled = _by_stay(dynamic, stays).ffill().fillna(fill or reference_fill())
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
                    variables: Sequence[str] | None = None,
                    fill: dict[str, float] | None = None) -> pd.DataFrame:
    """All window features of every stay-hour, (N, F); see ``base_features``."""
    raw = raw.reset_index(drop=True)
    base = base_features(raw, stays, fill)
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


# right-skewed labs: their log is closer to what the score depends on (AST runs to thousands)
SKEWED = ["AST", "Alkalinephos", "Bilirubin_direct", "Bilirubin_total", "TroponinI", "Lactate",
          "Creatinine", "BUN", "Glucose", "WBC", "PTT", "Fibrinogen", "Platelets"]
SINCE_CAP = 72.0  # hours since the last measurement are capped (and "never" counts as the cap)
# hours in the ICU as one-hot bands: the risk of the hour rises and falls over a stay, which a
# linear model cannot read from log(ICULOS) alone
ICU_BANDS = ((0, 6), (6, 12), (12, 24), (24, 48), (48, 96), (96, None))
# partial SOFA: (variable, cut points of 1..4 points, higher is worse?)
SOFA = [("Platelets", (150, 100, 50, 20), False), ("Bilirubin_total", (1.2, 2.0, 6.0, 12.0), True),
        ("Creatinine", (1.2, 2.0, 3.5, 5.0), True), ("MAP", (70,), False)]


def hour_of_stay(stays: np.ndarray) -> np.ndarray:
    """(N,) 0, 1, 2, ... within each stay (rows of a stay contiguous, in time order)."""
    return pd.Series(np.ones(len(stays))).groupby(stays).cumsum().to_numpy() - 1.0


def measurement_features(raw: pd.DataFrame, stays: np.ndarray) -> pd.DataFrame:
    """Per variable: log hours since its last measurement (capped); labs drawn in the last
    24 h (clinicians order more when worried). Not how often each variable was charted so
    far: that is mostly a hospital's charting habit, and with two hospitals that chart
    differently it cost the federated model (real sample, bench/sepsis_baseline.py: hourly
    AUPRC 0.077 -> 0.084)."""
    measured = raw[DYNAMIC].notna()
    hour = hour_of_stay(stays)
    last = pd.DataFrame(np.where(measured, hour[:, None], np.nan), columns=DYNAMIC)
    since = (hour[:, None] - _by_stay(last, stays).ffill()).clip(upper=SINCE_CAP)
    since = np.log1p(since.fillna(SINCE_CAP)).add_suffix("_since")
    labs = measured[LABS].sum(axis=1).astype(np.float32)
    recent = labs.groupby(stays).rolling(24, min_periods=1).sum().reset_index(level=0, drop=True)
    return pd.concat([since, np.log1p(recent.sort_index()).rename("labs_24h")], axis=1)


def _points(values: pd.Series, cuts: Sequence[float], higher_worse: bool) -> pd.Series:
    """SOFA-style points 0..len(cuts); unknown values score 0 (normal)."""
    points = sum(((values >= c) if higher_worse else (values < c)).astype(np.float32)
                 for c in cuts)
    return points.where(values.notna(), 0.0)


def stay_bands(iculos: pd.Series) -> pd.DataFrame:
    """One-hot ``icu_<from>_<to>h`` of the hour's ICULOS band (``ICU_BANDS``)."""
    hours = iculos.fillna(0).to_numpy()
    return pd.DataFrame({f"icu_{a}_{b or 'plus'}h": ((hours >= a) & (hours < (b or np.inf)))
                         for a, b in ICU_BANDS}).astype(np.float32)


def clinical_scores(last: pd.DataFrame, stays: np.ndarray) -> pd.DataFrame:
    """SIRS, qSOFA (without mental status), a partial SOFA and its rise over the last 24 h
    (Sepsis-3: a rise of 2+), shock index, BUN/creatinine; ``last``: forward-filled raw values
    (NaN before the first measurement)."""
    sirs = ((last["HR"] > 90).astype(np.float32) + ((last["Temp"] > 38) | (last["Temp"] < 36))
            + ((last["Resp"] > 20) | (last["PaCO2"] < 32)) + ((last["WBC"] > 12)
                                                               | (last["WBC"] < 4)))
    qsofa = (last["Resp"] >= 22).astype(np.float32) + (last["SBP"] <= 100)
    sofa = sum(_points(last[v], cuts, worse) for v, cuts, worse in SOFA)
    floor = sofa.groupby(stays).rolling(24, min_periods=1).min().reset_index(level=0, drop=True)
    shock = (last["HR"] / last["SBP"].clip(lower=20)).fillna(
        REFERENCE["HR"][0] / REFERENCE["SBP"][0])
    ratio = np.log((last["BUN"] / last["Creatinine"]).clip(1, 100)).fillna(np.log(18.0))
    return pd.DataFrame({"sirs": sirs, "qsofa": qsofa, "sofa_partial": sofa,
                         "sofa_rise24h": sofa - floor.sort_index(), "shock_index": shock,
                         "log_bun_creatinine": ratio}).astype(np.float32)


def clinical_features(raw: pd.DataFrame, stays: np.ndarray, windows: Sequence[int] = (6, 24),
                      variables: Sequence[str] | None = None) -> pd.DataFrame:
    """``hourly_features`` (skewed labs on a log scale) plus ``measurement_features``,
    ``clinical_scores``, the length of stay on a log scale and in bands, (N, F)."""
    raw = raw.reset_index(drop=True).copy()
    raw[SKEWED] = np.log1p(raw[SKEWED].clip(lower=0))
    unlogged = _by_stay(raw[DYNAMIC], stays).ffill()
    unlogged[SKEWED] = np.expm1(unlogged[SKEWED])
    fill = reference_fill() | {v: float(np.log1p(REFERENCE[v][0])) for v in SKEWED}
    base = hourly_features(raw, stays, windows, variables, fill)
    extra = pd.DataFrame({"log_iculos": np.log1p(raw["ICULOS"].fillna(0)),
                          "log_hosp_adm": -np.log1p(-raw["HospAdmTime"].fillna(0).clip(upper=0))})
    return pd.concat([base, measurement_features(raw, stays), clinical_scores(unlogged, stays),
                      extra.astype(np.float32), stay_bands(raw["ICULOS"])],
                     axis=1).astype(np.float32)
