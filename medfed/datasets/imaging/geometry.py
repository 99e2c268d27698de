"""Slice geometry of a DICOM series: gantry tilt and uneven slice gaps, and resampling.

A regular series is a stack of parallel slices whose origins advance by one constant vector
along the slice normal; its affine places every voxel exactly. A gantry-tilted CT advances
along the table, not the normal (the stack is sheared), and some series change their slice
gap part-way (e.g. 4 mm, then 7 mm). Such a stack is never used as if it were regular:
``regrid_series`` places every voxel by its own slice's Image Position and resamples onto a
regular, axis-aligned grid of a chosen spacing.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from medfed.errors import MedFedError

TILT_TOLERANCE_DEG = 0.5  # scanners round positions; a real gantry tilt is degrees
GAP_TOLERANCE = 0.1  # a gap within 10 % of the usual one is the usual one
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class GeometryProblem(MedFedError):
    """A stack that cannot be ordered into a volume (e.g. a file missing from the series)."""


def tilt_degrees(positions: np.ndarray, normal: np.ndarray) -> float:
    """Angle between the stack's direction (first to last slice) and the slice normal."""
    if len(positions) < 2:
        return 0.0
    along = positions[-1] - positions[0]
    length = float(np.linalg.norm(along))
    if length == 0:
        return 0.0
    cosine = min(abs(float(along @ normal)) / length, 1.0)
    return float(np.degrees(np.arccos(cosine)))


def uneven_gaps(gaps: np.ndarray, where: Path | str) -> str:
    """'' when the gaps between slice planes are even; else e.g. 'uneven slice gaps (4 mm
    x13, 7 mm x13, 1.08 mm x1)'. A gap that is a whole multiple of the usual one (and only
    such gaps) means a file is missing: ``GeometryProblem``."""
    if len(gaps) < 2:
        return ""
    if np.any(np.abs(gaps) < 1e-3):  # several frames at one position: not one volume
        raise GeometryProblem(f"{where}: {int(np.sum(np.abs(gaps) < 1e-3)) + 1} slices share a "
                              "slice position; the file or folder holds several volumes (e.g. "
                              "a 4D or multi-echo series): export one volume per series")
    step = float(np.median(gaps))
    off = np.abs(gaps - step) > GAP_TOLERANCE * abs(step) + 1e-3
    if not off.any():
        return ""
    ratios = gaps[off] / step
    if np.all((np.abs(ratios - np.rint(ratios)) < GAP_TOLERANCE) & (np.rint(ratios) >= 2)):
        k = int(np.flatnonzero(off)[0])
        raise GeometryProblem(f"{where}: slice gap of {gaps[k]:.2f} mm after slice {k + 1} "
                              f"(others {step:.2f} mm); a file is missing: copy the whole "
                              "series again")
    counts = Counter(round(float(g), 2) for g in gaps)
    listed = ", ".join(f"{g:g} mm x{n}" for g, n in counts.most_common())
    return f"uneven slice gaps ({listed})"


def irregular_geometry(positions: np.ndarray, normal: np.ndarray, where: Path | str) -> str:
    """What makes a sorted stack irregular ('' if nothing): gantry tilt, uneven gaps.

    ``positions``: (S, 3) Image Position Patient of the slices, sorted along ``normal``."""
    notes = []
    tilt = tilt_degrees(positions, normal)
    if tilt > TILT_TOLERANCE_DEG:
        notes.append(f"gantry tilt {tilt:.1f} deg (slices sheared along the table)")
    gaps = uneven_gaps(np.diff(positions @ normal), where)
    if gaps:
        notes.append(gaps)
    return "; ".join(notes)


def _grid(corners_ras: np.ndarray, spacing: tuple[float, float, float]
          ) -> tuple[tuple[int, int, int], np.ndarray]:
    """The axis-aligned RAS grid of ``spacing`` covering the corner points: shape, affine."""
    low, high = corners_ras.min(axis=0), corners_ras.max(axis=0)
    step = np.asarray(spacing, float)
    shape = tuple(int(n) + 1 for n in np.floor((high - low) / step + 1e-6))
    affine = np.diag([*step, 1.0])
    affine[:3, 3] = low
    return shape, affine


def regrid_series(pixels: np.ndarray, positions: np.ndarray, orientation: np.ndarray,
                  pixel_spacing: tuple[float, float], spacing: tuple[float, ...],
                  nearest: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Resample a (possibly tilted, unevenly spaced) stack onto a regular RAS grid.

    ``pixels``: (S, rows, cols) in slice order along the normal; ``positions``: (S, 3) LPS
    origins of those slices; ``orientation``: the 6 Image Orientation Patient values;
    ``pixel_spacing``: (between rows, between columns) mm; ``spacing``: target (x, y, z) mm.
    Returns (X, Y, Z) float32 (labels: nearest neighbour, else linear) and its RAS affine
    (diagonal: voxel sizes ``spacing``). Points outside the stack get the image minimum (0
    for masks). Every voxel is placed by its own slice's position, so tilt and uneven gaps
    come out at their true place.
    """
    if len(spacing) != 3:
        raise MedFedError(f"dataset.options.spacing: give 3 numbers (x, y, z mm) to resample a "
                          f"DICOM series, got {list(spacing)}")
    row_dir, col_dir = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    n_slices, rows, cols = pixels.shape
    across, down = row_dir * pixel_spacing[1] * (cols - 1), col_dir * pixel_spacing[0] * (rows - 1)
    corners = np.concatenate([positions + a + b for a in (0, across) for b in (0, down)])
    shape, affine = _grid(corners * [-1.0, -1.0, 1.0], tuple(float(s) for s in spacing))
    heights = positions @ normal
    fill = 0.0 if nearest else float(pixels.min())
    out = np.empty(shape, np.float32)
    xs, ys = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    for z in range(shape[2]):
        ras = affine[:3, :3] @ np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)]) \
            + affine[:3, 3:4]
        lps = ras * np.array([[-1.0], [-1.0], [1.0]])
        out[:, :, z] = _sample(pixels, positions, heights, lps, row_dir, col_dir, normal,
                               pixel_spacing, nearest, fill).reshape(shape[:2])
    return out, affine


def _sample(pixels: np.ndarray, positions: np.ndarray, heights: np.ndarray, lps: np.ndarray,
            row_dir: np.ndarray, col_dir: np.ndarray, normal: np.ndarray,
            pixel_spacing: tuple[float, float], nearest: bool, fill: float) -> np.ndarray:
    """Values at LPS points (3, P): fractional slice from the height along the normal, then
    in-plane row/column from that (interpolated) slice's own origin."""
    from scipy.ndimage import map_coordinates

    height = normal @ lps
    order = np.argsort(heights)
    k = np.interp(height, heights[order], order.astype(float))
    k0 = np.clip(np.floor(k).astype(int), 0, len(heights) - 1)
    k1 = np.clip(k0 + 1, 0, len(heights) - 1)
    w = (k - k0)[:, None]
    origin = positions[k0] * (1 - w) + positions[k1] * w
    offset = lps.T - origin
    col = offset @ row_dir / pixel_spacing[1]
    row = offset @ col_dir / pixel_spacing[0]
    outside = (height < heights.min() - 1e-3) | (height > heights.max() + 1e-3)
    values = map_coordinates(pixels, [k, row, col], order=0 if nearest else 1, mode="constant",
                             cval=fill)
    values[outside] = fill
    return values


def resample_onto(array: np.ndarray, affine: np.ndarray, target_affine: np.ndarray,
                  target_shape: tuple[int, ...], nearest: bool = False) -> np.ndarray:
    """``array`` (X, Y[, Z]) with ``affine`` resampled onto another grid (world coordinates);
    outside the source: its minimum (0 for labels)."""
    from scipy.ndimage import affine_transform

    flat = array.ndim == 2
    source = array[..., None] if flat else array
    shape = (*target_shape, 1) if len(target_shape) == 2 else tuple(target_shape)
    matrix = np.linalg.inv(affine) @ target_affine
    out = affine_transform(source, matrix[:3, :3], offset=matrix[:3, 3], output_shape=shape,
                           order=0 if nearest else 1, mode="constant",
                           cval=0.0 if nearest else float(source.min()))
    return out[..., 0] if flat else out
