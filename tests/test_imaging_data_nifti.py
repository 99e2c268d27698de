"""NIfTI reading: RAS orientation, mask geometry, resampling; nibabel's and pyradiomics' files."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfed.datasets.imaging.dicom import DicomProblem
from medfed.datasets.imaging.nifti import read_nifti, resample
from medfed.datasets.imaging.volume import load_image, load_mask

NIBABEL_DATA = Path(nib.__file__).parent / "tests" / "data"


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(array, affine), path)
    return path


def test_lps_oriented_volume_is_flipped_to_ras(tmp_path):
    array = np.arange(4 * 5 * 3, dtype=np.float32).reshape(4, 5, 3)
    lps = np.diag([-2.0, -1.0, 3.0, 1.0])  # X runs to the left, Y to the back
    data, affine, _ = read_nifti(save(tmp_path / "a.nii.gz", array, lps))
    np.testing.assert_array_equal(data, array[::-1, ::-1, :])
    assert np.all(np.diag(affine)[:3] > 0)
    assert tuple(np.abs(np.diag(affine))[:3]) == (2.0, 1.0, 3.0)


def test_axes_permuted_volume_is_reordered(tmp_path):
    array = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    affine = np.zeros((4, 4))
    affine[2, 0], affine[0, 1], affine[1, 2], affine[3, 3] = 2.0, 1.0, 1.5, 1.0  # (S, R, A)
    data, new_affine, _ = read_nifti(save(tmp_path / "p.nii.gz", array, affine))
    assert data.shape == (4, 5, 3)
    np.testing.assert_array_equal(data, np.transpose(array, (1, 2, 0)))
    np.testing.assert_allclose(np.diag(new_affine)[:3], [1.0, 1.5, 2.0])


def test_mask_shape_mismatch_detected(tmp_path):
    image = save(tmp_path / "img.nii.gz", np.zeros((8, 8, 4), np.float32), np.eye(4))
    mask = save(tmp_path / "m.nii.gz", np.zeros((8, 8, 5), np.uint8), np.eye(4))
    with pytest.raises(DicomProblem) as info:
        load_mask(mask, load_image(image))
    assert info.value.kind == "mask_shape" and "(8, 8, 5)" in str(info.value)


def test_mask_spacing_mismatch_detected(tmp_path):
    image = save(tmp_path / "img.nii.gz", np.zeros((8, 8, 4), np.float32), np.eye(4))
    mask = save(tmp_path / "m.nii.gz", np.zeros((8, 8, 4), np.uint8),
                np.diag([1.0, 1.0, 2.0, 1.0]))
    with pytest.raises(DicomProblem) as info:
        load_mask(mask, load_image(image))
    assert info.value.kind == "mask_geometry"


def test_resample_to_spacing():
    array = np.zeros((10, 10, 4), np.float32)
    array[4:6, 4:6, :] = 1
    out = resample(array, (1.0, 1.0, 2.5), (2.0, 2.0, 1.25))
    assert out.shape == (5, 5, 8)
    mask = resample(array.astype(np.int64), (1.0, 1.0, 2.5), (0.5, 0.5, 2.5), nearest=True)
    assert mask.shape == (20, 20, 4) and set(np.unique(mask)) == {0, 1}


def test_nibabel_real_files():
    anatomical = load_image(NIBABEL_DATA / "anatomical.nii")
    assert anatomical.array.ndim == 3 and anatomical.fmt == "nifti"
    with pytest.raises(DicomProblem) as info:
        load_image(NIBABEL_DATA / "example4d.nii.gz")
    assert info.value.kind == "mixed_volumes"
    one = load_image(NIBABEL_DATA / "example4d.nii.gz", volume_index=1)
    assert one.array.ndim == 3


def test_truncated_nifti_reported(tmp_path):
    path = save(tmp_path / "img.nii.gz", np.ones((16, 16, 8), np.float32), np.eye(4))
    data = path.read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomProblem) as info:
        load_image(tmp_path / "cut.nii.gz")
    assert info.value.kind in ("truncated", "unreadable")


def test_pyradiomics_volumes_and_masks_share_geometry(shared_data):
    folder = shared_data / "nifti-pyradiomics"
    if not (folder / "brain1_image.nii.gz").is_file():
        pytest.skip("nifti-pyradiomics not in MEDFED_DATA_DIR")
    for case, shape in (("brain1", (256, 256, 25)), ("breast1", None)):
        image = load_image(folder / f"{case}_image.nii.gz")
        mask = load_mask(folder / f"{case}_label.nii.gz", image)
        assert mask.shape == image.shape
        if shape:
            assert image.shape == shape
        assert set(np.unique(mask)) == {0, 1}
        # a real lesion: the masked voxels differ in intensity from the rest
        assert abs(image.array[mask == 1].mean() - image.array[mask == 0].mean()) > 1.0
