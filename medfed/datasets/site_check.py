"""`medfed data check`: one checker for every site format a hospital folder can hold.

The format is read from the folder (or given): ``manifest.csv`` = imaging (``site-folders``,
with ``--clinical`` ``multimodal-sites``), ``.psv`` files = PhysioNet 2019 ICU stays
(``sepsis``), a UCI ``processed.*.data`` file or a CSV naming the 14 UCI columns =
``heart-disease``, any other CSV = ``csv``. A file path is checked as that file. Every problem
is listed in one pass, one line each with where, what and the fix; things MedFed works around
(dropped incomplete rows, a split that cannot be stratified, one class in training) are
warnings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfed.errors import MedFedError

FORMATS = ("auto", "site-folders", "multimodal-sites", "heart-disease", "csv", "sepsis")


@dataclass
class SiteProblem:
    where: str  # "processed.va.data line 12", "p000009.psv", "folder"
    message: str
    fix: str

    def line(self) -> str:
        return f"{self.where}: {self.message} -- fix: {self.fix}"


@dataclass
class SiteCheck:
    """What `data check` prints: problems (exit 2), warnings, a summary of a clean site."""

    site_dir: Path
    kind: str
    problems: list[SiteProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worked around: printed as warnings
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        return [p.line() for p in self.problems]

    def warnings(self) -> list[str]:
        return [f"warning: {note}" for note in self.notes]

    def add(self, where: str, message: str, fix: str) -> None:
        self.problems.append(SiteProblem(where, message, fix))


def detect_format(path: Path) -> str:
    """The site format of a folder or file (see the module docstring)."""
    from medfed.datasets.clinical.check import is_heart_table

    if path.is_file():
        return "sepsis" if path.suffix == ".psv" else (
            "heart-disease" if is_heart_table(path) else "csv")
    if (path / "manifest.csv").is_file():
        return "site-folders"
    if psv_folders(path):
        return "sepsis"
    tables = table_files(path)
    if tables and all(is_heart_table(t) for t in tables):
        return "heart-disease"
    if tables:
        return "csv"
    raise MedFedError("no site data found (no manifest.csv, .psv, .data or .csv file)",
                      where=str(path), fix="give the folder that holds this hospital's export "
                      "(imaging: manifest.csv; clinical: one CSV or UCI .data file; ICU: .psv)")


def table_files(folder: Path) -> list[Path]:
    from medfed.datasets.site_folder import TABLE_SUFFIXES

    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in TABLE_SUFFIXES and p.name != "manifest.csv")


def check_any_site(path: str | Path, fmt: str = "auto", *, labels: list[str] | None = None,
                   label_column: str = "label", clinical: str | None = None,
                   options: dict[str, Any] | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   allowed_roots: list[str] | None = None):
    """Check a site folder (or one file) of any format; returns a result with ``kind``,
    ``ok``, ``problems``, ``lines()``, ``summary`` and (clinical, ICU) ``warnings``."""
    path = Path(path)
    if not path.exists():
        raise MedFedError("site folder not found", where=str(path),
                          fix="give the folder (or file) holding this hospital's export")
    if fmt not in FORMATS:
        raise MedFedError(f"unknown site format {fmt!r}", where="--format",
                          fix=f"choose one of {', '.join(FORMATS)}")
    if clinical is not None and fmt == "auto":
        fmt = "multimodal-sites"
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt in ("site-folders", "multimodal-sites"):
        return _imaging(path, fmt, labels, label_column, clinical, progress, allowed_roots or [])
    if fmt == "sepsis":
        return check_psv_site(path, progress)
    from medfed.datasets.clinical.check import check_csv_table, check_heart_site

    if fmt == "heart-disease":
        return check_heart_site(path)
    return check_csv_table(path, {"label": label_column, **(options or {})}, labels)


def _imaging(path: Path, fmt: str, labels, label_column, clinical, progress,
             allowed_roots: list[str]):
    if path.is_file():
        raise MedFedError(f"a {fmt} site is a folder with manifest.csv", where=str(path),
                          fix="give the folder, not a file")
    if fmt == "multimodal-sites":
        from medfed.datasets.multimodal.check import check_multimodal_site

        return check_multimodal_site(path, labels, label_column, progress=progress,
                                     clinical=clinical or "", allowed_roots=allowed_roots)
    from medfed.datasets.imaging.check import check_site

    return check_site(path, labels, label_column, progress=progress,
                      allowed_roots=allowed_roots)


# --- PhysioNet 2019 ICU stays (.psv) -----------------------------------------------------------


def psv_folders(path: Path) -> list[Path]:
    """The folder itself if it holds .psv files, else its sub-folders that do (one per site)."""
    if any(path.glob("*.psv")):
        return [path]
    return sorted(p for p in path.iterdir() if p.is_dir() and any(p.glob("*.psv")))


def check_psv_site(path: Path, progress: Callable[[int, int], None] | None = None
                   ) -> SiteCheck:
    """Every .psv stay read as the sepsis loader reads it; each broken file is one line."""
    from medfed.datasets.timeseries.sepsis import read_stay
    from medfed.datasets.timeseries.sepsis_features import COLUMNS, LABEL

    result = SiteCheck(path, "sepsis")
    files = [path] if path.is_file() else [f for d in psv_folders(path)
                                           for f in sorted(d.glob("*.psv"))]
    if not files:
        result.add("folder", "no .psv files", "put one PhysioNet 2019 .psv file per ICU stay "
                   "in the folder (or one sub-folder of them per hospital)")
        return result
    stays, unknown = [], set()
    for i, file in enumerate(files):
        with file.open(errors="replace") as handle:  # the header only; read_stay reads it all
            header = handle.readline().strip().split("|")
        unknown |= set(header) - {*COLUMNS, LABEL}
        try:
            stays.append(read_stay(file))
        except MedFedError as exc:
            result.add(file.name, str(exc).replace(f"{file}: ", ""),
                       "re-export the stay in the PhysioNet 2019 format or remove the file")
        if progress:
            progress(i + 1, len(files))
    if unknown:
        result.notes.append(f"columns {sorted(unknown)[:8]} are not PhysioNet 2019 "
                               "variables; they are ignored")
    if stays:
        result.summary = psv_summary(stays, LABEL, len(psv_folders(path)) if path.is_dir()
                                     else 1)
        if result.summary["septic_stays"] == 0:
            result.notes.append("no septic stay (SepsisLabel is 0 in every hour): this "
                                   "site trains in a federation, alone it could not")
    return result


def psv_summary(stays: list, label: str, n_sites: int) -> dict[str, Any]:
    hours = sum(len(s) for s in stays)
    labels = np.concatenate([s[label].to_numpy() for s in stays])
    values = np.concatenate([s.drop(columns=[label]).to_numpy() for s in stays])
    return {"sites": n_sites, "stays": len(stays), "hours": hours,
            "septic_stays": sum(int(s[label].max() >= 1) for s in stays),
            "positive_hours": f"{int(labels.sum())} ({labels.mean():.1%})",
            "missing_values": f"{np.isnan(values).mean():.0%} of variable-hours",
            "stay_hours": f"{min(len(s) for s in stays)}-{max(len(s) for s in stays)}"}
