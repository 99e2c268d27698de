"""Sepsis features never look into the future; stays are never split; .psv input is checked."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from medfed.datasets.timeseries.sepsis_features import (
    COLUMNS,
    LABEL,
    clinical_features,
    hourly_features,
    sequence_features,
)
from medfed.errors import MedFedError


def _stays(hours=(20, 15), seed=0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two stays of hourly rows: HR most hours, Lactate rarely, the rest never."""
    rng = np.random.default_rng(seed)
    frames = []
    for n in hours:
        frame = pd.DataFrame(np.nan, index=range(n), columns=[*COLUMNS, LABEL])
        frame["HR"] = np.where(rng.random(n) < 0.8, rng.normal(85, 10, n), np.nan)
        frame["Lactate"] = np.where(rng.random(n) < 0.15, rng.normal(2, 0.5, n), np.nan)
        frame["Age"], frame["ICULOS"], frame[LABEL] = 60.0, np.arange(1, n + 1), 0
        frames.append(frame)
    stays = np.concatenate([np.full(n, i) for i, n in enumerate(hours)])
    return pd.concat(frames, ignore_index=True), stays


@pytest.mark.parametrize("planted_hour", [0, 5, 13])
@pytest.mark.parametrize("column", ["HR", "Lactate", "WBC"])
def test_planted_value_never_seen_before_its_hour(planted_hour, column):
    raw, stays = _stays()
    planted = raw.copy()
    planted.loc[planted_hour, column] = 500.0  # stay 0, hour t
    before, after = (hourly_features(r, stays, (3, 6, 12)).to_numpy() for r in (raw, planted))
    rich_before, rich_after = (clinical_features(r, stays, (6, 24)).to_numpy()
                               for r in (raw, planted))
    seq_before, seq_after = (sequence_features(r, stays, hours=6) for r in (raw, planted))
    rows_before_t = np.arange(planted_hour)
    np.testing.assert_array_equal(before[rows_before_t], after[rows_before_t])
    np.testing.assert_array_equal(seq_before[rows_before_t], seq_after[rows_before_t])
    np.testing.assert_array_equal(rich_before[rows_before_t], rich_after[rows_before_t])
    assert not np.array_equal(before[planted_hour], after[planted_hour])  # hour t sees it
    assert not np.array_equal(rich_before[planted_hour], rich_after[planted_hour])
    np.testing.assert_array_equal(rich_before[stays == 1], rich_after[stays == 1])
    other_stay = stays == 1  # and no other stay ever does
    np.testing.assert_array_equal(before[other_stay], after[other_stay])


def test_forward_fill_within_stay_and_indicators():
    raw, stays = _stays()
    raw["WBC"] = np.nan
    raw.loc[3, "WBC"] = 12.0  # stay 0, hour 3
    raw.loc[20, "WBC"] = np.nan  # stay 1 starts at row 20: must not inherit stay 0's value
    features = hourly_features(raw, stays, (3,))
    assert features.loc[4:19, "WBC"].eq(12.0).all()
    assert features.loc[20:, "WBC"].ne(12.0).all()
    assert features.loc[3, "WBC_missing"] == 0 and features.loc[4, "WBC_missing"] == 1
    # trend over 3 h at hour 6 compares with hour 3's filled value
    assert features.loc[6, "WBC_trend3h"] == 0.0


def test_clinical_features_hand_stay():
    raw, stays = _stays((6,))
    raw["HR"] = [100.0, np.nan, 80, 80, 80, 80]
    raw["Resp"], raw["SBP"], raw["Temp"] = 24.0, [90.0, 90, 90, 120, 120, 120], 37.0
    raw["Platelets"] = [np.nan, 200.0, np.nan, np.nan, 90.0, np.nan]
    raw["Lactate"] = np.nan
    f = clinical_features(raw, stays, (6,))
    # hour 1: HR carried from hour 0 (> 90), Resp > 20: SIRS 2; Resp >= 22, SBP <= 100: qSOFA 2
    assert f.loc[1, "sirs"] == 2 and f.loc[1, "qsofa"] == 2 and f.loc[3, "qsofa"] == 1
    assert f.loc[1, "shock_index"] == pytest.approx(100 / 90)
    assert f.loc[1, "HR_since"] == pytest.approx(np.log1p(1))  # measured 1 h ago
    assert f.loc[3, "Platelets_since"] == pytest.approx(np.log1p(2))
    assert f.loc[0, "Platelets_since"] == pytest.approx(np.log1p(72))  # never: the cap
    # platelets 200 -> 90: partial SOFA 0 -> 2 points, a rise of 2 within 24 h
    assert f.loc[3, "sofa_partial"] == 0 and f.loc[4, "sofa_partial"] == 2
    assert f.loc[5, "sofa_rise24h"] == 2
    assert f.loc[4, "Platelets"] == pytest.approx(np.log1p(90))  # skewed labs: log scale
    assert f.loc[5, "labs_24h"] == pytest.approx(np.log1p(2))  # two platelet counts so far
    assert f["log_iculos"].tolist() == pytest.approx(np.log1p(np.arange(1, 7)).tolist())
    assert f["icu_0_6h"].tolist() == [1, 1, 1, 1, 1, 0] and f.loc[5, "icu_6_12h"] == 1
    assert f.filter(like="icu_").sum(axis=1).eq(1).all()  # one band per hour


def test_bad_feature_options_one_line(tmp_path):
    from medfed.datasets.timeseries.sepsis import load

    with pytest.raises(MedFedError, match="features: 'fancy'"):
        load(str(tmp_path), features="fancy")
    with pytest.raises(MedFedError, match="class_weight: 'heavy'"):
        load(str(tmp_path), class_weight="heavy")


def test_sequence_padding_marks_hours_before_the_stay():
    raw, stays = _stays()
    seq = sequence_features(raw, stays, hours=4)
    assert seq.shape[:2] == (len(raw), 4)
    assert seq[0, :3, -1].tolist() == [1, 1, 1] and seq[0, 3, -1] == 0
    assert seq[20, :3, -1].tolist() == [1, 1, 1]  # first hour of stay 1: no stay-0 history


def _psv(path, frame):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(frame.to_csv(sep="|", index=False, na_rep="NaN"))
    return path


def test_patient_level_split_and_partition(tmp_path):
    from medfed.datasets.sites import build_sites
    from medfed.datasets.timeseries.sepsis import load
    from medfed.datasets.timeseries.sepsis_demo import write_demo

    write_demo(tmp_path / "d", sites=2, patients=40, septic_share=0.25, seed=3)
    data = load(str(tmp_path / "d"))
    for scheme, n in (("natural", 2), ("iid", 3)):
        sites = build_sites(data, scheme, n, min_size=5)
        seen: dict[int, tuple[str, str]] = {}
        for site in sites:
            for split, y in (("train", site.y_train), ("test", site.y_test)):
                for stay in np.unique(y[:, 1]).astype(int):
                    assert seen.setdefault(stay, (site.name, split)) == (site.name, split)
                    hours = y[y[:, 1] == stay, 2]
                    assert np.array_equal(hours, np.arange(len(hours)))  # whole stay, in order
        assert len(seen) == 80


def test_bad_psv_files_one_line(tmp_path):
    from medfed.datasets.timeseries.sepsis import load, read_stay

    raw, _ = _stays((5,))
    no_label = _psv(tmp_path / "a" / "p1.psv", raw.drop(columns=[LABEL]))
    with pytest.raises(MedFedError, match="no 'SepsisLabel' column") as info:
        read_stay(no_label)
    assert "p1.psv" in str(info.value)
    text = raw.copy().astype(object)
    text.loc[2, "HR"] = "high"
    _psv(tmp_path / "b" / "p2.psv", text)
    with pytest.raises(MedFedError, match="line 4, column 'HR' has the non-numeric value 'high'"):
        load(str(tmp_path / "b"))


def test_cli_bad_psv_exits_2(tmp_path):
    raw, _ = _stays((5,))
    _psv(tmp_path / "site" / "p1.psv", raw.drop(columns=[LABEL]))
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset:\n  name: sepsis\n  options:\n    path: {tmp_path / 'site'}\n")
    done = subprocess.run([sys.executable, "-m", "medfed.cli", "simulate", str(config),
                           "--out", str(tmp_path / "out"), "--no-track"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "SepsisLabel" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
