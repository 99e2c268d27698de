"""DICOM reading: geometry ordering, rescale, multi-frame, mixed series/volumes, DICOM-SEG."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medfed.datasets.imaging.demo import dicom_seg, dicom_slices, phantom
from medfed.datasets.imaging.dicom import (
    WINDOWS,
    DicomProblem,
    apply_window,
    read_dicom,
    resolve_window,
)
from medfed.datasets.imaging.volume import load_image, load_mask
from medfed.errors import MedFedError


def write_series(folder: Path, volume: np.ndarray, slope: float = 1.0, site: int = 1,
                 number: int = 1, shuffle_seed: int = 0) -> list:
    """(slices, rows, cols) HU -> a series whose file names run opposite to geometry."""
    slices = dicom_slices(volume, site, number, 0.9, slope, 50, "F")
    order = list(range(len(slices)))
    random.Random(shuffle_seed).shuffle(order)
    if order[0] == 0:  # the first file name must not hold the first slice
        order.reverse()
    folder.mkdir(parents=True, exist_ok=True)
    for name_index, k in enumerate(order):
        slices[k].save_as(folder / f"{name_index:03d}.dcm", enforce_file_format=True)
    return slices


def ramp_volume(n_slices: int = 6, size: int = 8) -> np.ndarray:
    """Each slice a constant HU that grows with its position: order is visible in values."""
    return np.stack([np.full((size, size), 100.0 * k - 200.0, np.float32)
                     for k in range(n_slices)])


def test_series_sorted_by_geometry_not_file_name(tmp_path):
    volume = ramp_volume()
    slices = write_series(tmp_path / "s", volume, shuffle_seed=3)
    image = read_dicom(tmp_path / "s")
    np.testing.assert_allclose(image.pixels, volume)
    assert image.sop_uids == [str(ds.SOPInstanceUID) for ds in slices]
    assert image.spacing == pytest.approx((0.9, 0.9, 2.5))
    # file names are not the order: the first-named file is not the lowest slice
    first_named = read_dicom(sorted((tmp_path / "s").iterdir())[0])
    assert first_named.sop_uids[0] != image.sop_uids[0]


def test_rescale_slope_intercept_applied(tmp_path):
    volume = ramp_volume()
    write_series(tmp_path / "s", volume, slope=0.5)
    image = read_dicom(tmp_path / "s")
    np.testing.assert_allclose(image.pixels, volume, atol=0.5)
    raw = __import__("pydicom").dcmread(next((tmp_path / "s").iterdir())).pixel_array
    assert raw.min() >= 0  # stored unsigned: only the rescale makes HU out of it


def test_ras_volume_axes_follow_dicom_geometry(tmp_path):
    volume = ramp_volume(5, 8)
    volume[:, 0, :] += 1000  # first row (most anterior, DICOM +Y is posterior)
    volume[:, :, 0] += 500  # first column (patient's right: DICOM +X runs to the left)
    write_series(tmp_path / "s", volume)
    ras = load_image(tmp_path / "s")
    assert ras.shape == (8, 8, 5)  # (X, Y, Z)
    np.testing.assert_allclose(ras.array[0, 0, :], volume[:, 7, 7])  # R->L flipped, A->P too
    assert ras.array[7, 7, 0] > ras.array[7, 6, 0] + 900  # anterior edge is the last Y index
    assert ras.array[7, 0, 0] > ras.array[6, 0, 0] + 400  # the right edge is the last X index
    assert np.all(np.diff(ras.array[3, 3, :]) > 0)  # superior slices have the higher ramp


def test_multi_frame_file_ordered_by_frame_positions(tmp_path):
    from pydicom.dataset import Dataset

    base = dicom_slices(ramp_volume(4, 6), 1, 1, 1.0, 1.0, 40, "M")[0]
    ds = base
    ds.NumberOfFrames = 4
    order = [2, 0, 3, 1]  # frames stored out of order
    stored = np.stack([np.full((6, 6), 1024 + 100 * k, np.uint16) for k in order])
    ds.PixelData = stored.tobytes()
    frames = []
    for k in order:
        item, plane = Dataset(), Dataset()
        plane.ImagePositionPatient = [0.0, 0.0, 10.0 * k]
        item.PlanePositionSequence = [plane]
        frames.append(item)
    shared, orient = Dataset(), Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PlaneOrientationSequence = [orient]
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.SharedFunctionalGroupsSequence = [shared]
    del ds.ImagePositionPatient, ds.ImageOrientationPatient
    ds.save_as(tmp_path / "mf.dcm", enforce_file_format=True)
    image = read_dicom(tmp_path / "mf.dcm")
    assert image.pixels.shape == (4, 6, 6)
    np.testing.assert_allclose(image.pixels[:, 0, 0], [0, 100, 200, 300])  # HU, by position
    assert image.spacing[2] == pytest.approx(10.0)


def test_real_multi_frame_ultrasound_reads_as_grey_frames():
    path = get_testdata_file("examples_ybr_color.dcm")
    if path is None:
        pytest.skip("pydicom test file not bundled")
    image = read_dicom(Path(path))
    assert image.pixels.ndim == 3 and image.pixels.shape[0] == 30
    assert image.modality == "US" and np.isfinite(image.pixels).all()


def test_real_pydicom_ct_and_mr_files():
    ct = read_dicom(Path(get_testdata_file("CT_small.dcm")))
    assert ct.modality == "CT" and ct.pixels.shape == (128, 128)
    import pydicom

    raw = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    np.testing.assert_allclose(ct.pixels, raw.astype(np.float32) - 1024)  # slope 1, -1024
    mr = load_image(Path(get_testdata_file("MR_small.dcm")))
    assert mr.modality == "MR" and mr.shape == (64, 64)


def test_truncated_real_file_is_reported_as_truncated():
    path = get_testdata_file("MR_truncated.dcm")
    with pytest.raises(DicomProblem) as info:
        read_dicom(Path(path))
    assert info.value.kind == "truncated"


def test_mixed_series_refused_then_chosen_by_uid(tmp_path):
    a = write_series(tmp_path / "mixed", ramp_volume(4), number=1)
    b_dir = tmp_path / "other"
    write_series(b_dir, ramp_volume(3) + 7, number=2)
    for f in b_dir.iterdir():
        shutil.move(f, tmp_path / "mixed" / f"b{f.name}")
    with pytest.raises(DicomProblem) as info:
        read_dicom(tmp_path / "mixed")
    assert info.value.kind == "mixed_series" and "2 series" in str(info.value)
    image = read_dicom(tmp_path / "mixed", series_uid=str(a[0].SeriesInstanceUID))
    assert image.pixels.shape == (4, 8, 8)


def test_several_volumes_at_same_positions_need_a_volume_index(tmp_path):
    folder = tmp_path / "phases"
    slices = dicom_slices(ramp_volume(3), 1, 1, 1.0, 1.0, 40, "F")
    late = dicom_slices(ramp_volume(3) + 50, 1, 1, 1.0, 1.0, 40, "F")
    folder.mkdir()
    for phase, series in ((1, slices), (2, late)):
        for k, ds in enumerate(series):
            ds.SeriesInstanceUID = slices[0].SeriesInstanceUID  # one series, two phases
            ds.TemporalPositionIdentifier = phase
            ds.save_as(folder / f"p{phase}_{k}.dcm", enforce_file_format=True)
    with pytest.raises(DicomProblem) as info:
        read_dicom(folder)
    assert info.value.kind == "mixed_volumes" and "2 volumes" in str(info.value)
    np.testing.assert_allclose(read_dicom(folder, volume_index=1).pixels, ramp_volume(3) + 50)
    np.testing.assert_allclose(read_dicom(folder, volume_index=0).pixels, ramp_volume(3))


def test_dicom_seg_frames_mapped_by_referenced_sop_uid(tmp_path):
    rng = np.random.default_rng(0)
    image, mask = phantom((6, 16, 16), 2, rng)
    mask[:] = 0
    mask[1, 4:8, 4:8] = 1  # lesion only on slices 1 and 4: the SEG omits empty frames
    mask[4, 2:5, 9:12] = 1
    slices = write_series(tmp_path / "s", image, shuffle_seed=5)
    seg_bytes = dicom_seg(slices, mask)
    (tmp_path / "seg.dcm").write_bytes(seg_bytes)
    volume = load_image(tmp_path / "s")
    got = load_mask(tmp_path / "seg.dcm", volume)
    # back to DICOM order (slices, rows, cols): RAS flips X and Y
    dicom_order = np.transpose(got[::-1, ::-1, :], (2, 1, 0))
    np.testing.assert_array_equal(dicom_order, mask)


def test_dicom_seg_of_another_series_is_refused(tmp_path):
    rng = np.random.default_rng(1)
    image, mask = phantom((4, 16, 16), 1, rng)
    slices = write_series(tmp_path / "a", image)
    write_series(tmp_path / "b", image, number=2)
    (tmp_path / "seg.dcm").write_bytes(dicom_seg(slices, mask))
    with pytest.raises(DicomProblem) as info:
        load_mask(tmp_path / "seg.dcm", load_image(tmp_path / "b"))
    assert info.value.kind == "mask_geometry"


def test_window_presets():
    assert resolve_window("lung") == WINDOWS["lung"]
    assert resolve_window([40, 400]) == (40.0, 400.0)
    out = apply_window(np.array([-1000.0, 40.0, 1000.0]), resolve_window("soft_tissue"))
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])
    with pytest.raises(MedFedError, match="unknown preset"):
        resolve_window("kidney")


def test_missing_slice_in_series_is_a_gap(tmp_path):
    write_series(tmp_path / "s", ramp_volume(6))
    files = sorted((tmp_path / "s").iterdir())
    images = {f: read_dicom(f).pixels[0, 0] for f in files}
    middle = next(f for f, v in images.items() if v == 100.0)  # the slice at k = 3
    middle.unlink()
    with pytest.raises(DicomProblem, match="slice gap") as info:
        read_dicom(tmp_path / "s")
    assert info.value.kind == "geometry"
    assert load_image(Path(get_testdata_file("CT_small.dcm"))).orientation == "LPS"
