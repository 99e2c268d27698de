"""DICOM with pydicom: single files, multi-frame files and series folders.

A series is ordered by geometry (Image Position Patient projected on the slice normal), never by
file name; Rescale Slope/Intercept is applied, so CT values are Hounsfield units. A folder that
holds several series, or several volumes at the same positions (diffusion, multi-phase), is
refused unless the caller picks one (``series_uid`` / ``volume_index``): never silently mixed.
"""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from medfed.datasets.imaging.geometry import (
    TILT_TOLERANCE_DEG,
    GeometryProblem,
    irregular_geometry,
    tilt_degrees,
)
from medfed.errors import MedFedError

# CT window presets: name -> (level, width) in HU
WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "lung": (-600.0, 1500.0),
    "brain": (40.0, 80.0),
    "bone": (400.0, 1800.0),
    "liver": (60.0, 150.0),
    "mediastinum": (50.0, 350.0),
}


class DicomProblem(MedFedError):
    """A DICOM input that cannot be read as asked; ``kind`` names the problem for `data check`."""

    def __init__(self, message: str, kind: str = "unreadable") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class DicomImage:
    """Pixels in DICOM index order plus the geometry to place them.

    ``pixels``: (slices, rows, cols) float32 in modality units (HU for CT), or (rows, cols) for
    a single 2D image. ``affine``: 4x4 voxel (col, row, slice) -> RAS mm. ``sop_uids``: the SOP
    Instance UID of each slice (the key DICOM-SEG frames refer to).
    """

    pixels: np.ndarray
    affine: np.ndarray
    modality: str
    series_uid: str
    sop_uids: list[str] = field(default_factory=list)
    has_geometry: bool = True
    # each slice's own origin (S, 3) LPS mm, and what makes the stack irregular ('' if
    # nothing: e.g. gantry tilt, uneven gaps); an irregular stack is resampled, never used as is
    positions: np.ndarray | None = None
    irregular: str = ""
    orientation: np.ndarray | None = None
    pixel_spacing: tuple[float, float] = (1.0, 1.0)

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm along (col, row, slice)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))


def window_names() -> str:
    return ", ".join(WINDOWS)


def resolve_window(window: str | list[float] | tuple[float, float] | None
                   ) -> tuple[float, float] | None:
    """A preset name or an explicit ``[level, width]`` -> (level, width)."""
    if window is None:
        return None
    if isinstance(window, str):
        if window not in WINDOWS:
            raise MedFedError(f"dataset.options.window: unknown preset {window!r}; choose one of "
                              f"{window_names()} or give [level, width] in HU")
        return WINDOWS[window]
    level, width = (float(v) for v in window)
    if width <= 0:
        raise MedFedError("dataset.options.window: width must be > 0 (give [level, width] in HU)")
    return level, width


def apply_window(values: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip to the window and scale it to [0, 1]."""
    level, width = window
    low = level - width / 2
    return np.clip((values - low) / width, 0.0, 1.0).astype(np.float32)


def is_dicom_file(path: Path) -> bool:
    """True for files with the DICM preamble (Part 10)."""
    try:
        with path.open("rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_header(path: Path) -> pydicom.Dataset:
    """The header only (no pixel data); a file that is not DICOM raises ``DicomProblem``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
        kind = "truncated" if is_dicom_file(path) else "unreadable"
        raise DicomProblem(f"{path}: not a readable DICOM file ({exc.__class__.__name__})",
                           kind) from None


def _decode(path: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    """Header and raw pixel array; a short pixel data element reads as a truncated file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
            if "PixelData" not in ds:
                raise DicomProblem(f"{path}: DICOM file without pixel data (SOP class "
                                   f"{getattr(ds.get('SOPClassUID'), 'name', '?')}); point the "
                                   "manifest at the image, not at a report or structure set",
                                   "unreadable")
            return ds, ds.pixel_array
    except DicomProblem:
        raise
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, AttributeError,
            NotImplementedError, RuntimeError) as exc:
        text = str(exc).splitlines()[0][:120] if str(exc) else exc.__class__.__name__
        kind = "truncated" if is_dicom_file(path) or "length" in text else "unreadable"
        raise DicomProblem(f"{path}: cannot decode pixels ({text})", kind) from None


def _gray(ds: pydicom.Dataset, pixels: np.ndarray, frames: int) -> np.ndarray:
    """Colour (ultrasound, photos) to one grey channel; YBR is converted to RGB first."""
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        return pixels
    if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
        from pydicom.pixels import convert_color_space

        pixels = convert_color_space(pixels, ds.PhotometricInterpretation, "RGB")
    return pixels.mean(axis=-1)


def _rescale(ds: pydicom.Dataset, frame: int | None = None) -> tuple[float, float]:
    """(slope, intercept): top level, else the enhanced multi-frame functional groups."""
    if "RescaleSlope" in ds or "RescaleIntercept" in ds:
        return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if "PixelValueTransformationSequence" in group:
            item = group.PixelValueTransformationSequence[0]
            return float(item.get("RescaleSlope", 1)), float(item.get("RescaleIntercept", 0))
    return 1.0, 0.0


def _orientation(ds: pydicom.Dataset) -> np.ndarray | None:
    iop = ds.get("ImageOrientationPatient")
    if iop is None and "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PlaneOrientationSequence" in shared:
            iop = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    return None if iop is None else np.asarray([float(v) for v in iop])


def _pixel_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    """(between rows, between columns) in mm; 1 mm when the file does not say."""
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing is None and "SharedFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            spacing = shared.PixelMeasuresSequence[0].get("PixelSpacing")
    if spacing is None:
        return 1.0, 1.0
    return float(spacing[0]), float(spacing[1])


def _slice_thickness(ds: pydicom.Dataset) -> float:
    value = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    return float(value) if value else 1.0


def _affine(iop: np.ndarray | None, origin: np.ndarray | None, pixel_spacing: tuple[float, float],
            slice_step: float, slice_vector: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """Voxel (col, row, slice) -> RAS; DICOM patient space is LPS, hence the sign flip.

    ``slice_vector`` (LPS mm from one slice to the next) replaces normal x ``slice_step`` for
    a sheared (gantry-tilted) stack."""
    if iop is None or origin is None:
        return np.diag([pixel_spacing[1], pixel_spacing[0], slice_step, 1.0]), False
    row_dir, col_dir = iop[:3], iop[3:]
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]
    lps[:3, 1] = col_dir * pixel_spacing[0]
    lps[:3, 2] = (np.cross(row_dir, col_dir) * slice_step if slice_vector is None
                  else slice_vector)
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps, True


def _slice_step(positions: list[float], ds: pydicom.Dataset) -> float:
    steps = np.diff(positions)
    return float(np.median(steps)) if len(steps) else _slice_thickness(ds)


def read_file(path: Path) -> DicomImage:
    """One DICOM file: a 2D image, or a multi-frame volume ordered by its frame positions."""
    from medfed.datasets.imaging.sanity import check_header_values

    ds, raw = _decode(path)
    check_header_values(ds, path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = _gray(ds, raw, frames).astype(np.float32)
    modality = str(ds.get("Modality", ""))
    series_uid = str(ds.get("SeriesInstanceUID", ""))
    iop = _orientation(ds)
    if frames == 1:
        slope, intercept = _rescale(ds)
        ipp = ds.get("ImagePositionPatient")
        origin = None if ipp is None else np.asarray([float(v) for v in ipp])
        affine, geo = _affine(iop, origin, _pixel_spacing(ds), _slice_thickness(ds))
        return DicomImage(pixels * slope + intercept, affine, modality, series_uid,
                          [str(ds.get("SOPInstanceUID", ""))], geo,
                          None if origin is None else origin[None], "", iop, _pixel_spacing(ds))
    pixels = pixels.reshape(frames, *pixels.shape[-2:])
    rescale = np.asarray([_rescale(ds, i) for i in range(frames)], np.float32)
    pixels = pixels * rescale[:, 0, None, None] + rescale[:, 1, None, None]
    origins = _frame_positions(ds, frames)
    if origins is None or iop is None:
        step = [float(v) for v in ds.get("GridFrameOffsetVector") or []]
        step = float(np.median(np.diff(step))) if len(step) > 1 else _slice_thickness(ds)
        affine, _ = _affine(iop, None, _pixel_spacing(ds), step)
        return DicomImage(pixels, affine, modality, series_uid, [], False)
    normal = np.cross(iop[:3], iop[3:])
    along = origins @ normal
    order = np.argsort(along, kind="stable")
    return _placed(pixels[order], origins[order], iop, _pixel_spacing(ds), ds, path, modality,
                   series_uid, [])


def _frame_positions(ds: pydicom.Dataset, frames: int) -> np.ndarray | None:
    """Image Position Patient of each frame of an enhanced multi-frame file, if it says."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != frames:
        return None
    positions = []
    for item in per_frame:
        if "PlanePositionSequence" not in item:
            return None
        positions.append([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient])
    return np.asarray(positions)


@dataclass
class SeriesScan:
    """What a series folder holds: the files of each series (headers only)."""

    series: dict[str, list[tuple[Path, pydicom.Dataset]]]
    unreadable: list[DicomProblem]

    def describe(self) -> str:
        return "; ".join(f"{uid} ({len(files)} files, {files[0][1].get('Modality', '?')} "
                         f"{files[0][1].get('SeriesDescription', '')!s})".replace(" )", ")")
                         for uid, files in self.series.items())


SIDECARS = {".txt", ".json", ".xml", ".csv", ".md", ".html"}  # notes next to a series


def dicom_files(folder: Path) -> list[Path]:
    """Files below ``folder`` except DICOMDIR, hidden files and text sidecars, sorted."""
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.name != "DICOMDIR" and not p.name.startswith(".")
                  and p.suffix.lower() not in SIDECARS)


def scan_series(folder: Path) -> SeriesScan:
    """Group a folder's files by Series Instance UID (headers only, fast)."""
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    problems = []
    for path in dicom_files(folder):
        try:
            header = read_header(path)
        except DicomProblem as exc:
            problems.append(exc)
            continue
        series[str(header.get("SeriesInstanceUID", "?"))].append((path, header))
    return SeriesScan(dict(series), problems)


def volumes_at_positions(files: list[tuple[Path, pydicom.Dataset]]) -> list[list[int]]:
    """File indices of each volume, ordered along the slice normal.

    Several files at one position (diffusion directions, contrast phases) make several volumes,
    told apart by Temporal Position Identifier, Acquisition Number, then Instance Number.
    """
    iop = _orientation(files[0][1])
    if iop is None or any("ImagePositionPatient" not in h for _, h in files):
        raise DicomProblem(f"{files[0][0].parent}: slices without Image Position/Orientation "
                           "Patient; the series cannot be ordered by geometry (export it with "
                           "its geometry, or give one file per row)", "geometry")
    normal = np.cross(iop[:3], iop[3:])
    along = [round(float(np.dot([float(v) for v in h.ImagePositionPatient], normal)), 3)
             for _, h in files]
    at = defaultdict(list)
    for i, pos in enumerate(along):
        at[pos].append(i)
    counts = Counter(len(v) for v in at.values())
    if len(counts) > 1:
        raise DicomProblem(f"{files[0][0].parent}: slice positions repeat unevenly "
                           f"({dict(counts)} files per position); remove duplicate or missing "
                           "files, or re-export the series", "mixed_volumes")

    def acquisition(i: int) -> tuple:
        h = files[i][1]
        return (int(h.get("TemporalPositionIdentifier", 0) or 0),
                int(h.get("AcquisitionNumber", 0) or 0), int(h.get("InstanceNumber", 0) or 0))

    n_volumes = next(iter(counts))
    ordered = [sorted(at[pos], key=acquisition) for pos in sorted(at)]
    return [[slot[v] for slot in ordered] for v in range(n_volumes)]


def read_series(folder: Path, series_uid: str | None = None,
                volume_index: int | None = None) -> DicomImage:
    """A series folder as one volume (slices sorted by geometry, rescale applied)."""
    scan = scan_series(folder)
    if scan.unreadable:
        raise scan.unreadable[0]
    if not scan.series:
        raise DicomProblem(f"{folder}: no DICOM files in this folder", "missing")
    if series_uid:
        if series_uid not in scan.series:
            raise DicomProblem(f"{folder}: no series with UID {series_uid}; it holds "
                               f"{scan.describe()}", "mixed_series")
        files = scan.series[series_uid]
    elif len(scan.series) > 1:
        raise DicomProblem(f"{folder}: {len(scan.series)} series in one folder "
                           f"({scan.describe()}); choose one with a `series_uid` column in the "
                           "manifest (or dataset.options.series_uid), or split the folder",
                           "mixed_series")
    else:
        files = next(iter(scan.series.values()))
    from medfed.datasets.imaging.sanity import check_series_headers

    check_series_headers(files)  # numbers parse; one orientation and pixel spacing throughout
    volumes = volumes_at_positions(files)
    if len(volumes) > 1 and volume_index is None:
        raise DicomProblem(f"{folder}: {len(volumes)} volumes at the same slice positions "
                           "(e.g. diffusion or contrast phases); choose one with a `volume` "
                           "column in the manifest (or dataset.options.volume_index)",
                           "mixed_volumes")
    index = volume_index or 0
    if not 0 <= index < len(volumes):
        raise DicomProblem(f"{folder}: volume index {index} out of range; the series holds "
                           f"{len(volumes)} volume(s) (0..{len(volumes) - 1})", "mixed_volumes")
    return _stack([files[i] for i in volumes[index]])


def _stack(files: list[tuple[Path, pydicom.Dataset]]) -> DicomImage:
    slices, sops = [], []
    for path, _ in files:
        image = read_file(path)
        if image.pixels.ndim != 2:
            raise DicomProblem(f"{path}: a multi-frame file inside a series folder; give it "
                               "its own manifest row", "mixed_series")
        slices.append(image.pixels)
        sops.append(image.sop_uids[0])
    shapes = {s.shape for s in slices}
    if len(shapes) > 1:
        raise DicomProblem(f"{files[0][0].parent}: slices of different sizes {sorted(shapes)}; "
                           "the folder mixes acquisitions, keep one", "mixed_series")
    first = files[0][1]
    positions = np.asarray([[float(v) for v in h.ImagePositionPatient] for _, h in files])
    return _placed(np.stack(slices), positions, _orientation(first), _pixel_spacing(first),
                   first, files[0][0].parent, str(first.get("Modality", "")),
                   str(first.get("SeriesInstanceUID", "")), sops)


def _placed(pixels: np.ndarray, positions: np.ndarray, iop: np.ndarray,
            pixel_spacing: tuple[float, float], ds: pydicom.Dataset, where: Path,
            modality: str, series_uid: str, sops: list[str]) -> DicomImage:
    """Slices sorted along the normal -> a DicomImage that knows every slice's position.

    A regular stack gets its exact affine; a tilted or unevenly spaced one is flagged
    (``irregular``) with an approximate affine (first origin, mean step vector). A single gap
    of a whole multiple of the others is a missing file: ``DicomProblem`` (geometry)."""
    normal = np.cross(iop[:3], iop[3:])
    try:
        irregular = irregular_geometry(positions, normal, where)
    except GeometryProblem as exc:
        raise DicomProblem(str(exc), "geometry") from None
    along = list(positions @ normal)
    vector = None
    if tilt_degrees(positions, normal) > TILT_TOLERANCE_DEG:  # sheared: step along the table
        vector = (positions[-1] - positions[0]) / (len(positions) - 1)
    affine, geo = _affine(iop, positions[0], pixel_spacing, _slice_step(along, ds), vector)
    return DicomImage(pixels, affine, modality, series_uid, sops, geo, positions, irregular,
                      iop, pixel_spacing)


def read_dicom(path: Path, series_uid: str | None = None,
               volume_index: int | None = None) -> DicomImage:
    """A DICOM file or series folder (see module docstring)."""
    path = Path(path)
    if path.is_dir():
        return read_series(path, series_uid, volume_index)
    if not path.exists():
        raise DicomProblem(f"{path}: file not found; fix the manifest path", "missing")
    return read_file(path)
