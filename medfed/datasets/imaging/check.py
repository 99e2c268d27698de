"""`medfed data check`: every problem of a site folder in one pass, one line each with its fix.

Imaging folders (``manifest.csv``) have every row read like training would read it; clinical
CSV folders (no manifest, one ``.csv``) are checked for the label column, missing values,
duplicate patients and split leaks.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from medfed.datasets.imaging.dicom import DicomProblem
from medfed.datasets.imaging.manifest import (
    MANIFEST,
    SPLITS,
    Row,
    allowed_labels,
    manifest_rows,
    read_manifest,
)
from medfed.datasets.imaging.study import grid_note
from medfed.datasets.imaging.volume import load_image, load_mask
from medfed.errors import MedFedError

FIXES = {
    "missing": "fix the path in the manifest or restore the file",
    "unreadable": "re-export the file as DICOM or NIfTI, or drop the row",
    "truncated": "the file is cut short (interrupted copy?); copy it again from the archive",
    "mixed_series": "add a `series_uid` column naming the series to use, or split the folder",
    "mixed_volumes": "add a `volume` column with the volume index to use",
    "geometry": "re-export the whole series with its geometry tags (no missing slices)",
    "mask_shape": "export the mask on the image's grid (same shape)",
    "mask_geometry": "resample the mask onto the image grid, or pair it with the right image",
    "annotation": "fix the polygon JSON (annotations with label_type polygon and [[x, y], ...] "
                  "vertices on the image's pixel grid), or the mask_category",
    "channels": "give every row the same sequences (image_<name> columns or ;-lists)",
    "label": "correct the label, or add it to labels.txt if it is a valid class",
    "split": "keep each patient's rows in one split (train or test)",
    "patient": "fill in patient_id for every row",
    "column": "fix the column in the CSV",
}


@dataclass
class Problem:
    row: int | None  # 1-based data row; None for the whole folder
    kind: str
    message: str

    def line(self) -> str:
        where = f"row {self.row}" if self.row else "folder"
        return f"{where}: {self.message} -- fix: {FIXES.get(self.kind, 'see README')}"


@dataclass
class CheckResult:
    site_dir: Path
    kind: str  # "imaging" or "csv"
    problems: list[Problem] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        return [p.line() for p in self.problems]

    def warnings(self) -> list[str]:
        """Readable rows MedFed uses with care (e.g. a tilted series: resampled only), each
        with its fix; they do not fail the check."""
        return [f"row {s['row']}: warning: {note}" for s in self.samples
                for note in s.get("warnings", [])]


def _short(message: str, site_dir: Path) -> str:
    """Paths relative to the site folder keep each line readable."""
    return message.replace(f"{site_dir.resolve()}/", "").replace(f"{site_dir}/", "")


def check_site(site_dir: Path, labels: list[str] | None = None, label_column: str = "label",
               progress: Callable[[int, int], None] | None = None,
               allowed_roots: list[str] | None = None) -> CheckResult:
    """Check an imaging site folder (``manifest.csv``) or a clinical CSV site folder;
    ``allowed_roots``: folders outside it that manifest paths may point into."""
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise MedFedError("site folder not found", where=str(site_dir),
                          fix=f"give the folder that holds {MANIFEST} (imaging) or your CSV "
                          "export (clinical)")
    if not (site_dir / MANIFEST).is_file() and csv_files(site_dir):
        return check_csv_site(site_dir, labels, label_column)
    frame = read_manifest(site_dir, label_column)
    rows = manifest_rows(site_dir, frame, label_column, allowed_roots or [])
    allowed = allowed_labels(site_dir, labels)
    result = CheckResult(site_dir, "imaging")
    for i, row in enumerate(rows):
        for problem in check_row(row, allowed, label_column in frame.columns, result.samples):
            problem.message = _short(problem.message, site_dir)
            result.problems.append(problem)
        if progress:
            progress(i + 1, len(rows))
    result.problems += split_problems(rows) + channel_problems(rows)
    result.summary = imaging_summary(rows, result.samples, frame, label_column)
    for sample in result.samples:
        sample["warnings"] = [_short(w, site_dir) for w in sample.get("warnings", [])]
    return result


def channel_problems(rows: list[Row]) -> list[Problem]:
    """Every study must have the first row's number of sequences (channels)."""
    if not rows:
        return []
    expected = len(rows[0].channels)
    return [Problem(r.number, "channels", f"{len(r.channels)} image(s) where row 1 has "
                    f"{expected}") for r in rows if len(r.channels) != expected]


def check_row(row: Row, allowed: list[str] | None, has_labels: bool,
              samples: list[dict]) -> list[Problem]:
    """Every problem of one row; a readable row also adds its shape/spacing to ``samples``."""
    problems = []
    if not row.patient_id:
        problems.append(Problem(row.number, "patient", "no patient_id"))
    if has_labels and row.mask is None and row.label is None:
        problems.append(Problem(row.number, "label", "no label"))
    if row.label is not None and allowed is not None and row.label not in allowed:
        problems.append(Problem(row.number, "label", f"label {row.label!r} is not in the "
                                f"allowed set {allowed}"))
    if row.split is not None and row.split not in SPLITS:
        problems.append(Problem(row.number, "split", f"split {row.split!r} is neither train "
                                "nor test"))
    if row.image is None:
        problems.append(Problem(row.number, "missing", "no image path"))
        return problems
    missing = [p for p in (row.images or [row.image]) if not p.exists()]
    if missing:
        problems += [Problem(row.number, "missing", f"{p}: file not found") for p in missing]
        return problems
    try:
        volumes = [load_image(p, row.series_uid, row.volume_index)
                   for p in row.images or [row.image]]
    except DicomProblem as exc:
        problems.append(Problem(row.number, exc.kind, str(exc)))
        return problems
    volume = volumes[0]
    sample = {"row": row.number, "label": row.label, "shape": volume.shape,
              "spacing": tuple(round(s, 2) for s in volume.spacing), "modality": volume.modality,
              "format": volume.fmt, "orientation": volume.orientation, "mask_labels": None,
              "channels": len(volumes)}
    if row.mask is not None:
        try:
            mask = load_mask(row.mask, volume, row.mask_category)
            sample["mask_labels"] = sorted(int(v) for v in set(mask.ravel().tolist()))
        except DicomProblem as exc:
            problems.append(Problem(row.number, exc.kind, str(exc)))
    sample["warnings"] = study_warnings(volumes, row.channels)
    samples.append(sample)
    return problems


def study_warnings(volumes: list, names: list[str]) -> list[str]:
    """Each volume's notes (irregular geometry, SEG attributes) and a channel grid mismatch."""
    notes = [note for volume in volumes for note in volume.notes]
    if len(volumes) > 1:
        names = names if len(names) == len(volumes) else [str(i) for i in range(len(volumes))]
        mismatch = grid_note(volumes, names)
        if mismatch:
            notes.append(f"{mismatch}; set dataset.options.spacing so MedFed resamples every "
                         "sequence onto the first one's grid (or re-export them co-registered)")
    return notes


def split_problems(rows: list[Row]) -> list[Problem]:
    """A patient in both splits leaks test data into training: one line per patient."""
    splits: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.patient_id and row.split in SPLITS:
            splits[row.patient_id][row.split].append(row.number)
    problems = []
    for patient, by_split in splits.items():
        if len(by_split) > 1:
            first = min(by_split["test"])
            problems.append(Problem(first, "split", f"patient {patient} is in train (rows "
                                    f"{by_split['train']}) and test (rows {by_split['test']})"))
    return problems


def imaging_summary(rows: list[Row], samples: list[dict], frame: pd.DataFrame,
                    label_column: str) -> dict:
    return {
        "rows": len(rows),
        "patients": len({r.patient_id for r in rows if r.patient_id}),
        "labels": dict(Counter(r.label for r in rows if r.label is not None)),
        "modalities": dict(Counter(s["modality"] for s in samples)),
        "formats": dict(Counter(s["format"] for s in samples)),
        "orientations (as stored)": dict(Counter(s["orientation"] for s in samples)),
        "shapes": {"x".join(map(str, k)): v for k, v in Counter(s["shape"] for s in samples)
                   .items()},
        "spacings": {"x".join(map(str, k)): v
                     for k, v in Counter(s["spacing"] for s in samples).items()},
        "masks": sum(1 for r in rows if r.mask is not None),
        "channels": dict(Counter(s.get("channels", 1) for s in samples)),
        "warnings": sum(len(s.get("warnings", [])) for s in samples),
        "splits": dict(Counter(r.split or "auto" for r in rows)),
    }


def csv_files(site_dir: Path) -> list[Path]:
    return sorted(p for p in Path(site_dir).glob("*.csv") if p.name != MANIFEST)


def clinical_csv(site_dir: Path) -> Path:
    """``data.csv`` if present, else the folder's only CSV."""
    files = csv_files(site_dir)
    named = [p for p in files if p.name == "data.csv"]
    if named:
        return named[0]
    if len(files) != 1:
        raise MedFedError(f"{site_dir}: {len(files)} CSV files and no {MANIFEST}; name the "
                          "clinical export data.csv (or keep one CSV in the folder)")
    return files[0]


def check_csv_site(site_dir: Path, labels: list[str] | None = None,
                   label_column: str = "label") -> CheckResult:
    """A clinical CSV site: label column present and valid, no duplicate patients or leaks."""
    from medfed.datasets.files import check_table_size

    path = clinical_csv(site_dir)
    check_table_size(path)
    result = CheckResult(Path(site_dir), "csv")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=["", "?", "NA"])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        result.problems.append(Problem(None, "unreadable", f"{path.name}: not a readable CSV "
                                       f"({str(exc).splitlines()[0]})"))
        return result
    if label_column not in frame.columns:
        result.problems.append(Problem(None, "column", f"{path.name}: no label column "
                                       f"{label_column!r} (columns: {list(frame.columns)}); "
                                       "pass --label-column"))
        return result
    allowed = allowed_labels(site_dir, labels)
    for number, value in enumerate(frame[label_column].tolist(), start=1):
        if pd.isna(value):
            result.problems.append(Problem(number, "label", "no label"))
        elif allowed is not None and str(value) not in allowed:
            result.problems.append(Problem(number, "label", f"label {value!r} is not in the "
                                           f"allowed set {allowed}"))
    if "patient_id" in frame.columns:
        seen: dict[str, int] = {}
        for number, pid in enumerate(frame["patient_id"].tolist(), start=1):
            if pd.isna(pid):
                result.problems.append(Problem(number, "patient", "no patient_id"))
            elif pid in seen and "split" not in frame.columns:
                result.problems.append(Problem(number, "patient", f"patient {pid} repeats row "
                                               f"{seen[pid]}; keep one row per patient"))
            else:
                seen.setdefault(pid, number)
        if "split" in frame.columns:
            rows = [Row(n, str(p), None, None, None, str(s).lower(), None, None)
                    for n, (p, s) in enumerate(zip(frame["patient_id"], frame["split"],
                                                   strict=True), start=1) if not pd.isna(p)]
            result.problems += split_problems(rows)
    counts = frame[label_column].value_counts(dropna=True)
    if len(counts) < 2:
        result.problems.append(Problem(None, "label", f"only {len(counts)} class in "
                                       f"{label_column!r}; a classifier needs at least two"))
    missing = frame.isna().sum()
    result.summary = {"file": path.name, "rows": len(frame), "columns": len(frame.columns),
                      "labels": {str(k): int(v) for k, v in counts.items()},
                      "missing_values": {c: int(n) for c, n in missing.items() if n}}
    return result
