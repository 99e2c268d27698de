"""The `site-folders` dataset: contract with models/tasks, splits by patient, the disk cache."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from medfed.datasets import load_dataset
from medfed.datasets.imaging.demo import write_demo_sites
from medfed.datasets.sites import build_sites
from medfed.errors import MedFedError


@pytest.fixture(scope="module")
def cls_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    return write_demo_sites(root, 2, "classification", "dicom", 2, patients=10, size=24)


@pytest.fixture(scope="module")
def seg_sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    return write_demo_sites(root, 2, "segmentation", "nifti", 3, patients=5, size=16)


def test_classification_contract(cls_sites, tmp_path):
    data = load_dataset("site-folders", {"roots": [str(p) for p in cls_sites],
                                         "spatial_size": [20, 20], "window": "soft_tissue",
                                         "cache_dir": str(tmp_path)})
    assert data.x.shape == (20, 1, 20, 20) and data.x.dtype == np.float32
    assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0
    assert data.y.shape == (20,) and data.y.dtype == np.int64
    assert data.task == "binary" and data.class_names == ["0", "1"] and not data.standardize
    assert list(data.groups) == ["site-1"] * 10 + ["site-2"] * 10
    manifest = pd.concat([pd.read_csv(p / "manifest.csv") for p in cls_sites])
    assert list(data.split) == manifest["split"].tolist()
    assert data.y.tolist() == manifest["label"].tolist()
    sites = build_sites(data, "natural", 2)
    assert [s.name for s in sites] == ["site-1", "site-2"]
    assert sum(s.n_test for s in sites) == int((manifest["split"] == "test").sum())
    # positives carry a bright lesion: the label is in the pixels
    assert data.x[data.y == 1].max(axis=(1, 2, 3)).mean() > data.x[data.y == 0].max(
        axis=(1, 2, 3)).mean()


def test_second_load_reads_the_cache_not_dicom(cls_sites, tmp_path, monkeypatch):
    options = {"roots": [str(cls_sites[0])], "spatial_size": [16, 16],
               "cache_dir": str(tmp_path)}
    first = load_dataset("site-folders", options)
    import medfed.datasets.imaging.site_folders as site_folders

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded DICOM although the cache holds the row")

    monkeypatch.setattr(site_folders, "load_image", no_decoding)
    second = load_dataset("site-folders", options)
    np.testing.assert_array_equal(np.asarray(first.x), np.asarray(second.x))
    assert isinstance(second.x, np.memmap)
    # a changed preprocessing option is a different cache entry: it must decode again
    with pytest.raises(AssertionError, match="decoded"):
        load_dataset("site-folders", {**options, "spatial_size": [12, 12]})


def test_split_by_patient_when_manifest_has_none(cls_sites, tmp_path):
    site = tmp_path / "site"
    frame = pd.read_csv(cls_sites[0] / "manifest.csv").drop(columns="split")
    frame["image"] = [str(cls_sites[0] / p) for p in frame["image"]]  # absolute paths work
    frame["patient_id"] = [f"P{i // 2}" for i in range(len(frame))]  # two rows per patient
    site.mkdir()
    frame.to_csv(site / "manifest.csv", index=False)
    data = load_dataset("site-folders", {"roots": [str(site)], "spatial_size": [16, 16],
                                         "cache_dir": str(tmp_path / "c"),
                                         "allowed_roots": [str(cls_sites[0])]})
    by_patient = pd.DataFrame({"p": frame["patient_id"], "s": data.split}).groupby("p")["s"]
    assert by_patient.nunique().max() == 1  # no patient in both splits
    assert set(data.split) == {"train", "test"}


def test_segmentation_contract(seg_sites, tmp_path):
    data = load_dataset("site-folders", {"roots": [str(p) for p in seg_sites],
                                         "task": "segmentation", "spatial_size": [12, 12, 8],
                                         "window": "soft_tissue", "cache_dir": str(tmp_path)})
    assert data.task == "segmentation"
    assert data.x.shape == (10, 1, 12, 12, 8) and data.y.shape == (10, 1, 12, 12, 8)
    assert data.y.dtype == np.int64 and set(np.unique(data.y)) == {0, 1}
    x = np.asarray(data.x)
    assert x[data.y == 1].mean() > x[data.y == 0].mean() + 0.2  # masks sit on the lesions


def test_bad_options_and_rows_are_one_clear_error(cls_sites, seg_sites, tmp_path):
    with pytest.raises(MedFedError, match="task"):
        load_dataset("site-folders", {"roots": [str(cls_sites[0])], "task": "regression"})
    with pytest.raises(MedFedError, match="spatial_size"):
        load_dataset("site-folders", {"roots": [str(seg_sites[0])], "task": "segmentation",
                                      "spatial_size": [16, 16], "cache_dir": str(tmp_path)})
    site = tmp_path / "s"
    site.mkdir()
    pd.DataFrame({"patient_id": ["a", "b"], "image": ["x.dcm", "y.dcm"],
                  "label": [0, 1]}).to_csv(site / "manifest.csv", index=False)
    with pytest.raises(MedFedError, match="row 1") as info:
        load_dataset("site-folders", {"roots": [str(site)], "cache_dir": str(tmp_path)})
    assert "x.dcm" not in str(info.value)  # errors may reach the coordinator: no paths
    (site / "x.dcm").write_text("not DICOM")
    with pytest.raises(MedFedError, match="row 1: unreadable") as info:
        load_dataset("site-folders", {"roots": [str(site)], "cache_dir": str(tmp_path)})
    assert "x.dcm" not in str(info.value)


def test_pyradiomics_volumes_as_slices_one_site_each(shared_data, tmp_path):
    folder = shared_data / "nifti-pyradiomics"
    if not (folder / "brain1_image.nii.gz").is_file():
        pytest.skip("nifti-pyradiomics not in MEDFED_DATA_DIR")
    roots = []
    for case in ("brain1", "brain2", "breast1"):
        site = tmp_path / case
        site.mkdir()
        pd.DataFrame({"patient_id": [case], "image": [str(folder / f"{case}_image.nii.gz")],
                      "mask": [str(folder / f"{case}_label.nii.gz")]}).to_csv(
            site / "manifest.csv", index=False)
        roots.append(str(site))
    data = load_dataset("site-folders", {"roots": roots, "task": "segmentation",
                                         "spatial_size": [32, 32], "as_slices": True,
                                         "cache_dir": str(tmp_path / "c"),
                                         "allowed_roots": [str(folder)]})
    assert data.x.shape[1:] == (1, 32, 32) and len(data.x) == 25 + 23 + 21
    sites = build_sites(data, "natural", 3)
    assert all(s.n_train > 0 and s.n_test > 0 for s in sites)
    assert any(s.y_train.any() for s in sites)


def test_multiclass_labels_in_given_order(cls_sites, tmp_path):
    site = tmp_path / "staged"
    site.mkdir()
    frame = pd.read_csv(cls_sites[0] / "manifest.csv")
    frame["image"] = [str(cls_sites[0] / p) for p in frame["image"]]
    frame["label"] = [["T1", "T2", "T3"][i % 3] for i in range(len(frame))]
    frame.to_csv(site / "manifest.csv", index=False)
    data = load_dataset("site-folders", {"roots": [str(site)], "spatial_size": [16, 16],
                                         "labels": ["T3", "T2", "T1"],
                                         "cache_dir": str(tmp_path / "c"),
                                         "allowed_roots": [str(cls_sites[0])]})
    assert data.task == "multiclass" and data.class_names == ["T3", "T2", "T1"]
    assert data.y.tolist() == [{"T3": 0, "T2": 1, "T1": 2}[v] for v in frame["label"]]
