"""Multimodal site folders: the join per patient_id, packing, per-site scaling, bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfed.datasets.multimodal.demo import write_multimodal_sites
from medfed.datasets.multimodal.sites import load
from medfed.errors import MedFedError

CLINICAL = {"numeric": ["age", "crp"], "categorical": ["sex", "smoker"]}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("mm")
    write_multimodal_sites(out / "data", sites=2, patients=16, missing_image=0.3,
                           clinical_only_sites=1, size=16, seed=3)
    return out


def _load(demo: Path, **options):
    return load(path=str(demo / "data"), clinical=CLINICAL, spatial_size=[16, 16],
                cache_dir=str(demo / "cache"), **options)


def test_demo_sites_pack_images_clinical_and_masks(demo):
    data = _load(demo)
    assert data.x.shape == (32, 256 + 2 + 2 + 2 + 2)  # pixels, age, crp, sex x2, smoker x2, masks
    site2 = data.groups == "site-2"
    assert data.x[site2, -2].max() == 0  # the clinical-only site has no image at all
    assert 0 < data.x[~site2, -2].mean() < 1  # some patients of site-1 lack a scan
    assert not data.standardize and set(np.unique(data.split)) == {"train", "test"}
    # numeric columns are standardised per site on its training patients: mean ~0 there
    train1 = (~site2) & (data.split == "train") & (data.x[:, -1] > 0)
    assert abs(float(data.x[train1, 256].mean())) < 0.3


def test_join_patients_with_image_and_no_clinical_row_and_vice_versa(tmp_path, demo):
    site = tmp_path / "site-a"
    source = demo / "data" / "site-1"
    manifest = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    imaged = manifest[manifest["image"] != ""].head(4).copy()
    imaged["image"] = [str((source / p).resolve()) for p in imaged["image"]]
    site.mkdir()
    imaged[["patient_id", "image", "label", "split"]].to_csv(site / "manifest.csv", index=False)
    clinical = pd.DataFrame({"patient_id": [imaged["patient_id"].iloc[0], "NEW-1", "NEW-2"],
                             "age": ["50", "61", ""], "crp": ["3.1", "", "9"],
                             "sex": ["F", "M", "F"], "smoker": ["no", "yes", ""],
                             "label": [imaged["label"].iloc[0], "1", "0"],
                             "split": ["", "train", "test"]})
    clinical.to_csv(site / "clinical.csv", index=False)
    data = load(roots=[str(site)], clinical=CLINICAL, spatial_size=[16, 16],
                cache_dir=str(tmp_path / "cache"), allowed_roots=[str(source)])
    assert len(data.y) == 6  # 4 imaged patients + 2 with only a clinical row
    has_image, has_clinical = data.x[:, -2], data.x[:, -1]
    assert has_image.tolist() == [1, 1, 1, 1, 0, 0]
    assert has_clinical.tolist() == [1, 0, 0, 0, 1, 1]
    assert np.all(data.x[1:4, 256:-2] == 0)  # image, no clinical row: clinical block empty
    assert np.all(data.x[4:, :256] == 0)  # clinical row, no image: image block empty
    assert data.split[4] == "train" and data.split[5] == "test"


def _cli_check(site: Path, clinical: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medfed.cli", "data", "check", str(site),
                           "--clinical", clinical], capture_output=True, text=True, timeout=120)


def test_bad_input_missing_clinical_column_and_duplicated_patient(tmp_path, demo):
    site = tmp_path / "site-bad"
    site.mkdir()
    frame = pd.read_csv(demo / "data" / "site-2" / "manifest.csv", dtype=str,
                        keep_default_na=False)
    frame = pd.concat([frame, frame.iloc[[0]]])  # patient 1 twice
    frame.to_csv(site / "manifest.csv", index=False)
    done = _cli_check(site, "age,bmi,sex:cat")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "'bmi'" in done.stdout and "neither manifest.csv nor clinical.csv" in done.stdout
    assert f"patient {frame.iloc[0]['patient_id']} is duplicated" in done.stdout
    assert "Traceback" not in done.stderr
    with pytest.raises(MedFedError, match="bmi"):
        load(roots=[str(site)], clinical={"numeric": ["age", "bmi"]}, spatial_size=[16, 16],
             cache_dir=str(tmp_path / "cache"))


def test_clean_site_passes_the_cli_check(demo):
    done = _cli_check(demo / "data" / "site-1", "age,crp,sex:cat,smoker:cat")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout and "multimodal site" in done.stdout
    assert "with clinical" in done.stdout


def test_a_real_hospital_reads_its_own_multimodal_folder(demo):
    from medfed.datasets.site_folder import load_site_folder

    declared = {"numeric": ["age", "crp"],
                "categorical": {"sex": ["F", "M"], "smoker": ["no", "yes"]}}
    options = {"clinical": declared, "spatial_size": [16, 16], "cache_dir": str(demo / "cache")}
    site, data = load_site_folder(demo / "data" / "site-2", "multimodal-sites", options)
    full = _load(demo)
    assert data.x.shape[1] == full.x.shape[1]  # same packed width as in the simulation
    assert site.n_train + site.n_test == 16 and site.x_train[:, -2].max() == 0
    with pytest.raises(MedFedError, match="list the categories"):
        load_site_folder(demo / "data" / "site-2", "multimodal-sites",
                         {**options, "clinical": CLINICAL})
