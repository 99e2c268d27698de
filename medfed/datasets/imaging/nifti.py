"""NIfTI with nibabel: orientation normalised to RAS, optional resampling to a spacing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medfed.datasets.imaging.dicom import DicomProblem
from medfed.datasets.imaging.sanity import check_affine, check_compressed, check_finite

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder/flip the first three axes so they run Right, Anterior, Superior.

    ``array``: (X, Y[, Z]) voxels of ``affine``; returns the array and its new affine.
    """
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation

    if array.ndim == 2:  # one slice: reorient as a volume, then drop the slice axis again
        out, new_affine = to_ras(array[..., None], affine)
        return np.squeeze(out, axis=int(io_orientation(affine)[2, 0])), new_affine
    ornt = io_orientation(affine)
    if np.array_equal(ornt, [[0, 1], [1, 1], [2, 1]]):
        return array, affine
    return apply_orientation(array, ornt), affine @ inv_ornt_aff(ornt, array.shape)


def read_nifti(path: Path, volume_index: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, nib.Nifti1Header]:
    """(array (X, Y, Z) float32 in RAS, affine, header); 4D files need ``volume_index``."""
    path = Path(path)
    if not path.exists():
        raise DicomProblem(f"{path}: file not found; fix the manifest path", "missing")
    check_compressed(path)
    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj, dtype=np.float32)
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError) as exc:
        kind = "truncated" if isinstance(exc, EOFError | OSError) else "unreadable"
        raise DicomProblem(f"{path}: not a readable NIfTI file ({exc.__class__.__name__}: "
                           f"{str(exc)[:80]})", kind) from None
    check_affine(image.affine, path)
    check_finite(data, path)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim == 4:
        if volume_index is None:
            raise DicomProblem(f"{path}: a 4D NIfTI with {data.shape[3]} volumes; choose one "
                               "with a `volume` column in the manifest (or "
                               "dataset.options.volume_index)", "mixed_volumes")
        if not 0 <= volume_index < data.shape[3]:
            raise DicomProblem(f"{path}: volume index {volume_index} out of range "
                               f"(0..{data.shape[3] - 1})", "mixed_volumes")
        data = data[..., volume_index]
    if data.ndim > 4:
        raise DicomProblem(f"{path}: {data.ndim}D NIfTI not supported; save 2D, 3D or 4D",
                           "unreadable")
    array, affine = to_ras(data, image.affine)
    return array.astype(np.float32, copy=False), affine, image.header


def spacing_of(affine: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))


def resample(array: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...],
             nearest: bool = False) -> np.ndarray:
    """Resample (X, Y[, Z]) from ``spacing`` to ``target`` mm (nearest for masks)."""
    from scipy.ndimage import zoom

    factors = [s / t for s, t in zip(spacing[:array.ndim], target, strict=False)]
    return zoom(array, factors, order=0 if nearest else 1, mode="nearest", grid_mode=True)
