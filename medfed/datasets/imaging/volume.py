"""One reader for every image format of a site folder: a RAS-ordered volume and its mask.

Images: DICOM (file or series folder), NIfTI, or a PNG/JPEG photo. Masks: NIfTI, DICOM-SEG
(of a DICOM series) or a polygon JSON (rasterised on the image's pixel grid). A DICOM series
with gantry tilt or uneven slice gaps is only used resampled (``spacing``), never as stacked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medfed.datasets.imaging.dicom import DicomImage, DicomProblem, read_dicom
from medfed.datasets.imaging.geometry import regrid_series
from medfed.datasets.imaging.nifti import is_nifti, read_nifti, spacing_of, to_ras
from medfed.datasets.imaging.polygons import PolygonProblem, polygon_mask
from medfed.datasets.imaging.seg import read_dicom_seg

PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclass
class Volume:
    """``array``: (X, Y) or (X, Y, Z) float32, axes running Right, Anterior, Superior."""

    array: np.ndarray
    affine: np.ndarray
    modality: str
    fmt: str  # "dicom" or "nifti"
    dicom: DicomImage | None = None
    orientation: str = ""  # axis codes as stored, before RAS (e.g. LPS for DICOM axial)
    notes: list[str] = field(default_factory=list)  # warnings (e.g. gantry tilt) with the fix
    regridded: tuple[float, ...] | None = None  # irregular series resampled to this spacing
    # NIfTI/photo: (shape, affine) of the voxel array as stored in the file, before RAS
    stored: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def spacing(self) -> tuple[float, ...]:
        return spacing_of(self.affine)[: self.array.ndim]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def ndim_stored(self) -> int:
        """Dimensions with more than one voxel (a one-slice volume is 2D)."""
        return sum(1 for n in self.array.shape if n > 1)


def _ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out, new_affine = to_ras(array, affine)
    return np.ascontiguousarray(out), new_affine


def dicom_to_ras(pixels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DICOM index order (slices, rows, cols) -> (X, Y, Z) RAS."""
    ijk = pixels.T if pixels.ndim == 2 else np.transpose(pixels, (2, 1, 0))
    return _ras(ijk, affine)


def load_image(path: Path, series_uid: str | None = None, volume_index: int | None = None,
               spacing: tuple[float, ...] | list[float] | None = None) -> Volume:
    """A DICOM file, DICOM series folder, NIfTI file or photo, as a RAS volume.

    A tilted or unevenly spaced DICOM series is resampled onto a regular grid of ``spacing``
    (x, y, z mm) when given; without it the stack comes back as stored with a note naming the
    problem (``notes``) and ``dicom.irregular`` set: use it only to look at, never to train."""
    path = Path(path)
    if is_nifti(path):
        array, affine, header = read_nifti(path, volume_index)
        stored = (np.asarray(header.get_data_shape()[:3]), header.get_best_affine())
        array, affine = _ras(array, affine)
        return Volume(array, affine, "NIfTI", "nifti", None, _axcodes(header.get_best_affine()),
                      stored=stored)
    if path.suffix.lower() in PHOTO_SUFFIXES:
        return load_photo(path)
    image = read_dicom(path, series_uid, volume_index)
    if image.irregular and spacing:
        array, affine = regrid_series(image.pixels, image.positions, image.orientation,
                                      image.pixel_spacing, tuple(spacing))
        return Volume(array, affine, image.modality or "OT", "dicom", image,
                      _axcodes(image.affine), regridded=tuple(float(s) for s in spacing))
    array, affine = dicom_to_ras(image.pixels, image.affine)
    notes = [irregular_note(image.irregular)] if image.irregular else []
    return Volume(array.astype(np.float32, copy=False), affine, image.modality or "OT", "dicom",
                  image, _axcodes(image.affine), notes)


def irregular_note(what: str) -> str:
    """The warning for a tilted or unevenly spaced series, with its fix."""
    return (f"irregular slice geometry: {what}; MedFed will not stack it as a regular "
            "volume: set dataset.options.spacing (x, y, z mm, e.g. [1, 1, 2]) to resample it "
            "onto a regular grid")


def load_photo(path: Path) -> Volume:
    """A PNG/JPEG photo (e.g. endoscopy) as one grey (X = column, Y = row) slice, 1 mm pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as photo:
            pixels = np.asarray(photo.convert("L"), dtype=np.float32)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise DicomProblem(f"{path}: not a readable image ({exc.__class__.__name__})",
                           "unreadable") from None
    return Volume(np.ascontiguousarray(pixels.T), np.eye(4), "photo", "photo",
                  stored=(np.asarray(pixels.T.shape), np.eye(4)))


def _axcodes(affine: np.ndarray) -> str:
    from nibabel.orientations import aff2axcodes

    return "".join(c or "?" for c in aff2axcodes(affine))


def load_mask(path: Path, image: Volume, category: str | None = None) -> np.ndarray:
    """A mask (NIfTI, DICOM-SEG of a DICOM series, or polygon JSON) as int64 in ``image``'s
    voxel grid; ``category`` selects a JSON's polygons. Warnings go to ``image.notes``."""
    path = Path(path)
    if is_nifti(path):
        array, affine, _ = read_nifti(path)
        array, affine = _ras(array, affine)
        check_geometry(path, array.shape, affine, image)
        return np.rint(array).astype(np.int64)
    if path.suffix.lower() == ".json":
        return _polygon_mask(path, image, category)
    if image.dicom is None:
        raise DicomProblem(f"{path}: a DICOM-SEG mask needs a DICOM image; give a NIfTI mask "
                           "for a NIfTI image", "mask_geometry")
    mask = read_dicom_seg(path, image.dicom, image.notes)
    return _on_image_grid(mask, image)


def _on_image_grid(stored: np.ndarray, image: Volume) -> np.ndarray:
    """A mask in DICOM index order -> ``image``'s RAS grid (resampled like a tilted image)."""
    dicom = image.dicom
    if image.regridded is not None:
        volume = stored if stored.ndim == 3 else stored[None]
        array, _ = regrid_series(volume.astype(np.float32), dicom.positions, dicom.orientation,
                                 dicom.pixel_spacing, image.regridded, nearest=True)
    else:
        array, _ = dicom_to_ras(stored, dicom.affine)
    return np.rint(array).astype(np.int64)


def _polygon_mask(path: Path, image: Volume, category: str | None) -> np.ndarray:
    """Polygons (x = column, y = row of the stored 2D image) on ``image``'s grid."""
    if not path.is_file():
        raise DicomProblem(f"{path}: mask file not found; fix the manifest's mask path", "missing")
    if image.dicom is not None:
        pixels = image.dicom.pixels
        grid = pixels.shape if pixels.ndim == 2 else pixels.shape[1:]
    else:
        grid = tuple(int(n) for n in image.stored[0][:2][::-1])  # (X, Y) stored -> rows, cols
    if image.ndim_stored > 2:
        raise DicomProblem(f"{path}: polygon JSON masks label 2D images; this image is "
                           f"{'x'.join(map(str, image.shape))} (give a NIfTI or DICOM-SEG "
                           "mask for volumes)", "annotation")
    try:
        rows_cols = polygon_mask(path, grid, category)
    except PolygonProblem as exc:
        raise DicomProblem(str(exc), "annotation") from None
    if image.dicom is not None:
        return _on_image_grid(rows_cols, image)
    stored = rows_cols.T  # (X = column, Y = row) as the image array is stored
    array, _ = _ras(stored, image.stored[1])
    return np.rint(array).astype(np.int64).reshape(image.shape)  # a one-slice volume: (X, Y, 1)


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
