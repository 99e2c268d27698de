"""The three real pyradiomics MR volumes as three segmentation sites (skipped without data)."""

from __future__ import annotations

import numpy as np
import pytest

from medfed.datasets import load_dataset
from medfed.datasets.sites import build_sites


def test_three_real_volumes_become_three_sites_with_lesions_in_both_splits(
        shared_data, monkeypatch, tmp_path):
    if not (shared_data / "nifti-pyradiomics" / "breast1_label.nii.gz").is_file():
        pytest.skip("nifti-pyradiomics absent")
    monkeypatch.setenv("MEDFED_DATA_DIR", str(shared_data))
    monkeypatch.setenv("MEDFED_CACHE_DIR", str(tmp_path / "cache"))
    data = load_dataset("nifti-pyradiomics", {"spatial_size": [32, 32]})
    assert data.task == "segmentation" and data.x.shape == (69, 1, 32, 32)
    assert data.y.shape == (69, 1, 32, 32) and set(np.unique(data.y)) == {0, 1}
    sites = build_sites(data, "natural", 3)
    assert [s.name for s in sites] == ["brain1", "brain2", "breast1"]
    for site in sites:
        for masks in (site.y_train, site.y_test):
            assert (masks.reshape(len(masks), -1).max(axis=1) > 0).any()
    assert not list(shared_data.glob("nifti-pyradiomics/*.csv"))  # nothing written there
