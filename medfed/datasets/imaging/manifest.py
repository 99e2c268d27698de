"""A hospital's site folder: ``manifest.csv``, one row per sample, paths relative to the folder.

Columns: ``patient_id``, ``image`` (DICOM file, DICOM series folder, NIfTI or PNG/JPEG),
``label`` and/or ``mask`` (NIfTI, DICOM-SEG or polygon JSON), optional ``split``
(train/test), ``series_uid`` and ``volume`` (the explicit choice for folders holding several
series or volumes), ``mask_category`` (the polygon category a JSON mask is read for), and
any clinical columns. ``labels.txt`` (one allowed label per line) optionally fixes the label
set.

Several sequences of one study (e.g. MRI FLAIR, T1, T1c, T2) are channels: one column each,
``image_<name>`` (``image_flair,image_t1,image_t1c,image_t2``, in column order), or one
``image`` cell listing the files ``;``-separated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medfed.errors import MedFedError

MANIFEST = "manifest.csv"
LABELS_FILE = "labels.txt"
REQUIRED = ("patient_id", "image")
SPLITS = {"train", "test"}
CHANNEL_PREFIX = "image_"
NOT_CHANNELS = {"image_id", "image_uid", "image_date", "image_type"}  # metadata, not files


@dataclass
class Row:
    """One manifest row; ``number`` is 1-based over data rows (the header is not counted)."""

    number: int
    patient_id: str
    image: Path | None
    label: str | None
    mask: Path | None
    split: str | None
    series_uid: str | None
    volume_index: int | None
    raw_image: str = ""
    images: list[Path] = field(default_factory=list)  # every channel (images[0] is image)
    channels: list[str] = field(default_factory=list)  # their names (e.g. flair, t1)
    mask_category: str | None = None  # polygon JSON masks: the category to read


def _cell(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def manifest_path(site_dir: Path) -> Path:
    return Path(site_dir) / MANIFEST


def read_manifest(site_dir: Path, label_column: str = "label") -> pd.DataFrame:
    """The manifest as strings; a missing file or column is one clear error."""
    path = manifest_path(site_dir)
    if not Path(site_dir).is_dir():
        raise MedFedError(f"{site_dir}: site folder not found; give the folder that holds "
                          f"{MANIFEST}")
    if not path.is_file():
        raise MedFedError(f"{path}: no manifest; write a {MANIFEST} with columns patient_id, "
                          "image, label and/or mask (see README, 'Imaging site folders')")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise MedFedError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}); save it "
                          "as comma-separated UTF-8 with a header row") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED if c not in frame.columns
               and not (c == "image" and channel_columns(frame))]
    if missing:
        raise MedFedError(f"{path}: missing column(s) {missing}; the manifest needs "
                          f"patient_id, image (or image_<sequence> columns) and "
                          f"{label_column!r} and/or mask (it has {list(frame.columns)})")
    if label_column not in frame.columns and "mask" not in frame.columns:
        raise MedFedError(f"{path}: neither a {label_column!r} nor a 'mask' column; add labels "
                          "(classification) or mask paths (segmentation)")
    if frame.empty:
        raise MedFedError("manifest has a header but no rows", where=str(path),
                          fix="add one row per sample (patient_id, image, label and/or mask)")
    return frame


def channel_columns(frame: pd.DataFrame) -> list[str]:
    """The ``image_<sequence>`` columns (channels, in column order) of a manifest without an
    ``image`` column."""
    if "image" in frame.columns:
        return []
    return [c for c in frame.columns if c.startswith(CHANNEL_PREFIX) and c not in NOT_CHANNELS
            and len(c) > len(CHANNEL_PREFIX)]


def _images(record: dict, columns: list[str]) -> tuple[list[str | None], list[str]]:
    """A row's image cells and channel names: one per column, or the ``;`` list of ``image``."""
    if columns:
        return [_cell(record.get(c)) for c in columns], [c[len(CHANNEL_PREFIX):] for c in columns]
    cell = _cell(record.get("image"))
    parts = [p.strip() or None for p in cell.split(";")] if cell else [None]
    names = ["image"] if len(parts) == 1 else [f"channel {i + 1}" for i in range(len(parts))]
    return parts, names


def manifest_rows(site_dir: Path, frame: pd.DataFrame, label_column: str = "label",
                  allowed_roots: Sequence[str] = ()) -> list[Row]:
    """The manifest's rows; a path that leaves the site folder (symlinks resolved) is refused
    unless it lies under one of ``allowed_roots``."""
    from medfed.datasets.imaging.sanity import check_contained

    site_dir = Path(site_dir)
    columns = channel_columns(frame)
    rows = []
    for number, record in enumerate(frame.to_dict("records"), start=1):
        cells, names = _images(record, columns)
        mask = _cell(record.get("mask"))
        volume = _cell(record.get("volume"))
        images = [site_dir / c if c else None for c in cells]
        for path in [*images, site_dir / mask if mask else None]:
            if path is not None:
                check_contained(site_dir, path, f"{site_dir / MANIFEST} row {number}",
                                allowed_roots)
        rows.append(Row(
            number=number, patient_id=_cell(record.get("patient_id")) or "",
            image=images[0] if all(images) else None, label=_cell(record.get(label_column)),
            mask=site_dir / mask if mask else None,
            split=(_cell(record.get("split")) or "").lower() or None,
            series_uid=_cell(record.get("series_uid")),
            volume_index=int(float(volume)) if volume and is_number(volume) else None,
            raw_image=";".join(c or "" for c in cells) if len(cells) > 1 else (cells[0] or ""),
            images=images if all(images) else [], channels=names,
            mask_category=_cell(record.get("mask_category"))))
    return rows


def is_number(text: str) -> bool:
    """True when ``text`` parses as a number (e.g. a manifest's volume index)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


def allowed_labels(site_dir: Path, given: list[str] | None = None) -> list[str] | None:
    """The allowed label set: given explicitly, else ``labels.txt`` in the folder, else None."""
    if given:
        return [str(v) for v in given]
    path = Path(site_dir) / LABELS_FILE
    if path.is_file():
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return None
