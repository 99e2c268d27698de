"""Synthetic PhysioNet-2019-style ICU stays for demos and tests (no real patient).

``write_demo(out, sites=2, patients=300)`` writes ``out/site-K/pNNNNNN.psv``: hourly rows with
the 40 challenge variables and ``SepsisLabel``. Vitals are charted most hours, labs a few
times a day (~90 % of lab cells missing), and a few % of stays become septic: in the 12 h
before onset their heart rate, respiration and temperature rise, blood pressure falls and
lactate and white cells climb, while labs are ordered more often. ``SepsisLabel`` is 1 from
6 h before onset on, as in the challenge. Sites differ a little (case mix, charting).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfed.datasets.timeseries.sepsis_features import COLUMNS, LABEL, LABS, REFERENCE, VITALS
from medfed.io import atomic_write_bytes

# per-hour chance a variable is charted
VITAL_RATE = {"HR": 0.92, "O2Sat": 0.88, "Temp": 0.33, "SBP": 0.85, "MAP": 0.88, "DBP": 0.5,
              "Resp": 0.85, "EtCO2": 0.04}
LAB_RATE = 0.06
# change at full drift (12 h into the pre-onset window) in units of the variable
SEPSIS_DRIFT = {"HR": 24, "Resp": 7, "Temp": 1.3, "SBP": -22, "MAP": -14, "DBP": -9,
                "O2Sat": -3.5, "Lactate": 2.8, "WBC": 7, "Creatinine": 0.8, "Platelets": -70,
                "Bilirubin_total": 1.0, "pH": -0.06, "HCO3": -4, "BaseExcess": -4}
LEAD_HOURS = 6  # SepsisLabel starts this many hours before onset
DRIFT_HOURS = 12


def _ramp(t: np.ndarray, start: int) -> np.ndarray:
    return np.clip((t - start) / DRIFT_HOURS, 0, 1.3)


def _stay(rng: np.random.Generator, septic: bool, site: int) -> pd.DataFrame:
    """One stay: (hours, 41) with NaN where nothing was charted."""
    onset = int(rng.integers(14, 60)) if septic else None
    length = onset + int(rng.integers(2, 10)) if septic else int(rng.integers(12, 72))
    t = np.arange(length)
    drift = _ramp(t, onset - DRIFT_HOURS) if septic else np.zeros(length)
    # other deteriorations (bleeding, post-operative fever, ...) look alike: confounders
    unstable = rng.random() < 0.3
    other = _ramp(t, int(rng.integers(0, length))) if unstable else np.zeros(length)
    frame = {}
    for name in VITALS + LABS:
        centre, spread = REFERENCE[name]
        patient = centre + 0.8 * spread * rng.standard_normal()
        noise = np.cumsum(rng.standard_normal(length)) * 0.1 * spread  # slow wander
        values = patient + noise + 0.45 * spread * rng.standard_normal(length)
        change = SEPSIS_DRIFT.get(name, 0.0)
        values += change * rng.uniform(0.0, 0.55) * drift  # not every patient shows every sign
        values += change * rng.uniform(0.0, 0.6) * other
        rate = VITAL_RATE[name] * (1.0 - 0.15 * site) if name in VITAL_RATE else (
            LAB_RATE * (1 + 1.5 * drift + 1.0 * other))  # suspicious clinicians order more labs
        charted = rng.random(length) < np.clip(rate, 0, 1)
        frame[name] = np.where(charted, np.round(values, 2), np.nan)
    frame["O2Sat"] = np.minimum(frame["O2Sat"], 100)
    unit = rng.integers(0, 3)  # 0 unknown, 1 MICU, 2 SICU
    frame |= {"Age": np.full(length, round(float(np.clip(rng.normal(62 + 3 * site, 16), 18,
                                                          90)), 1)),
              "Gender": np.full(length, float(rng.random() < 0.55)),
              "Unit1": np.full(length, np.nan if unit == 0 else float(unit == 1)),
              "Unit2": np.full(length, np.nan if unit == 0 else float(unit == 2)),
              "HospAdmTime": np.full(length, -round(float(rng.exponential(40)), 2)),
              "ICULOS": t + 1.0}
    label = (t >= onset - LEAD_HOURS).astype(int) if septic else np.zeros(length, int)
    return pd.DataFrame(frame)[COLUMNS].assign(**{LABEL: label})


def write_demo(out: str | Path, sites: int = 2, patients: int = 300, septic_share: float = 0.06,
               seed: int = 0, progress=None) -> list[Path]:
    """Write ``patients`` stays per site; returns the site folders. ``progress(done)``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    folders, done = [], 0
    for k in range(sites):
        folder = out / f"site-{k + 1}"
        share = septic_share * (1 + 0.3 * (k % 2))  # hospitals differ in case mix
        for i in range(patients):
            frame = _stay(rng, bool(rng.random() < share), k % 2)
            text = frame.to_csv(sep="|", index=False, na_rep="NaN", float_format="%.6g")
            atomic_write_bytes(folder / f"p{k + 1}{i:05d}.psv", text.encode())
            done += 1
            if progress:
                progress(done)
        folders.append(folder)
    return folders
