"""Loaders and partitioners of the spine."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfed.datasets import load_dataset
from medfed.datasets.clinical.heart_disease import preprocess, read_centre
from medfed.datasets.partition import partition_rows
from medfed.datasets.scaling import combine_moments, site_moments
from medfed.datasets.sites import build_sites
from medfed.errors import MedFedError
from tests.uci_files import write_uci_heart


def test_breast_cancer_malignant_is_positive():
    data = load_dataset("breast-cancer")
    assert data.x.shape == (569, 30) and data.x.dtype == np.float32
    assert int(data.y.sum()) == 212  # 212 malignant in the Wisconsin table


def test_uci_format_question_marks_are_missing(tmp_path):
    path = tmp_path / "processed.test.data"
    path.write_text("63.0,1.0,1.0,145.0,233.0,1.0,2.0,150.0,0.0,2.3,3.0,0.0,6.0,0\n"
                    "67.0,1.0,4.0,?,286.0,0.0,2.0,108.0,1.0,1.5,2.0,3.0,3.0,2\n"
                    "37.0,1.0,3.0,130.0,250.0,0.0,0.0,187.0,0.0,3.5,3.0,?,3.0,0\n")
    frame = read_centre(path)
    assert frame["trestbps"].isna().sum() == 1 and frame["ca"].isna().sum() == 1
    x, y, names = preprocess(frame)
    # row 2 dropped (missing trestbps); row 3 kept: its missing value is in a dropped column
    assert x.shape == (2, 13) and y.tolist() == [0, 0]
    assert "slope" not in names and "cp_1" not in names and "restecg_2" in names
    # cp 1 is the reference level (all cp dummies 0); row 3 has cp 3
    assert x[0, [names.index(f"cp_{k}") for k in (2, 3, 4)]].sum() == 0
    assert x[1, names.index("cp_3")] == 1.0 and x[0, names.index("restecg_2")] == 1.0


def test_heart_disease_natural_sites_follow_flamby_split(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFED_DATA_DIR", str(write_uci_heart(tmp_path)))
    data = load_dataset("heart-disease")
    sites = build_sites(data, "natural", 0)
    assert sorted(s.name for s in sites) == ["cleveland", "hungarian", "switzerland", "va"]
    for site in sites:
        share = site.n_test / (site.n_train + site.n_test)
        assert 0.30 < share < 0.38  # 66/34 per hospital
    assert sum(s.n_train + s.n_test for s in sites) == len(data.y)


def test_heart_disease_bad_file_names_the_file(tmp_path, monkeypatch):
    folder = write_uci_heart(tmp_path) / "heart-disease"
    (folder / "processed.va.data").write_text("1,2,3\nnot,a,number\n")
    monkeypatch.setenv("MEDFED_DATA_DIR", str(tmp_path))
    with pytest.raises(MedFedError, match="processed.va.data"):
        load_dataset("heart-disease")


def test_csv_dataset_with_site_column(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"patient_id": range(120), "age": rng.normal(60, 10, 120),
                          "smoker": rng.choice(["yes", "no"], 120),
                          "hospital": np.repeat(["a", "b", "c"], 40),
                          "outcome": rng.choice(["alive", "dead"], 120)})
    frame.to_csv(tmp_path / "export.csv", index=False)
    data = load_dataset("csv", {"path": str(tmp_path / "export.csv"), "label": "outcome",
                                "site_column": "hospital", "categorical": ["smoker"],
                                "drop_columns": ["patient_id"], "positive": "dead"})
    assert data.x.shape[0] == 120 and "patient_id" not in data.feature_names
    assert set(data.groups) == {"a", "b", "c"} and set(data.y) == {0, 1}


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "quantity"])
def test_partitions_cover_every_row_once(scheme):
    y = np.random.default_rng(0).integers(0, 2, 600)
    parts = partition_rows(y, scheme, 5, alpha=0.5, seed=3)
    rows = np.concatenate([p for _, p in parts])
    assert len(parts) == 5 and len(rows) == 600 and len(np.unique(rows)) == 600


def test_dirichlet_skews_labels_and_quantity_skews_sizes():
    y = np.random.default_rng(0).integers(0, 2, 1000)
    iid = [y[p].mean() for _, p in partition_rows(y, "iid", 5, seed=1)]
    skew = [y[p].mean() for _, p in partition_rows(y, "dirichlet", 5, alpha=0.3, seed=1)]
    assert np.std(skew) > 3 * np.std(iid)
    sizes = [len(p) for _, p in partition_rows(y, "quantity", 5, alpha=0.5, seed=1)]
    assert max(sizes) > 2 * min(sizes) and sum(sizes) == 1000


def test_federated_moments_equal_pooled_statistics():
    rng = np.random.default_rng(0)
    parts = [rng.normal(i, 1 + i, size=(50 + 10 * i, 4)) for i in range(3)]
    mean, std = combine_moments(site_moments(p) for p in parts)
    pooled = np.concatenate(parts)
    np.testing.assert_allclose(mean, pooled.mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, pooled.std(0), rtol=1e-4)


def test_natural_partition_without_site_column_is_a_clear_error():
    data = load_dataset("breast-cancer")
    with pytest.raises(MedFedError, match="site column"):
        build_sites(data, "natural", 3)
