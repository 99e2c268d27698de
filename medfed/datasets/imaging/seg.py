"""DICOM-SEG masks mapped onto their image's slices, frame by frame.

Each SEG frame is matched to an image slice by the SOP Instance UID it names (Derivation Image
-> Source Image Sequence), or, when a SEG references the series but not each frame (as dcmqi
and several vendors write them), by its Image Position Patient along the slice normal. The
mask follows the image's geometric slice order whatever the file or frame order. Attributes a
reader does not need (segment category/type codes, algorithm type, referenced series) may be
missing: the SEG is read and each missing attribute named in ``notes``; a SEG whose pixels or
references do not fit the image is a ``DicomProblem``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medfed.datasets.imaging.dicom import DicomImage, DicomProblem

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
# required by the standard, not needed to place the mask: their absence is a warning
SEGMENT_ATTRIBUTES = ("SegmentedPropertyCategoryCodeSequence",
                      "SegmentedPropertyTypeCodeSequence", "SegmentAlgorithmType",
                      "SegmentLabel")


def _read(path: Path) -> pydicom.Dataset:
    if not path.is_file():
        raise DicomProblem(f"{path}: mask file not found; fix the manifest's mask path", "missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        raise DicomProblem(f"{path}: not a readable DICOM-SEG ({exc.__class__.__name__}: "
                           f"{str(exc)[:80]})", "unreadable") from None
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise DicomProblem(f"{path}: not a DICOM-SEG (SOP class "
                           f"{getattr(ds.get('SOPClassUID'), 'name', '?')}); give a "
                           "Segmentation Storage file or a NIfTI mask", "unreadable")
    return ds


def missing_attributes(ds: pydicom.Dataset) -> list[str]:
    """Attributes the standard requires but mapping does not need, that the file lacks."""
    missing = []
    for item in ds.get("SegmentSequence") or []:
        number = item.get("SegmentNumber", "?")
        missing += [f"{name} (segment {number})" for name in SEGMENT_ATTRIBUTES
                    if name not in item]
    if "ReferencedSeriesSequence" not in ds:
        missing.append("ReferencedSeriesSequence")
    return missing


def _frames(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    """(F, rows, cols) stored frame values."""
    if "PixelData" not in ds:
        raise DicomProblem(f"{path}: DICOM-SEG without pixel data; re-export the segmentation",
                           "unreadable")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = np.asarray(ds.pixel_array)
    except (ValueError, AttributeError, NotImplementedError, RuntimeError, KeyError) as exc:
        raise DicomProblem(f"{path}: cannot decode the DICOM-SEG pixels ({str(exc)[:80]})",
                           "truncated") from None
    return pixels.reshape(int(ds.get("NumberOfFrames", 1) or 1), *pixels.shape[-2:])


def _item(ds: pydicom.Dataset, frame: int, sequence: str) -> pydicom.Dataset | None:
    """The first item of a functional group for ``frame`` (per-frame first, then shared)."""
    groups = []
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame):
        groups.append(per_frame[frame])
    if ds.get("SharedFunctionalGroupsSequence"):
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if sequence in group and len(group[sequence].value):
            return group[sequence].value[0]
    return None


def frame_source_uid(ds: pydicom.Dataset, frame: int) -> str | None:
    derivation = _item(ds, frame, "DerivationImageSequence")
    if derivation is None or not derivation.get("SourceImageSequence"):
        return None
    return str(derivation.SourceImageSequence[0].get("ReferencedSOPInstanceUID", "")) or None


def frame_position(ds: pydicom.Dataset, frame: int) -> np.ndarray | None:
    plane = _item(ds, frame, "PlanePositionSequence")
    if plane is None or "ImagePositionPatient" not in plane:
        return None
    return np.asarray([float(v) for v in plane.ImagePositionPatient])


def frame_segment(ds: pydicom.Dataset, frame: int, path: Path) -> int:
    item = _item(ds, frame, "SegmentIdentificationSequence")
    if item is not None and "ReferencedSegmentNumber" in item:
        return int(item.ReferencedSegmentNumber)
    segments = ds.get("SegmentSequence") or []
    if len(segments) <= 1:
        return int(segments[0].get("SegmentNumber", 1)) if segments else 1
    raise DicomProblem(f"{path}: frame {frame + 1} names no segment (Segment Identification "
                       f"Sequence) among {len(segments)} segments; re-export the SEG",
                       "mask_geometry")


def _slice_by_position(position: np.ndarray, image: DicomImage) -> int | None:
    """The image slice whose plane holds ``position`` (same in-plane origin), if any."""
    if image.positions is None or image.orientation is None:
        return None
    normal = np.cross(image.orientation[:3], image.orientation[3:])
    heights = image.positions @ normal
    gaps = np.diff(np.sort(heights))
    tolerance = max(0.01, 0.25 * float(gaps.min())) if len(gaps) else 0.5
    k = int(np.argmin(np.abs(heights - position @ normal)))
    if abs(heights[k] - position @ normal) > tolerance:
        return None
    shift = np.linalg.norm(position - image.positions[k])
    return k if shift <= 0.5 * min(image.pixel_spacing) + tolerance else None


def frame_slices(ds: pydicom.Dataset, image: DicomImage, path: Path) -> list[int]:
    """The image slice index of every SEG frame (by UID, else by position)."""
    index = {uid: k for k, uid in enumerate(image.sop_uids) if uid}
    slices = []
    for frame in range(int(ds.get("NumberOfFrames", 1) or 1)):
        uid = frame_source_uid(ds, frame)
        if uid is not None:
            if uid not in index:
                raise DicomProblem(f"{path}: DICOM-SEG frame {frame + 1} references slice "
                                   f"{uid}, which is not in this image; pair each mask with "
                                   "the series it was drawn on", "mask_geometry")
            slices.append(index[uid])
            continue
        position = frame_position(ds, frame)
        k = None if position is None else _slice_by_position(position, image)
        if k is None:
            why = ("names neither a source slice nor an Image Position" if position is None
                   else "lies on no slice of this image")
            raise DicomProblem(f"{path}: DICOM-SEG frame {frame + 1} {why}; pair the mask with "
                               "the series it was drawn on, or re-export it", "mask_geometry")
        slices.append(k)
    return slices


def _check_series(ds: pydicom.Dataset, image: DicomImage, path: Path) -> None:
    referenced = [str(item.get("SeriesInstanceUID", ""))
                  for item in ds.get("ReferencedSeriesSequence") or []]
    if referenced and image.series_uid and image.series_uid not in referenced:
        raise DicomProblem(f"{path}: the DICOM-SEG references none of this image's slices "
                           f"(series {referenced[0]}); pair each mask with the series it was "
                           "drawn on", "mask_geometry")


def read_dicom_seg(path: Path, image: DicomImage, notes: list[str] | None = None) -> np.ndarray:
    """Mask (slices, rows, cols) int64 aligned with ``image.pixels``; value = segment number
    (a later segment wins where segments overlap). ``notes`` collects warnings (attributes the
    file lacks)."""
    path = Path(path)
    ds = _read(path)
    if not image.sop_uids and image.positions is None:
        raise DicomProblem(f"{path}: a DICOM-SEG mask needs a DICOM image whose slices have "
                           "UIDs or positions; convert the mask to NIfTI instead",
                           "mask_geometry")
    _check_series(ds, image, path)
    frames = _frames(ds, path)
    shape = image.pixels.shape if image.pixels.ndim == 3 else (1, *image.pixels.shape)
    if frames.shape[1:] != shape[1:]:
        raise DicomProblem(f"{path}: mask frames are {frames.shape[1:]} but image slices are "
                           f"{shape[1:]}; the mask was drawn on another image", "mask_geometry")
    kind = str(ds.get("SegmentationType", "BINARY")).upper()
    threshold = float(ds.get("MaximumFractionalValue", 255)) / 2 if kind == "FRACTIONAL" else 0
    mask = np.zeros(shape, np.int64)
    for frame, k in enumerate(frame_slices(ds, image, path)):
        on = frames[frame] > threshold
        if kind == "LABELMAP":
            mask[k][on] = frames[frame][on]
        else:
            mask[k][on] = frame_segment(ds, frame, path)
    if notes is not None:
        notes += [f"{path.name}: DICOM-SEG lacks {name}; read anyway (pixel data and references "
                  "are sound)" for name in missing_attributes(ds)]
    return mask if image.pixels.ndim == 3 else mask[0]
