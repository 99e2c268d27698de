"""DICOM-SEG masks (highdicom), mapped onto their image's slices by Referenced SOP Instance UID."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from medfed.datasets.imaging.dicom import DicomImage, DicomProblem


def read_dicom_seg(path: Path, image: DicomImage) -> np.ndarray:
    """Mask (slices, rows, cols) int64 aligned with ``image.pixels``; value = segment number.

    Each SEG frame names the image slice it segments (Referenced SOP Instance UID), so the mask
    follows the image's geometric slice order whatever the file or frame order.
    """
    import highdicom as hd

    path = Path(path)
    if not path.is_file():
        raise DicomProblem(f"{path}: mask file not found; fix the manifest's mask path", "missing")
    if not image.sop_uids or not all(image.sop_uids):
        raise DicomProblem(f"{path}: a DICOM-SEG mask needs a single-frame DICOM series image "
                           "(its slices' SOP Instance UIDs); convert the mask to NIfTI instead",
                           "mask_geometry")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seg = hd.seg.segread(path)
    except (ValueError, AttributeError, EOFError, OSError, KeyError) as exc:
        raise DicomProblem(f"{path}: not a readable DICOM-SEG ({exc.__class__.__name__}: "
                           f"{str(exc)[:80]})", "unreadable") from None
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    missing = [uid for uid in image.sop_uids if uid not in referenced]
    if len(missing) == len(image.sop_uids):
        raise DicomProblem(f"{path}: the DICOM-SEG references none of this image's slices; "
                           "pair each mask with the series it was drawn on", "mask_geometry")
    mask = np.zeros(image.pixels.shape if image.pixels.ndim == 3 else (1, *image.pixels.shape),
                    np.int64)
    present = [i for i, uid in enumerate(image.sop_uids) if uid in referenced]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = seg.get_pixels_by_source_instance(
                [image.sop_uids[i] for i in present], combine_segments=True,
                skip_overlap_checks=True)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise DicomProblem(f"{path}: DICOM-SEG frames do not map onto the image "
                           f"({str(exc)[:100]})", "mask_geometry") from None
    if pixels.shape[1:] != mask.shape[1:]:
        raise DicomProblem(f"{path}: mask frames are {pixels.shape[1:]} but image slices are "
                           f"{mask.shape[1:]}; the mask was drawn on another image",
                           "mask_geometry")
    mask[present] = pixels
    return mask if image.pixels.ndim == 3 else mask[0]
