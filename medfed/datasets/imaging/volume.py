"""One reader for every image format of a site folder: a RAS-ordered volume and its mask."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfed.datasets.imaging.dicom import DicomImage, DicomProblem, read_dicom
from medfed.datasets.imaging.nifti import is_nifti, read_nifti, spacing_of, to_ras
from medfed.datasets.imaging.seg import read_dicom_seg


@dataclass
class Volume:
    """``array``: (X, Y) or (X, Y, Z) float32, axes running Right, Anterior, Superior."""

    array: np.ndarray
    affine: np.ndarray
    modality: str
    fmt: str  # "dicom" or "nifti"
    dicom: DicomImage | None = None
    orientation: str = ""  # axis codes as stored, before RAS (e.g. LPS for DICOM axial)

    @property
    def spacing(self) -> tuple[float, ...]:
        return spacing_of(self.affine)[: self.array.ndim]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def _ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out, new_affine = to_ras(array, affine)
    return np.ascontiguousarray(out), new_affine


def dicom_to_ras(pixels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DICOM index order (slices, rows, cols) -> (X, Y, Z) RAS."""
    ijk = pixels.T if pixels.ndim == 2 else np.transpose(pixels, (2, 1, 0))
    return _ras(ijk, affine)


def load_image(path: Path, series_uid: str | None = None,
               volume_index: int | None = None) -> Volume:
    """A DICOM file, DICOM series folder or NIfTI file, as a RAS volume."""
    path = Path(path)
    if is_nifti(path):
        array, affine, header = read_nifti(path, volume_index)
        array, affine = _ras(array, affine)
        return Volume(array, affine, "NIfTI", "nifti", None, _axcodes(header.get_best_affine()))
    image = read_dicom(path, series_uid, volume_index)
    array, affine = dicom_to_ras(image.pixels, image.affine)
    return Volume(array.astype(np.float32, copy=False), affine, image.modality or "OT", "dicom",
                  image, _axcodes(image.affine))


def _axcodes(affine: np.ndarray) -> str:
    from nibabel.orientations import aff2axcodes

    return "".join(c or "?" for c in aff2axcodes(affine))


def load_mask(path: Path, image: Volume) -> np.ndarray:
    """A mask (NIfTI, or DICOM-SEG of a DICOM series) as int64 in ``image``'s voxel grid."""
    path = Path(path)
    if is_nifti(path):
        array, affine, _ = read_nifti(path)
        array, affine = _ras(array, affine)
        check_geometry(path, array.shape, affine, image)
        return np.rint(array).astype(np.int64)
    if image.dicom is None:
        raise DicomProblem(f"{path}: a DICOM-SEG mask needs a DICOM image; give a NIfTI mask "
                           "for a NIfTI image", "mask_geometry")
    mask = read_dicom_seg(path, image.dicom)
    array, _ = dicom_to_ras(mask, image.dicom.affine)
    return np.rint(array).astype(np.int64)


def check_geometry(path: Path, shape: tuple[int, ...], affine: np.ndarray, image: Volume) -> None:
    """The mask must cover the image voxel for voxel (shape, spacing, position)."""
    if tuple(shape) != image.shape:
        raise DicomProblem(f"{path}: mask shape {tuple(shape)} differs from its image "
                           f"{image.shape}; export the mask on the image's grid", "mask_shape")
    if not np.allclose(affine, image.affine, atol=0.05, rtol=1e-3):  # mm; DICOM decimals
        raise DicomProblem(f"{path}: mask spacing/position differs from its image (spacing "
                           f"{tuple(round(s, 3) for s in spacing_of(affine))} vs "
                           f"{tuple(round(s, 3) for s in image.spacing)}); resample the mask "
                           "onto the image grid", "mask_geometry")
