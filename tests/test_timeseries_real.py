"""Real PhysioNet 2019 stays (skipped without MEDFED_DATA_DIR) and generated stays that must
look like them: prevalence, missingness, stay lengths, onset, 41 columns."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfed.datasets.timeseries.sepsis import read_stays
from medfed.datasets.timeseries.sepsis_features import COLUMNS, LABEL, LABS


def _sample() -> Path:
    root = Path(os.environ.get("MEDFED_DATA_DIR", "/nonexistent")) / "physionet2019-sample"
    if not (root / "training_setA").is_dir() or not (root / "training_setB").is_dir():
        pytest.skip("MEDFED_DATA_DIR/physionet2019-sample (training_setA, training_setB) absent")
    return root


def character(raw: pd.DataFrame, stays: np.ndarray) -> dict[str, float]:
    """The figures the generator must reproduce."""
    label = raw[LABEL].to_numpy()
    lengths = np.bincount(stays)
    first = pd.Series(label).groupby(stays).apply(
        lambda s: int(np.argmax(s.to_numpy())) if s.max() > 0 else -1).to_numpy()
    return {"positive_hours": float(label.mean()),
            "septic_stays": float((first >= 0).mean()),
            "lab_cells_missing": float(raw[LABS].isna().to_numpy().mean()),
            "labs_never_measured": float(1 - raw[LABS].notna().groupby(stays).any()
                                         .to_numpy().mean()),
            "shortest": int(lengths.min()), "longest": int(lengths.max()),
            "median_hours": float(np.median(lengths)),
            "first_label_hour": int(first[first >= 0].min())}


def test_real_sample_shape_and_prevalence():
    root = _sample()
    header = (root / "training_setA" / "p000001.psv").read_text().splitlines()[0].split("|")
    assert header == [*COLUMNS, LABEL] and len(header) == 41
    raw, stays, sites = read_stays(root)
    assert sorted(set(sites)) == ["training_setA", "training_setB"]
    assert stays.max() + 1 == 2000 and len(raw) == 38_809 + 38_917
    seen = character(raw, stays)
    assert 0.015 < seen["positive_hours"] < 0.022  # 1.84 %
    assert seen["septic_stays"] == pytest.approx(150 / 2000)
    assert 0.93 < seen["lab_cells_missing"] < 0.96
    assert seen["shortest"] >= 8 and seen["longest"] <= 336


def test_real_sample_loads_with_split_by_stay():
    from medfed.datasets.timeseries.sepsis import load

    data = load(str(_sample()), max_stays=150, seed=42)
    assert data.x.shape[0] == len(data.y) and np.isfinite(data.x).all()
    for site in np.unique(data.groups):
        rows = data.groups == site
        train = np.unique(data.y[rows & (data.split == "train"), 1])
        test = np.unique(data.y[rows & (data.split == "test"), 1])
        assert not set(train) & set(test) and len(test) == 45  # 30 % of 150 stays


def test_generator_reproduces_the_real_character(tmp_path):
    from medfed.datasets.timeseries.sepsis_demo import write_demo

    folders = write_demo(tmp_path, sites=2, patients=400, seed=5)
    header = next(folders[0].glob("*.psv")).read_text().splitlines()[0].split("|")
    assert header == [*COLUMNS, LABEL]
    raw, stays, _ = read_stays(tmp_path)
    made = character(raw, stays)
    assert 0.012 < made["positive_hours"] < 0.024
    assert 0.05 < made["septic_stays"] < 0.11
    assert 0.92 < made["lab_cells_missing"] < 0.97
    assert 0.3 < made["labs_never_measured"] < 0.55
    assert made["shortest"] >= 8 and made["longest"] <= 336 and 30 <= made["median_hours"] <= 46
    assert made["first_label_hour"] >= 0  # onset = first label + 6 h >= 6 h into the stay
    if "MEDFED_DATA_DIR" in os.environ and (Path(os.environ["MEDFED_DATA_DIR"])
                                            / "physionet2019-sample").is_dir():
        real = character(*read_stays(_sample())[:2])
        for key in ("positive_hours", "lab_cells_missing", "labs_never_measured"):
            assert made[key] == pytest.approx(real[key], rel=0.25), key
