"""Sanity checks on every image a site folder gives MedFed, called by the loaders.

Each check raises ``DicomProblem`` (one line, with the kind `medfed data check` lists) for
input that would otherwise be read as data: a corrupt compressed stream, NaN/inf voxels, a
header value that is not a number, a zero or degenerate geometry, a series whose slices
disagree on orientation or pixel spacing, a DICOM-SEG frame that names a slice the series
does not have, or a manifest path that leaves the site folder. Tilted or unevenly spaced
series are not refused here: the DICOM reader resamples them.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom

from medfed.datasets.imaging.dicom import DicomProblem
from medfed.errors import MedFedError

CHUNK = 1 << 20


def check_compressed(path: Path) -> None:
    """A ``.gz`` file must decompress to its end with a matching CRC (nibabel reads only the
    bytes it needs, so damage after them, or a wrong CRC, would pass unseen)."""
    path = Path(path)
    if not str(path).lower().endswith(".gz"):
        return
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(CHUNK):
                pass
    except (OSError, EOFError, zlib.error) as exc:
        raise DicomProblem(f"{path}: corrupt compressed stream ({exc.__class__.__name__}: "
                           f"{str(exc)[:60]}); the file was damaged in transfer", "truncated"
                           ) from None


def check_finite(array: np.ndarray, path: Path, what: str = "image") -> None:
    """No NaN or infinite voxel: one would turn every loss and metric into NaN."""
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = int(array.size - np.count_nonzero(np.isfinite(array)))
    if bad:
        raise DicomProblem(f"{path}: {what} has {bad} NaN/infinite voxel(s) of {array.size}; "
                           "re-export it with finite values (or drop the row)", "unreadable")


def check_affine(affine: np.ndarray, path: Path) -> None:
    """A voxel-to-world matrix must be finite and invertible (no zero-length axis)."""
    matrix = np.asarray(affine, dtype=float)[:3, :3]
    lengths = np.linalg.norm(matrix, axis=0) if np.all(np.isfinite(matrix)) else None
    if lengths is None or np.any(lengths < 1e-6) or abs(np.linalg.det(matrix)) < 1e-9:
        shown = "not finite" if lengths is None else \
            f"axis lengths {tuple(round(float(v), 4) for v in lengths)}"
        raise DicomProblem(f"{path}: degenerate voxel geometry ({shown}: a zero or collapsed "
                           "axis); fix the header's affine/pixel spacing and re-export",
                           "geometry")


def _numbers(ds: pydicom.Dataset, keyword: str, count: int, path: Path) -> list[float] | None:
    """``keyword``'s values as ``count`` finite floats; None when the tag is absent."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        values = [float(v) for v in (value if isinstance(value, Sequence)
                                     and not isinstance(value, str) else [value])]
    except (ValueError, TypeError, OverflowError):
        raise DicomProblem(f"{path}: {keyword} is not numeric ({str(ds.get(keyword, ''))[:40]!r});"
                           " fix the header or re-export the image", "unreadable") from None
    if len(values) != count or not all(np.isfinite(values)):
        raise DicomProblem(f"{path}: {keyword} must be {count} finite number(s), got {values}; "
                           "fix the header or re-export the image", "unreadable")
    return values


def check_header_values(ds: pydicom.Dataset, path: Path) -> None:
    """The numbers a reader computes with (rescale, spacing, orientation, position) parse and
    make sense before any pixel is scaled or placed."""
    slope = _numbers(ds, "RescaleSlope", 1, path)
    _numbers(ds, "RescaleIntercept", 1, path)
    if slope is not None and slope[0] == 0:
        raise DicomProblem(f"{path}: RescaleSlope is 0 (every voxel would be the intercept); "
                           "fix the header", "unreadable")
    spacing = _numbers(ds, "PixelSpacing", 2, path)
    if spacing is not None and min(spacing) <= 0:
        raise DicomProblem(f"{path}: PixelSpacing {spacing} is not positive; fix the header "
                           "(row and column spacing in mm, e.g. [0.7, 0.7])", "geometry")
    iop = _numbers(ds, "ImageOrientationPatient", 6, path)
    if iop is not None and np.linalg.norm(np.cross(iop[:3], iop[3:])) < 1e-3:
        raise DicomProblem(f"{path}: ImageOrientationPatient {iop} has parallel or zero "
                           "direction vectors; fix the header", "geometry")
    _numbers(ds, "ImagePositionPatient", 3, path)


def check_series_headers(files: Sequence[tuple[Path, pydicom.Dataset]]) -> None:
    """Every slice's header numbers make sense (``check_header_values``) and every slice has
    the first slice's orientation and pixel spacing; a slice that differs (a localiser, a
    reformat) is refused, never stacked into the volume."""
    for path, header in files:
        check_header_values(header, path)
    if len(files) < 2:
        return
    first_path, first = files[0]
    reference = {key: _numbers(first, key, n, first_path)
                 for key, n in (("ImageOrientationPatient", 6), ("PixelSpacing", 2))}
    for path, header in files[1:]:
        for key, n in (("ImageOrientationPatient", 6), ("PixelSpacing", 2)):
            value, expected = _numbers(header, key, n, path), reference[key]
            if (value is None) != (expected is None) or (
                    value is not None and not np.allclose(value, expected, atol=1e-4)):
                raise DicomProblem(f"{path.parent}: slice {path.name} has {key} {value}, the "
                                   f"series {expected}; it belongs to another acquisition: "
                                   "remove it from the folder", "mixed_series")


def check_contained(site_dir: Path, path: Path, where: str,
                    allowed_roots: Sequence[str | Path] = ()) -> Path:
    """``path`` (symlinks resolved) must lie inside the site folder, or inside one of the
    roots the config explicitly allows (``dataset.options.allowed_roots``)."""
    target = Path(path).resolve()
    roots = [Path(site_dir).resolve(), *(Path(r).resolve() for r in allowed_roots)]
    if not any(target == root or target.is_relative_to(root) for root in roots):
        raise MedFedError(f"path leaves the site folder (resolves to {target})", where=where,
                          fix="keep every image and mask inside the site folder, or list the "
                          "other folder in dataset.options.allowed_roots (`data check "
                          "--allow-root`)")
    return Path(path)
