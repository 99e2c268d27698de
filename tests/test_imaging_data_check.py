"""`medfed data check`: every problem of a folder in one pass, row numbers, exit 2; clean passes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from pydicom.data import get_testdata_file

from medfed.datasets.imaging.check import check_site
from medfed.datasets.imaging.demo import dicom_slices, write_demo_sites
from medfed.datasets.imaging.inspect_site import inspect_site
from medfed.errors import MedFedError


def series(folder: Path, number: int, n_slices: int = 3) -> list:
    volume = np.stack([np.full((8, 8), 10.0 * k) for k in range(n_slices)]).astype(np.float32)
    slices = dicom_slices(volume, 1, number, 1.0, 1.0, 50, "F")
    folder.mkdir(parents=True, exist_ok=True)
    for k, ds in enumerate(slices):
        ds.save_as(folder / f"{number}_{k}.dcm", enforce_file_format=True)
    return slices


def broken_site(root: Path) -> Path:
    """A site with one problem of each kind, on known rows."""
    site = root / "broken"
    series(site / "ok", 1)
    (site / "junk.dcm").parent.mkdir(parents=True, exist_ok=True)
    (site / "junk.dcm").write_text("not an image")
    shutil.copy(get_testdata_file("MR_truncated.dcm"), site / "cut.dcm")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), site / "img.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 6), np.uint8), np.eye(4)), site / "mask.nii.gz")
    series(site / "mixed", 2)
    series(site / "mixed", 3)  # a second series in the same folder
    series(site / "gap", 4, n_slices=5)
    next(f for f in (site / "gap").iterdir() if f.name.endswith("_2.dcm")).unlink()
    rows = [
        ("P1", "ok", "0", "", "train"),  # row 1: fine
        ("P2", "gone/series", "1", "", "train"),  # row 2: missing
        ("P3", "junk.dcm", "0", "", "train"),  # row 3: unreadable
        ("P4", "cut.dcm", "1", "", "train"),  # row 4: truncated
        ("P5", "img.nii.gz", "1", "mask.nii.gz", "train"),  # row 5: mask shape differs
        ("P6", "ok", "7", "", "train"),  # row 6: label not allowed
        ("P1", "ok", "1", "", "test"),  # row 7: P1 also in train (row 1)
        ("P8", "mixed", "0", "", "test"),  # row 8: two series in one folder
        ("P9", "gap", "0", "", "test"),  # row 9: a slice file missing from the series
    ]
    pd.DataFrame(rows, columns=["patient_id", "image", "label", "mask", "split"]).to_csv(
        site / "manifest.csv", index=False)
    (site / "labels.txt").write_text("0\n1\n")
    return site


EXPECTED = {2: "missing", 3: "unreadable", 4: "truncated", 5: "mask_shape", 6: "label",
            7: "split", 8: "mixed_series", 9: "geometry"}


def test_every_problem_in_one_pass_with_row_numbers(tmp_path):
    result = check_site(broken_site(tmp_path))
    found = {p.row: p.kind for p in result.problems}
    assert found == EXPECTED
    assert len(result.problems) == len(EXPECTED)  # one line each, row 1 is clean
    for line in result.lines():
        assert line.startswith("row ") and "fix:" in line
    assert str(tmp_path) not in " ".join(result.lines())  # paths relative to the site


def test_cli_lists_every_problem_and_exits_2(tmp_path):
    site = broken_site(tmp_path)
    done = subprocess.run([sys.executable, "-m", "medfed.cli", "data", "check", str(site)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [x for x in done.stdout.splitlines() if x.startswith("row ")]
    assert sorted(int(x.split(":")[0].split()[1]) for x in lines) == sorted(EXPECTED)
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("task,fmt,dims", [("classification", "dicom", 2),
                                           ("segmentation", "dicom", 3),
                                           ("segmentation", "nifti", 3)])
def test_demo_data_passes_check(tmp_path, task, fmt, dims):
    folders = write_demo_sites(tmp_path, 2, task, fmt, dims, patients=4, size=16)
    for folder in folders:
        result = check_site(folder)
        assert result.ok, result.lines()
        assert result.summary["rows"] == 4 and result.summary["patients"] == 4
        assert result.summary["modalities"] == {"CT" if fmt == "dicom" else "NIfTI": 4}
    with pytest.raises(MedFedError, match="already holds"):
        write_demo_sites(tmp_path, 1, task, fmt, dims, patients=4, size=16)


def test_clean_folder_cli_exit_0_and_inspect_montage(tmp_path):
    folder = write_demo_sites(tmp_path / "d", 1, "classification", "nifti", 2, patients=6)[0]
    done = subprocess.run([sys.executable, "-m", "medfed.cli", "data", "check", str(folder)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout and "patients" in done.stdout
    summary, result = inspect_site(folder, tmp_path / "m.png", samples=4)
    assert result.ok and sum(summary["labels"].values()) == 6
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_csv_site_folder(tmp_path):
    site = tmp_path / "clinic"
    site.mkdir()
    pd.DataFrame({"patient_id": ["a", "b", "c", "c"], "age": [50, 61, None, 70],
                  "label": ["1", "0", None, "3"]}).to_csv(site / "data.csv", index=False)
    (site / "labels.txt").write_text("0\n1\n")
    result = check_site(site)
    assert result.kind == "csv"
    assert {(p.row, p.kind) for p in result.problems} == {(3, "label"), (4, "label"),
                                                          (4, "patient")}
    clean = tmp_path / "clean"
    clean.mkdir()
    pd.DataFrame({"age": [50, 61, 70, 44], "label": [1, 0, 1, 0]}).to_csv(clean / "export.csv",
                                                                           index=False)
    ok = check_site(clean)
    assert ok.ok and ok.summary["labels"] == {"1": 2, "0": 2}


def test_missing_manifest_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedFedError, match="no manifest"):
        check_site(tmp_path / "empty")
