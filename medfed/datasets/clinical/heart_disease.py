"""UCI Heart Disease: four hospitals (Cleveland, Hungarian, Switzerland, VA Long Beach).

Files: ``processed.<centre>.data`` (no header, ``?`` for missing, ``num`` 0-4). Preprocessing
follows FLamby's Fed-Heart-Disease so results compare with that benchmark: drop slope, ca and
thal, drop rows with a missing value, one-hot chest-pain type and resting ECG, label
``num > 0``, and a per-hospital 66/34 train/test split with seed 43, stratified when each class
has 3+ patients. On the real files that gives train/test 199/104 (Cleveland), 172/89
(Hungary), 30/16 (Switzerland: 45 with disease, 1 without, so a random split that leaves
the one negative in test) and 85/45 (VA), FLamby's sizes.

A real hospital's folder holds ONE such table (``load_site``): the UCI format, or a CSV whose
header names the 14 columns; same preprocessing and 66/34 split as in simulation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.files import ensure_file
from medfed.datasets.site_folder import table_file
from medfed.datasets.splits import MIN_SITE_ROWS, split_column, split_rows
from medfed.errors import MedFedError

URL = "https://archive.ics.uci.edu/ml/machine-learning-databases/heart-disease/"
CENTRES = {  # site name -> (file, SHA-256 of the UCI original)
    "cleveland": ("processed.cleveland.data",
                  "a74b7efa387bc9d108d7d0115d831fe9b414b29ae7124f331b622b4efa0427c8"),
    "hungarian": ("processed.hungarian.data",
                  "d1ad108f785768cd3d7e82dc522e6f5a61eea93cccfb3a46ee8076f73fc3d796"),
    "switzerland": ("processed.switzerland.data",
                    "834a405ccf5b66ab4056bb77794adc8df0b7125186454c0a1d002d33c6c3b314"),
    "va": ("processed.va.data",
           "e7c93d8d0d2acdadfa4c5e8de768e2191e7f618b952e29623f1f0d5949ff6b8f"),
}
COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
           "oldpeak", "slope", "ca", "thal", "num"]
# FLamby one-hots with drop_first: cp 1 and restecg 0 are the reference levels (13 features)
ONE_HOT = {"cp": [2, 3, 4], "restecg": [1, 2]}
SPLIT_SEED = 43
TEST_FRACTION = 0.34


def read_centre(path: str | Path) -> pd.DataFrame:
    """One ``processed.*.data`` file as a frame of the 14 UCI columns (NaN for ``?``)."""
    try:
        frame = pd.read_csv(path, header=None, names=COLUMNS, na_values=["?"])
        frame = frame.apply(pd.to_numeric, errors="raise")
    except (ValueError, pd.errors.ParserError) as exc:
        raise MedFedError(f"{path}: not in the UCI processed format (14 comma-separated numbers, "
                          f"'?' for missing): {str(exc).splitlines()[0]}") from None
    if frame.shape[1] != len(COLUMNS) or frame.empty:
        raise MedFedError(f"{path}: expected 14 columns per row ({', '.join(COLUMNS)})")
    return frame


def preprocess(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """FLamby's convention: (features (N, 13) float32, labels (N,), feature names)."""
    frame = frame.drop(columns=["slope", "ca", "thal"]).dropna()
    y = (frame.pop("num") > 0).astype(np.int64).to_numpy()
    for column, levels in ONE_HOT.items():
        values = frame.pop(column)
        for level in levels:
            frame[f"{column}_{level}"] = (values == level).astype(np.float32)
    return frame.to_numpy(np.float32), y, list(frame.columns)


def flamby_split(y: np.ndarray, where: str) -> np.ndarray:
    """Train rows of one hospital: FLamby's 66/34 split with seed 43, stratified only when
    each class has 3+ patients (Switzerland, 45 with disease and 1 without, is not)."""
    train, _ = split_rows(np.arange(len(y)), y, TEST_FRACTION, SPLIT_SEED, "binary",
                          min_rows=MIN_SITE_ROWS, min_class_rows=3, where=where,
                          fix="this hospital needs more patients with all 13 features")
    return train


def load(centres: list[str] | None = None) -> TableDataset:
    names = centres or list(CENTRES)
    unknown = sorted(set(names) - set(CENTRES))
    if unknown:
        raise MedFedError(f"dataset.options.centres: unknown {unknown}; "
                          f"choose from {list(CENTRES)}")
    xs, ys, groups, splits = [], [], [], []
    feature_names: list[str] = []
    for centre in names:
        filename, sha = CENTRES[centre]
        x, y, feature_names = preprocess(read_centre(ensure_file("heart-disease", filename,
                                                                 URL + filename, sha)))
        idx_train = flamby_split(y, f"heart-disease site {centre!r}, {filename}")
        xs.append(x), ys.append(y), splits.append(split_column(len(y), idx_train))
        groups.append(np.full(len(y), centre, dtype=object))
    return TableDataset(
        name="heart-disease", task="binary", x=np.concatenate(xs), y=np.concatenate(ys),
        feature_names=feature_names, groups=np.concatenate(groups), split=np.concatenate(splits),
        class_names=["no disease", "disease"], unit="patient", source=URL,
    )


def read_site_table(path: Path) -> pd.DataFrame:
    """A hospital's export: the UCI format, or a CSV with a header naming the 14 columns."""
    with path.open(errors="replace") as handle:
        first = handle.readline().lower()
    if "age" not in first:
        return read_centre(path)
    try:  # a header row: read by name, in the UCI order
        frame = pd.read_csv(path, na_values=["?"])
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise MedFedError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise MedFedError(f"{path}: columns {missing} missing; the heart-disease format "
                          f"has {', '.join(COLUMNS)}")
    try:
        return frame[COLUMNS].apply(pd.to_numeric, errors="raise")
    except ValueError as exc:
        raise MedFedError(f"{path}: non-numeric value ({exc}); use numbers and '?' for "
                          "missing") from None


def load_site(path: Path, options: dict[str, Any], *, test_fraction: float,
              seed: int) -> TableDataset:
    """One hospital's table with its 66/34 split (this module's fraction and seed, not the
    federation's: the split is FLamby's)."""
    x, y, features = preprocess(read_site_table(path))
    if len(y) == 0:
        raise MedFedError(f"{path}: every row has a missing value; no patient left to train on")
    train = flamby_split(y, str(path))
    return TableDataset(name=path.stem, task="binary", x=x, y=y, feature_names=features,
                        split=split_column(len(y), train),
                        class_names=["no disease", "disease"], unit="patient",
                        source=str(path))


DATASET = Dataset(
    name="heart-disease", task="binary", default_model="logreg",
    description="UCI Heart Disease, 4 hospitals (740 patients after FLamby's preprocessing)",
    natural_sites=True, load_federation=load, load_site=load_site, site_file=table_file)
