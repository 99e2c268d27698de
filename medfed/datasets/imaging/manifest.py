"""A hospital's site folder: ``manifest.csv``, one row per sample, paths relative to the folder.

Columns: ``patient_id``, ``image`` (DICOM file, DICOM series folder or NIfTI), ``label``
and/or ``mask`` (NIfTI or DICOM-SEG), optional ``split`` (train/test), ``series_uid`` and
``volume`` (the explicit choice for folders holding several series or volumes), and any
clinical columns. ``labels.txt`` (one allowed label per line) optionally fixes the label set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medfed.errors import MedFedError

MANIFEST = "manifest.csv"
LABELS_FILE = "labels.txt"
REQUIRED = ("patient_id", "image")
SPLITS = {"train", "test"}


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
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise MedFedError(f"{path}: missing column(s) {missing}; the manifest needs "
                          f"patient_id, image and {label_column!r} and/or mask "
                          f"(it has {list(frame.columns)})")
    if label_column not in frame.columns and "mask" not in frame.columns:
        raise MedFedError(f"{path}: neither a {label_column!r} nor a 'mask' column; add labels "
                          "(classification) or mask paths (segmentation)")
    return frame


def manifest_rows(site_dir: Path, frame: pd.DataFrame, label_column: str = "label") -> list[Row]:
    site_dir = Path(site_dir)
    rows = []
    for number, record in enumerate(frame.to_dict("records"), start=1):
        image, mask = _cell(record.get("image")), _cell(record.get("mask"))
        volume = _cell(record.get("volume"))
        rows.append(Row(
            number=number, patient_id=_cell(record.get("patient_id")) or "",
            image=site_dir / image if image else None, label=_cell(record.get(label_column)),
            mask=site_dir / mask if mask else None,
            split=(_cell(record.get("split")) or "").lower() or None,
            series_uid=_cell(record.get("series_uid")),
            volume_index=int(float(volume)) if volume and is_number(volume) else None,
            raw_image=image or ""))
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
