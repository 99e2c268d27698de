"""DICOM-SEG as real writers make them: dcmqi's (no Spatial Locations Preserved), frames
referenced by position only, vendors omitting required attributes."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest

from medfed.datasets.imaging.check import check_site
from medfed.datasets.imaging.demo import dicom_seg, dicom_slices, phantom
from medfed.datasets.imaging.dicom import DicomProblem
from medfed.datasets.imaging.volume import load_image, load_mask

DCMQI = "dicom-real/ct3slice_liver_dcmqi"


def to_dicom_order(mask_ras: np.ndarray) -> np.ndarray:
    """RAS (X, Y, Z) of an axial LPS series back to DICOM (slices, rows, cols)."""
    return np.transpose(mask_ras[::-1, ::-1, :], (2, 1, 0))


@pytest.fixture
def dcmqi() -> Path:
    root = os.environ.get("MEDFED_DATA_DIR")
    if not root or not (Path(root) / DCMQI / "seg.dcm").is_file():
        pytest.skip("MEDFED_DATA_DIR with the real dcmqi CT + SEG not available")
    return Path(root) / DCMQI


def test_real_dcmqi_seg_maps_onto_its_three_slices(dcmqi, tmp_path):
    volume = load_image(dcmqi / "series")
    got = to_dicom_order(load_mask(dcmqi / "seg.dcm", volume))
    seg = pydicom.dcmread(dcmqi / "seg.dcm")
    frames = seg.pixel_array
    for frame, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = volume.dicom.sop_uids.index(uid)
        np.testing.assert_array_equal(got[k], frames[frame])
    assert got.sum() == 36233 + 35645 + 35220 and not volume.notes
    # file 01.dcm is the top slice, SEG frame 1 the bottom one: the mask follows geometry
    assert [int(got[k].sum()) for k in range(3)] == [36233, 35645, 35220]
    site = tmp_path / "site"
    shutil.copytree(dcmqi, site / "ct")
    pd.DataFrame({"patient_id": ["liver"], "image": ["ct/series"], "mask": ["ct/seg.dcm"]}
                 ).to_csv(site / "manifest.csv", index=False)
    result = check_site(site)
    assert result.ok and result.samples[0]["mask_labels"] == [0, 1]


def write_case(folder: Path, seed: int = 0) -> tuple[list, np.ndarray]:
    """A 6-slice CT series (shuffled file names) and its lesion mask (slices, rows, cols)."""
    image, mask = phantom((6, 16, 16), 2, np.random.default_rng(seed))
    slices = dicom_slices(image, 1, 1, 0.9, 1.0, 50, "F")
    folder.mkdir(parents=True)
    names = list(range(len(slices)))
    random.Random(seed).shuffle(names)
    for name, ds in zip(names, slices, strict=True):
        ds.save_as(folder / f"{name:03d}.dcm", enforce_file_format=True)
    return slices, mask


def seg_file(tmp_path: Path, slices: list, mask: np.ndarray, edit) -> Path:
    ds = pydicom.dcmread(__import__("io").BytesIO(dicom_seg(slices, mask)))
    edit(ds)
    path = tmp_path / "seg.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def drop_frame_references(ds: pydicom.Dataset) -> None:
    for item in ds.PerFrameFunctionalGroupsSequence:
        del item.DerivationImageSequence


def test_frames_without_source_references_are_matched_by_position(tmp_path):
    slices, mask = write_case(tmp_path / "s")
    path = seg_file(tmp_path, slices, mask, drop_frame_references)
    volume = load_image(tmp_path / "s")
    np.testing.assert_array_equal(to_dicom_order(load_mask(path, volume)), mask)


def test_vendor_seg_missing_codes_is_read_with_a_warning_naming_them(tmp_path):
    slices, mask = write_case(tmp_path / "site" / "s")

    def vendor(ds):
        del ds.SegmentSequence[0].SegmentedPropertyCategoryCodeSequence
        del ds.SegmentSequence[0].SegmentedPropertyTypeCodeSequence

    seg_file(tmp_path / "site", slices, mask, vendor)
    volume = load_image(tmp_path / "site" / "s")
    np.testing.assert_array_equal(to_dicom_order(load_mask(tmp_path / "site" / "seg.dcm",
                                                           volume)), mask)
    assert any("SegmentedPropertyCategoryCodeSequence (segment 1)" in n for n in volume.notes)
    pd.DataFrame({"patient_id": ["P1"], "image": ["s"], "mask": ["seg.dcm"]}).to_csv(
        tmp_path / "site" / "manifest.csv", index=False)
    result = check_site(tmp_path / "site")
    assert result.ok
    assert [w.split("lacks ")[1].split(";")[0] for w in result.warnings()] == [
        "SegmentedPropertyCategoryCodeSequence (segment 1)",
        "SegmentedPropertyTypeCodeSequence (segment 1)"]


def test_frames_with_neither_reference_nor_position_are_one_error(tmp_path):
    slices, mask = write_case(tmp_path / "s")

    def broken(ds):
        drop_frame_references(ds)
        for item in ds.PerFrameFunctionalGroupsSequence:
            del item.PlanePositionSequence

    path = seg_file(tmp_path, slices, mask, broken)
    with pytest.raises(DicomProblem, match="frame 1 names neither a source slice nor an Image "
                       "Position") as info:
        load_mask(path, load_image(tmp_path / "s"))
    assert info.value.kind == "mask_geometry" and "\n" not in str(info.value)


def test_frame_referencing_a_slice_of_another_series_is_refused(tmp_path):
    slices, mask = write_case(tmp_path / "s")

    def foreign(ds):
        ref = ds.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        ref.SourceImageSequence[0].ReferencedSOPInstanceUID = "1.2.3.4.5"

    path = seg_file(tmp_path, slices, mask, foreign)
    with pytest.raises(DicomProblem, match="references slice 1.2.3.4.5, which is not in this "
                       "image"):
        load_mask(path, load_image(tmp_path / "s"))
