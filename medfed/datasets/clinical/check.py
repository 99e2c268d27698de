"""`data check` for clinical site tables: UCI heart-disease files and CSV exports.

Every problem in one pass (each bad line or column named, with the fix); what training works
around (rows dropped for a missing value, a random split, one class in training) is a warning.
The loaders then read the clean table exactly as `client start` would, so a table that passes
here also trains.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.datasets.clinical.heart_disease import COLUMNS as UCI_COLUMNS
from medfed.datasets.site_check import SiteCheck, table_files
from medfed.errors import MedFedError

# the 10 UCI columns FLamby's preprocessing keeps, and the values each categorical may take
USED = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang", "oldpeak"]
LEVELS = {"sex": {0, 1}, "cp": {1, 2, 3, 4}, "fbs": {0, 1}, "restecg": {0, 1, 2},
          "exang": {0, 1}, "num": {0, 1, 2, 3, 4}}


def is_heart_table(path: Path) -> bool:
    """A UCI ``processed.*.data`` file (14 fields, no header) or a CSV naming its columns."""
    try:
        with path.open(errors="replace") as handle:
            first = handle.readline().strip().lower()
    except OSError:
        return False
    fields = [f.strip() for f in first.split(",")]
    if set(UCI_COLUMNS) <= set(fields):
        return True
    return len(fields) == len(UCI_COLUMNS) and all(_number_or_gap(f) for f in fields)


def _not_heart(path: Path) -> str:
    """Why ``path``'s first line is neither 14 UCI values nor a header naming them."""
    with path.open(errors="replace") as handle:
        fields = [f.strip() for f in handle.readline().strip().lower().split(",")]
    if any(c in fields for c in UCI_COLUMNS):
        return f"header lacks {[c for c in UCI_COLUMNS if c not in fields]}"
    return f"first line has {len(fields)} value(s), not 14 numbers or '?'"


def _number_or_gap(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == "?"
    return True


def check_heart_site(path: Path) -> SiteCheck:
    """A heart-disease site: its one table (or each UCI file of a folder), line by line."""
    result = SiteCheck(path, "heart-disease")
    files = [path] if path.is_file() else table_files(path)
    if not files:
        result.add("folder", "no table file", "put the hospital's processed.<centre>.data "
                   "(UCI format) or a CSV with the 14 UCI columns in the folder")
    for file in [f for f in files if not is_heart_table(f)]:
        result.add(file.name, f"not in the UCI heart-disease format ({_not_heart(file)})",
                   f"write 14 comma-separated values per line ({', '.join(UCI_COLUMNS)}), "
                   "'?' for missing, or a header row naming them")
    files = [f for f in files if is_heart_table(f)]
    if len(files) > 1:
        result.notes.append(f"{len(files)} tables ({', '.join(f.name for f in files)}): "
                               "`client start --data` needs one table per site folder; each "
                               "is checked as its own site")
    for file in files:
        summary = check_heart_file(file, result)
        if summary:
            result.summary[file.name] = summary
    if len(files) == 1 and result.summary:
        result.summary = result.summary[files[0].name]
    return result


def check_heart_file(file: Path, result: SiteCheck) -> dict[str, Any] | None:
    """Add ``file``'s problems and warnings to ``result``; its summary when it is clean."""
    text = file.read_text(errors="replace").splitlines()
    header = [f.strip() for f in text[0].lower().split(",")] if text else []
    has_header = set(UCI_COLUMNS) <= set(header)
    rows, first_line = (text[1:], 2) if has_header else (text, 1)
    index = [header.index(c) for c in UCI_COLUMNS] if has_header else list(range(14))
    before = len(result.problems)
    values = []
    for number, raw in enumerate(rows, start=first_line):
        if raw.strip():
            row = _check_line(raw, number, index, len(header) if has_header else 14, file.name,
                              result)
            if row is not None:
                values.append(row)
    if not values and len(result.problems) == before:
        result.add(file.name, "no data rows", "export the hospital's patients, one per line")
    if len(result.problems) > before or not values:
        return None
    return _heart_summary(file, pd.DataFrame(values, columns=UCI_COLUMNS), result)


def _check_line(raw: str, number: int, index: list[int], width: int, name: str,
                result: SiteCheck) -> list[float] | None:
    """The 14 values of one line (NaN for ``?``), or None after adding its problems."""
    fields = [f.strip() for f in raw.split(",")]
    where = f"{name} line {number}"
    if len(fields) != width:
        result.add(where, f"{len(fields)} values, expected {width}",
                   "write the 14 UCI values separated by commas, '?' for missing")
        return None
    row, bad = [], False
    for column, i in zip(UCI_COLUMNS, index, strict=True):
        value = _number(fields[i])
        if value is None:
            result.add(where, f"{column} is {fields[i]!r}, not a number",
                       "use a number, or '?' when not measured")
            bad = True
        elif column in LEVELS and not np.isnan(value) and value not in LEVELS[column]:
            result.add(where, f"{column} is {fields[i]}, outside {sorted(LEVELS[column])}",
                       "correct the code (see the UCI heart-disease documentation)")
            bad = True
        elif column == "num" and np.isnan(value):
            result.add(where, "num (the diagnosis) is missing", "fill it in or drop the line")
            bad = True
        row.append(np.nan if value is None else value)
    return None if bad else row


def _number(text: str) -> float | None:
    if text in ("?", ""):
        return float("nan")
    try:
        return float(text)
    except ValueError:
        return None


def _heart_summary(file: Path, frame: pd.DataFrame, result: SiteCheck) -> dict[str, Any]:
    """The loader's view of a clean table: kept rows, split sizes, labels; warnings."""
    from medfed.datasets.clinical.heart_disease import flamby_split, preprocess
    from medfed.tasks.classification import class_counts

    incomplete = int(frame[USED].isna().any(axis=1).sum())
    if incomplete:
        gaps = frame[USED].isna().sum()
        result.notes.append(f"{file.name}: {incomplete} of {len(frame)} rows have a missing "
                               f"value ({', '.join(f'{c} {n}' for c, n in gaps.items() if n)})"
                               " and are left out, as FLamby does")
    zero_chol = int((frame["chol"] == 0).sum())
    if zero_chol:
        result.notes.append(f"{file.name}: chol is 0 in {zero_chol} rows (UCI's 'not "
                               "measured' at Switzerland and VA); they train as 0")
    x, y, _ = preprocess(frame)
    summary: dict[str, Any] = {"file": file.name, "rows": len(frame), "patients": len(y),
                               "labels": class_counts(y)}
    try:
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train = flamby_split(y, file.name)
        result.notes += [str(w.message) for w in caught]
    except MedFedError as exc:
        result.add(file.name, str(exc), "export more patients with all 10 used values")
        return summary
    summary |= {"n_train": len(train), "n_test": len(y) - len(train),
                "train_labels": class_counts(y[train])}
    if len(np.unique(y[train])) < 2:
        result.notes.append(f"{file.name}: the training split holds one class "
                               f"{class_counts(y[train])}: this site trains in the "
                               "federation; alone it would be a constant predictor")
    return summary


def check_csv_table(path: Path, options: dict[str, Any], labels: list[str] | None = None
                    ) -> SiteCheck:
    """A CSV export (``csv`` dataset): label column, numbers, missing values, patients, size."""
    result = SiteCheck(path, "csv")
    files = [path] if path.is_file() else table_files(path)
    if len(files) != 1:
        result.add("folder", f"{len(files)} table files ({', '.join(f.name for f in files)})",
                   "keep exactly one CSV export per site folder")
        return result
    file = files[0]
    from medfed.datasets.files import check_table_size

    check_table_size(file)  # a huge or sparse export is refused before pandas reads it
    try:
        frame = pd.read_csv(file, keep_default_na=True, na_values=["?"])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        result.add(file.name, f"not a readable CSV ({str(exc).splitlines()[0]})",
                   "export it as comma-separated UTF-8 with a header row")
        return result
    label = options.get("label", "label")
    if label not in frame.columns:
        result.add(file.name, f"no label column {label!r} (columns: {list(frame.columns)})",
                   "pass --label-column (dataset.options.label)")
    _csv_column_problems(file.name, frame, options, label, labels, result)
    if result.ok:
        result.summary = _csv_summary(file, frame, options, result)
    return result


def _csv_column_problems(name: str, frame: pd.DataFrame, options: dict[str, Any], label: str,
                         labels: list[str] | None, result: SiteCheck) -> None:
    ignored = {label, "patient_id", *(options.get("drop_columns") or []),
               *(options.get("categorical") or [])}
    for column in options.get("features") or [c for c in frame.columns if c not in ignored]:
        if column not in frame.columns:
            result.add(name, f"feature column {column!r} not found", "fix dataset.options.features")
            continue
        numbers = pd.to_numeric(frame[column], errors="coerce")
        present = frame[column].notna()
        bad = present & numbers.isna()
        # the loader's rule (csv_table.check_feature_columns): a text column is a category
        # (one-hot); only a mostly numeric column with a few non-numbers is a problem
        if bad.any() and numbers[present].notna().mean() >= 0.5:
            first = int(np.flatnonzero(bad.to_numpy())[0])
            result.add(f"{name} line {first + 2}", f"column {column!r} has {int(bad.sum())} "
                       f"non-numeric value(s), first {frame[column].iloc[first]!r}",
                       "fix the values, or list the column in dataset.options.categorical or "
                       "drop_columns")
    if label in frame.columns:
        for number, value in enumerate(frame[label].tolist(), start=2):
            if pd.isna(value):
                result.add(f"{name} line {number}", "no label", "fill in the label or drop the "
                           "row")
            elif labels is not None and str(value) not in labels:
                result.add(f"{name} line {number}", f"label {value!r} is not in {labels}",
                           "correct the label")
    if "patient_id" in frame.columns:
        repeated = frame["patient_id"].duplicated(keep="first") & frame["patient_id"].notna()
        for i in np.flatnonzero(repeated.to_numpy()):
            result.add(f"{name} line {i + 2}", f"patient {frame['patient_id'].iloc[i]} "
                       "repeats an earlier row", "keep one row per patient")


def _csv_summary(file: Path, frame: pd.DataFrame, options: dict[str, Any],
                 result: SiteCheck) -> dict[str, Any]:
    """The loader's view: as `client start` loads it (same options), with the split."""
    import warnings

    from medfed.datasets.site_folder import load_site_folder

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            site, data = load_site_folder(file, "csv", options)
        result.notes += [str(w.message) for w in caught]
    except MedFedError as exc:
        result.add(file.name, str(exc).replace(f"{file}: ", ""),
                   "fix the table (see the message)")
        return {}
    identifiers = [c for c in frame.columns if c == "patient_id"
                   and c not in (options.get("drop_columns") or [])]
    if identifiers:
        result.notes.append(f"{file.name}: {identifiers} train as features (one-hot) unless "
                            "listed in dataset.options.drop_columns")
    dropped = len(frame) - len(data.y)
    if dropped:
        result.notes.append(f"{file.name}: {dropped} of {len(frame)} rows have a missing "
                               "value and are left out")
    return {"file": file.name, "rows": len(frame), "patients": len(data.y),
            "features": len(data.feature_names), "n_train": site.n_train,
            "n_test": site.n_test, "train_labels": site.label_counts()["train"]}
