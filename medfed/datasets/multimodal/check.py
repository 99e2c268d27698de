"""`medfed data check SITE --clinical ...`: a multimodal site folder, images and clinical rows.

Every image is read as training reads it (the imaging check, rows without an image are
allowed: patients without a scan); then the join per ``patient_id``: declared clinical columns
present, no duplicated patient, numeric values numeric, labels present and consistent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from medfed.datasets.imaging.check import (
    FIXES,
    CheckResult,
    Problem,
    _short,
    check_row,
    imaging_summary,
    split_problems,
)
from medfed.datasets.imaging.manifest import allowed_labels, manifest_rows, read_manifest
from medfed.datasets.multimodal.sites import ClinicalSpec, join_problems
from medfed.errors import MedFedError

FIXES.setdefault("clinical", "fix the clinical table (see the message)")


def parse_clinical(text: str) -> ClinicalSpec:
    """``age,crp,sex:cat`` -> numeric [age, crp], categorical {sex}."""
    numeric, categorical = [], {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        name, _, kind = item.partition(":")
        if kind in ("cat", "categorical"):
            categorical[name.strip()] = None
        elif kind in ("", "num", "numeric"):
            numeric.append(name.strip())
        else:
            raise MedFedError(f"--clinical: {item!r}; write name (numeric) or name:cat")
    if not numeric and not categorical:
        raise MedFedError("--clinical: list the clinical columns, e.g. age,crp,sex:cat")
    return ClinicalSpec(numeric, categorical)


def check_multimodal_site(site_dir: Path, labels: list[str] | None = None,
                          label_column: str = "label",
                          progress: Callable[[int, int], None] | None = None,
                          clinical: str = "",
                          allowed_roots: list[str] | None = None) -> CheckResult:
    """Every problem of a multimodal site folder, one per line (row number and fix)."""
    spec = parse_clinical(clinical)
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise MedFedError(f"{site_dir}: site folder not found; give the folder that holds "
                          "manifest.csv")
    frame = read_manifest(site_dir, label_column)
    rows = manifest_rows(site_dir, frame, label_column, allowed_roots or [])
    allowed = allowed_labels(site_dir, labels)
    result = CheckResult(site_dir, "multimodal")
    for i, row in enumerate(rows):
        if row.image is not None:  # a row without an image is a patient without a scan
            for problem in check_row(row, allowed, label_column in frame.columns,
                                     result.samples):
                problem.message = _short(problem.message, site_dir)
                result.problems.append(problem)
        if progress:
            progress(i + 1, len(rows))
    result.problems += split_problems(rows)
    patients, problems = join_problems(site_dir, spec, label_column, allowed_roots)
    result.problems += [Problem(number, "clinical", text) for number, text in problems]
    result.summary = {**imaging_summary(rows, result.samples, frame, label_column),
                      "patients": len(patients),
                      "with image": sum(p.row is not None for p in patients),
                      "with clinical": sum(p.clinical is not None for p in patients),
                      "clinical columns": ", ".join(spec.columns)}
    return result
