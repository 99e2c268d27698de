"""Synthetic PhysioNet-2019-style ICU stays for demos and tests (no real patient).

``write_demo(out, sites=2, patients=300)`` writes ``out/site-K/pNNNNNN.psv``: hourly rows with
the 40 challenge variables and ``SepsisLabel`` (41 columns, as the real files). The character
is that of the real stays (measured on the 2,000 stays of ``physionet2019-sample``, training
sets A and B): ~1.8 % positive hours and ~7.5 % septic stays (more at site 1 than site 2, as
A vs B), stays of 8-336 h (median ~38 h), sepsis onset at least 6 h into the stay (a fifth of
septic stays are labelled from their first hour), septic stays ending 3 h after onset as the
challenge's files do, the real hourly charting rate of each variable (~95 % of hourly lab cells
empty; ~40 % of lab variables never measured in a stay), labs drawn together and more often
before onset. In the 12 h before onset heart rate, respiration and temperature rise, blood
pressure falls, lactate and white cells climb; other deteriorations look alike (confounders).
``SepsisLabel`` is 1 from 6 h before onset on, as in the challenge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfed.datasets.timeseries.sepsis_features import COLUMNS, LABEL, LABS, REFERENCE, VITALS
from medfed.io import atomic_write_bytes

# share of stay-hours in which each variable is charted in the real files (A and B pooled)
CHARTED = {
    "HR": 0.89, "O2Sat": 0.86, "Temp": 0.34, "SBP": 0.85, "MAP": 0.87, "DBP": 0.69,
    "Resp": 0.84, "EtCO2": 0.04, "BaseExcess": 0.055, "HCO3": 0.041, "FiO2": 0.08, "pH": 0.071,
    "PaCO2": 0.056, "SaO2": 0.035, "AST": 0.016, "BUN": 0.068, "Alkalinephos": 0.016,
    "Calcium": 0.058, "Chloride": 0.045, "Creatinine": 0.06, "Bilirubin_direct": 0.002,
    "Glucose": 0.174, "Lactate": 0.027, "Magnesium": 0.063, "Phosphate": 0.04,
    "Potassium": 0.094, "Bilirubin_total": 0.014, "TroponinI": 0.01, "Hct": 0.089, "Hgb": 0.074,
    "PTT": 0.029, "WBC": 0.064, "Fibrinogen": 0.007, "Platelets": 0.059,
}
DRAW_RATE = 0.2  # hourly chance of a blood draw; a lab is measured only at a draw
# change at full drift (12 h into the pre-onset window) in units of the variable
SEPSIS_DRIFT = {"HR": 24, "Resp": 7, "Temp": 1.3, "SBP": -22, "MAP": -14, "DBP": -9,
                "O2Sat": -3.5, "Lactate": 2.8, "WBC": 7, "Creatinine": 0.8, "Platelets": -70,
                "Bilirubin_total": 1.0, "pH": -0.06, "HCO3": -4, "BaseExcess": -4}
LEAD_HOURS = 6  # SepsisLabel starts this many hours before onset
DRIFT_HOURS = 12
AFTER_ONSET = 3  # septic files end this many hours after onset
MIN_HOURS, MAX_HOURS = 8, 336


def _ramp(t: np.ndarray, start: int) -> np.ndarray:
    return np.clip((t - start) / DRIFT_HOURS, 0, 1.3)


def _timeline(rng: np.random.Generator, septic: bool) -> tuple[int, int | None]:
    """(length in hours, onset hour or None). Lengths as the real files': 95 % within 8-60 h
    (median 38 h), a long tail to 336 h; onset >= 6 h, median ~42 h."""
    if not septic:
        if rng.random() < 0.94:
            return int(np.clip(rng.normal(38, 14), MIN_HOURS, 60)), None
        return int(min(60 + rng.lognormal(np.log(30), 1.0), MAX_HOURS)), None
    onset = LEAD_HOURS if rng.random() < 0.2 else int(np.clip(
        LEAD_HOURS + rng.lognormal(np.log(48), 0.8), LEAD_HOURS, MAX_HOURS - AFTER_ONSET - 1))
    tail = AFTER_ONSET + 1 if rng.random() < 0.85 else int(rng.integers(0, AFTER_ONSET + 1))
    return max(onset + tail, MIN_HOURS), onset


def _charted(rng: np.random.Generator, name: str, length: int, site: int,
             draws: np.ndarray, alert: np.ndarray) -> np.ndarray:
    """(length,) bool: the hours ``name`` was charted. Labs: ordered for this stay at all or
    not (rare labs mostly not), then measured at some blood draws, more when worried."""
    rate = CHARTED[name]
    if name in VITALS:
        return rng.random(length) < rate * (1.0 - 0.05 * site)
    ordered = min(0.95, 0.35 + 6 * rate) * (1.1 - 0.2 * site)  # site 2 orders fewer labs
    if rng.random() >= ordered:
        return np.zeros(length, dtype=bool)
    at_draw = min(1.0, rate / (min(ordered, 1.0) * DRAW_RATE))
    return draws & (rng.random(length) < np.clip(at_draw * (1 + alert), 0, 1))


def _stay(rng: np.random.Generator, septic: bool, site: int) -> pd.DataFrame:
    """One stay: (hours, 41) with NaN where nothing was charted."""
    length, onset = _timeline(rng, septic)
    t = np.arange(length)
    drift = _ramp(t, onset - DRIFT_HOURS) if septic else np.zeros(length)
    # other deteriorations (bleeding, post-operative fever, ...) look alike: confounders
    unstable = rng.random() < 0.3
    other = _ramp(t, int(rng.integers(0, length))) if unstable else np.zeros(length)
    alert = 0.4 * drift + 0.3 * other  # suspicious clinicians order more labs
    draws = rng.random(length) < DRAW_RATE * (1 + alert)
    frame = {}
    for name in VITALS + LABS:
        centre, spread = REFERENCE[name]
        patient = centre + 0.8 * spread * rng.standard_normal()
        noise = np.cumsum(rng.standard_normal(length)) * 0.1 * spread  # slow wander
        values = patient + noise + 0.45 * spread * rng.standard_normal(length)
        change = SEPSIS_DRIFT.get(name, 0.0)
        values += change * rng.uniform(0.0, 0.55) * drift  # not every patient shows every sign
        values += change * rng.uniform(0.0, 0.6) * other
        charted = _charted(rng, name, length, site, draws, alert)
        frame[name] = np.where(charted, np.round(values, 2), np.nan)
    frame["O2Sat"] = np.minimum(frame["O2Sat"], 100)
    unit = rng.integers(1, 3) if rng.random() < 0.52 + 0.2 * site else 0  # 0: not recorded
    frame |= {"Age": np.full(length, round(float(np.clip(rng.normal(61 + 3 * site, 16), 18,
                                                          100)), 2)),
              "Gender": np.full(length, float(rng.random() < 0.57)),
              "Unit1": np.full(length, np.nan if unit == 0 else float(unit == 1)),
              "Unit2": np.full(length, np.nan if unit == 0 else float(unit == 2)),
              "HospAdmTime": np.full(length, -round(float(
                  rng.uniform(0.01, 0.1) if rng.random() < 0.3 else rng.lognormal(3, 1.8)), 2)),
              "ICULOS": t + 1.0}
    label = (t >= onset - LEAD_HOURS).astype(int) if septic else np.zeros(length, int)
    return pd.DataFrame(frame)[COLUMNS].assign(**{LABEL: label})


def write_demo(out: str | Path, sites: int = 2, patients: int = 300, septic_share: float = 0.08,
               seed: int = 0, progress=None) -> list[Path]:
    """Write ``patients`` stays per site; returns the site folders. ``progress(done)``.

    ``septic_share``: of all stays; odd-numbered sites get 1.2x, even ones 0.8x (as the
    challenge's hospital A has more septic stays than B)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    folders, done = [], 0
    for k in range(sites):
        folder = out / f"site-{k + 1}"
        share = septic_share * (1.2 if k % 2 == 0 else 0.8)  # hospitals differ in case mix
        for i in range(patients):
            frame = _stay(rng, bool(rng.random() < share), k % 2)
            text = frame.to_csv(sep="|", index=False, na_rep="NaN", float_format="%.6g")
            atomic_write_bytes(folder / f"p{k + 1}{i:05d}.psv", text.encode())
            done += 1
            if progress:
                progress(done)
        folders.append(folder)
    return folders
