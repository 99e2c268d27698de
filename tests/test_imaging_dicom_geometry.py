"""Real DICOM quirks: gantry tilt and uneven slice gaps are named and resampled to the true
geometry (generated series of a known sphere, and the real GE head CT when present)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfed.datasets.imaging.check import check_site
from medfed.datasets.imaging.demo import dicom_slices
from medfed.datasets.imaging.dicom import DicomProblem, read_dicom
from medfed.datasets.imaging.manifest import manifest_rows, read_manifest
from medfed.datasets.imaging.site_folders import load_row
from medfed.datasets.imaging.volume import load_image
from medfed.errors import MedFedError

SPHERE_LPS = np.array([3.0, -4.0, 18.0])  # mm, patient (LPS) coordinates
RADIUS = 9.0
PIXEL = 1.0
SIZE = 40


def sphere_series(folder: Path, tilt_deg: float, gaps: list[float]) -> None:
    """A CT series of a 400 HU sphere (radius 9 mm) in -1000 HU air: rows tilted by
    ``tilt_deg`` about the patient's left-right axis (a gantry tilt), slice origins advancing
    along the table (z) by ``gaps``; every pixel's value is the truth at its own position."""
    t = np.radians(tilt_deg)
    row_dir, col_dir = np.array([1.0, 0.0, 0.0]), np.array([0.0, np.cos(t), -np.sin(t)])
    origins = [np.array([-SIZE / 2, -SIZE / 2, 0.0])]
    for gap in gaps:
        origins.append(origins[-1] + [0.0, 0.0, gap])
    ii, jj = np.meshgrid(np.arange(SIZE), np.arange(SIZE), indexing="ij")  # rows, cols
    volume = []
    for origin in origins:
        points = origin + jj[..., None] * PIXEL * row_dir + ii[..., None] * PIXEL * col_dir
        inside = np.linalg.norm(points - SPHERE_LPS, axis=-1) <= RADIUS
        volume.append(np.where(inside, 400.0, -1000.0))
    slices = dicom_slices(np.asarray(volume, np.float32), 1, 1, PIXEL, 1.0, 50, "F")
    folder.mkdir(parents=True)
    for k, (ds, origin) in enumerate(zip(slices, origins, strict=True)):
        ds.ImageOrientationPatient = [*row_dir, *col_dir]
        ds.ImagePositionPatient = [float(v) for v in origin]
        ds.save_as(folder / f"{(k * 7) % len(slices):03d}.dcm", enforce_file_format=True)


def sphere_in_ras(volume) -> tuple[np.ndarray, float]:
    """(centroid in RAS mm, volume in mm^3) of the voxels above 0 HU."""
    inside = np.argwhere(volume.array > -300)
    centroid = volume.affine[:3, :3] @ inside.mean(axis=0) + volume.affine[:3, 3]
    return centroid, len(inside) * float(np.prod(volume.spacing))


TRUE_RAS = SPHERE_LPS * [-1.0, -1.0, 1.0]
TRUE_VOLUME = 4 / 3 * np.pi * RADIUS ** 3


@pytest.mark.parametrize("tilt, gaps, named", [
    (20.0, [2.0] * 17, "gantry tilt 20.0 deg"),
    (0.0, [2.0] * 6 + [3.5] * 6 + [1.0] + [2.0] * 3, "uneven slice gaps"),
    # gaps along the slice normal: the table steps x cos(15 deg)
    (15.0, [1.5] * 8 + [3.0] * 2 + [2.5] * 6, "gantry tilt 15.0 deg (slices sheared along the "
     "table); uneven slice gaps (1.45 mm x8, 2.41 mm x6, 2.9 mm x2)"),
])
def test_irregular_series_named_and_resampled_to_true_geometry(tmp_path, tilt, gaps, named):
    sphere_series(tmp_path / "s", tilt, gaps)
    as_stored = load_image(tmp_path / "s")
    assert named in as_stored.dicom.irregular
    assert any("dataset.options.spacing" in n for n in as_stored.notes)
    fixed = load_image(tmp_path / "s", spacing=(1.0, 1.0, 1.0))
    assert not fixed.notes and fixed.regridded == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(np.diag(fixed.affine)[:3], [1.0, 1.0, 1.0])
    assert np.count_nonzero(fixed.affine[:3, :3] - np.diag(np.diag(fixed.affine[:3, :3]))) == 0
    centroid, size = sphere_in_ras(fixed)
    np.testing.assert_allclose(centroid, TRUE_RAS, atol=0.5)
    assert size == pytest.approx(TRUE_VOLUME, rel=0.08)


def test_tilted_stack_used_as_regular_would_misplace_the_sphere(tmp_path):
    """What the resampling fixes: the stacked array with a plain orthogonal affine puts the
    sphere several mm off (why MedFed never trains on it without `spacing`)."""
    sphere_series(tmp_path / "s", 20.0, [2.0] * 17)
    image = read_dicom(tmp_path / "s")
    normal = np.cross(image.orientation[:3], image.orientation[3:])
    heights = image.positions @ normal
    regular = image.affine.copy()
    regular[:3, 2] = np.diag([-1.0, -1.0, 1.0]) @ normal * float(np.median(np.diff(heights)))
    from medfed.datasets.imaging.volume import dicom_to_ras

    array, affine = dicom_to_ras(image.pixels, regular)
    inside = np.argwhere(array > -300)
    naive = affine[:3, :3] @ inside.mean(axis=0) + affine[:3, 3]
    assert np.linalg.norm(naive - TRUE_RAS) > 3.0


def test_training_refuses_irregular_series_without_spacing(tmp_path):
    sphere_series(tmp_path / "site" / "s", 20.0, [2.0] * 9)
    pd.DataFrame({"patient_id": ["P1"], "image": ["s"], "label": ["1"]}).to_csv(
        tmp_path / "site" / "manifest.csv", index=False)
    row = manifest_rows(tmp_path / "site", read_manifest(tmp_path / "site"))[0]
    params = {"task": "classification", "spatial_size": [16, 16, 8], "window": None,
              "spacing": None, "series_uid": None, "volume_index": None, "as_slices": False,
              "slice_axis": 2}
    with pytest.raises(MedFedError, match="irregular slice geometry.*gantry tilt.*spacing"):
        load_row(row, params, "site s row 1")
    x, _ = load_row(row, {**params, "spacing": [2.0, 2.0, 2.0]}, "site s row 1")
    assert x.shape == (1, 1, 16, 16, 8)


def test_data_check_warns_with_the_fix_but_passes(tmp_path):
    sphere_series(tmp_path / "site" / "s", 0.0, [2.0] * 5 + [5.0] * 4)
    pd.DataFrame({"patient_id": ["P1"], "image": ["s"], "label": ["1"]}).to_csv(
        tmp_path / "site" / "manifest.csv", index=False)
    result = check_site(tmp_path / "site")
    assert result.ok, result.lines()
    (line,) = result.warnings()
    assert line.startswith("row 1: warning: irregular slice geometry: uneven slice gaps "
                           "(2 mm x5, 5 mm x4)")
    assert "dataset.options.spacing" in line


def test_one_missing_file_is_still_a_missing_file(tmp_path):
    sphere_series(tmp_path / "s", 0.0, [2.0] * 3 + [4.0] + [2.0] * 3)
    with pytest.raises(DicomProblem, match="a file is missing") as info:
        read_dicom(tmp_path / "s")
    assert info.value.kind == "geometry"


GE = "dicom-real/ge_hispeed_head_gantry_tilt_varspacing/series"


@pytest.fixture
def ge_series() -> Path:
    root = os.environ.get("MEDFED_DATA_DIR")
    if not root or not (Path(root) / GE).is_dir():
        pytest.skip("MEDFED_DATA_DIR with the real GE gantry-tilt head CT not available")
    return Path(root) / GE


def head_agreement(image, array: np.ndarray, affine: np.ndarray, n: int = 4000) -> float:
    """Share of random source pixels whose tissue class (head > -300 HU, else air) is the
    class of the voxel holding their true position in (``array``, RAS ``affine``)."""
    rng = np.random.default_rng(0)
    k = rng.integers(0, len(image.pixels), n)
    rows = rng.integers(0, image.pixels.shape[1], n)
    cols = rng.integers(0, image.pixels.shape[2], n)
    row_dir, col_dir = image.orientation[:3], image.orientation[3:]
    lps = (image.positions[k] + cols[:, None] * image.pixel_spacing[1] * row_dir
           + rows[:, None] * image.pixel_spacing[0] * col_dir)
    ras = lps * [-1.0, -1.0, 1.0]
    index = np.rint((np.linalg.inv(affine) @ np.c_[ras, np.ones(n)].T)[:3]).astype(int)
    inside = np.all((index >= 0) & (index < np.asarray(array.shape)[:, None]), axis=0)
    truth = image.pixels[k, rows, cols] > -300
    found = np.zeros(n, bool)
    found[inside] = array[tuple(index[:, inside])] > -300
    return float(np.mean(found == truth))


def test_real_gantry_tilt_head_ct(ge_series, tmp_path):
    """GE HiSpeed: +18.5 deg tilt, gaps 4 mm x13, 7 mm x13, 1.08 mm x1 (dcm_qa_ct): named by
    `data check`, and resampled so every slice's pixels land where they were acquired."""
    image = read_dicom(ge_series)
    assert image.irregular == ("gantry tilt 18.5 deg (slices sheared along the table); uneven "
                               "slice gaps (4 mm x13, 7 mm x13, 1.08 mm x1)")
    site = tmp_path / "site"
    shutil.copytree(ge_series, site / "ct")
    pd.DataFrame({"patient_id": ["P1"], "image": ["ct"], "label": ["0"]}).to_csv(
        site / "manifest.csv", index=False)
    result = check_site(site)
    assert result.ok and "gantry tilt 18.5 deg" in result.warnings()[0]
    fixed = load_image(ge_series, spacing=(2.0, 2.0, 2.0))
    assert head_agreement(image, fixed.array, fixed.affine) > 0.97
    # stacked as if regular (orthogonal affine, median gap): far from where pixels belong
    normal = np.cross(image.orientation[:3], image.orientation[3:])
    regular = image.affine.copy()
    regular[:3, 2] = [-normal[0] * 4.0, -normal[1] * 4.0, normal[2] * 4.0]
    from medfed.datasets.imaging.volume import dicom_to_ras

    naive, naive_affine = dicom_to_ras(image.pixels, regular)
    assert head_agreement(image, naive, naive_affine) < 0.9
