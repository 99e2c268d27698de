"""Any CSV export: one row per patient, a label column and, optionally, a site column.

Options: ``path`` (the CSV), ``label`` (label column), ``site_column`` (the hospital of each
row, for ``partition.scheme: natural``), ``features`` (default: every other column),
``categorical`` (columns to one-hot), ``positive`` (the label value that counts as 1),
``drop_columns`` (identifiers to ignore: they never become features).

A real hospital's folder holds ONE such CSV (``load_site``: the same options, without
``path`` and ``site_column``); it is split with the federation's test fraction and seed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.files import check_table_size
from medfed.datasets.site_folder import table_file
from medfed.errors import MedFedError


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise MedFedError("CSV file not found", where=str(path),
                          fix="set dataset.options.path to your export")
    check_table_size(path)
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise MedFedError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}); "
                          "export it as comma-separated UTF-8 with a header row") from None
    if frame.empty:
        raise MedFedError(f"{path}: the CSV has a header but no rows")
    return frame


def encode_labels(values: pd.Series, positive: object | None, where: str) -> tuple[np.ndarray,
                                                                                   list[str]]:
    classes = sorted(values.dropna().unique().tolist(), key=str)
    if len(classes) < 2:
        raise MedFedError(f"{where}: the label has a single class {classes}; a classifier "
                          "needs at least two")
    if positive is not None:
        if positive not in classes and str(positive) not in map(str, classes):
            raise MedFedError(f"{where}: positive label {positive!r} not in {classes}")
        y = (values.astype(str) == str(positive)).astype(np.int64).to_numpy()
        return y, [f"not {positive}", str(positive)]
    index = {c: i for i, c in enumerate(classes)}
    return values.map(index).astype(np.int64).to_numpy(), [str(c) for c in classes]


def load(path: str, label: str = "label", site_column: str | None = None,
         features: list[str] | None = None, categorical: list[str] | None = None,
         positive: object | None = None, drop_columns: list[str] | None = None) -> TableDataset:
    frame = read_table(path)
    for column in [label, *([site_column] if site_column else []), *(features or [])]:
        if column not in frame.columns:
            raise MedFedError(f"{path}: column {column!r} not found; columns are "
                              f"{list(frame.columns)} (set dataset.options accordingly)")
    ignored = {label, site_column, *(drop_columns or [])}
    columns = features or [c for c in frame.columns if c not in ignored]
    check_feature_columns(frame, columns, categorical or [], path)
    n_before = len(frame)
    frame = frame.dropna(subset=[*columns, label])
    if frame.empty:
        raise MedFedError(f"{path}: every row has a missing value; fill or drop those columns")
    x_frame = pd.get_dummies(frame[columns], columns=categorical or None, dtype=np.float32)
    non_numeric = [c for c in x_frame.columns if not pd.api.types.is_numeric_dtype(x_frame[c])]
    if non_numeric:
        raise MedFedError(f"{path}: non-numeric column(s) {non_numeric}; list them in "
                          "dataset.options.categorical or dataset.options.drop_columns")
    y, class_names = encode_labels(frame[label], positive, f"{path}: column {label!r}")
    groups = frame[site_column].astype(str).to_numpy(dtype=object) if site_column else None
    return TableDataset(
        name=Path(path).stem, task="binary" if len(class_names) == 2 else "multiclass",
        x=x_frame.to_numpy(np.float32), y=y, feature_names=list(x_frame.columns),
        groups=groups, class_names=class_names, units=patient_ids(frame), unit="patient",
        source=f"{path} ({n_before - len(frame)} rows with missing values dropped)",
    )


def patient_ids(frame: pd.DataFrame) -> np.ndarray | None:
    """(N,) each row's ``patient_id`` when that column repeats an id (a patient with several
    rows is then one privacy unit); None: one row per patient, the format's contract. A row
    with an empty id is its own patient."""
    if "patient_id" not in frame.columns:
        return None
    ids = frame["patient_id"].astype(str).to_numpy(dtype=object)
    empty = frame["patient_id"].isna().to_numpy()
    ids[empty] = [f"\0row-{i}" for i in np.flatnonzero(empty)]
    return ids if len(set(ids)) < len(ids) else None


def check_feature_columns(frame: pd.DataFrame, columns: list[str], categorical: list[str],
                          path: str | Path) -> None:
    """Refuse a column empty in every row, and a mostly numeric column with a few non-numbers
    (``n/a (lab down)``, ``#VALUE!``): it would silently become hundreds of one-hot inputs."""
    empty = [c for c in columns if frame[c].isna().all()]
    if empty:
        raise MedFedError(f"column(s) {empty} empty in every row", where=str(path),
                          fix="fill them, or list them in dataset.options.drop_columns")
    for column in columns:
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) and np.isinf(values).any():
            rows = ", ".join(str(i + 1) for i in values.index[np.isinf(values)][:5])
            raise MedFedError(f"column {column!r} holds infinite values (rows {rows})",
                              where=str(path), fix="leave those cells empty (missing) or "
                              "correct them")
        if column in categorical or pd.api.types.is_numeric_dtype(values):
            continue
        present = values.dropna()
        numbers = pd.to_numeric(present, errors="coerce")
        if len(present) and numbers.notna().mean() >= 0.5:
            bad = numbers.index[numbers.isna()]
            shown = ", ".join(f"row {i + 1} {present[i]!r}" for i in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise MedFedError(f"numeric column {column!r} holds {len(bad)} non-number(s): "
                              f"{shown}{more}", where=str(path),
                              fix="leave those cells empty (missing) or correct them; list "
                              "the column in dataset.options.categorical only if it is a "
                              "category")


def load_site(path: Path, options: dict[str, Any], *, test_fraction: float,
              seed: int) -> TableDataset:
    """A hospital's one CSV; unsplit (the site folder path splits it with ``split_rows``)."""
    opts = {k: v for k, v in options.items() if k not in ("path", "site_column")}
    return load(str(path), **opts)


DATASET = Dataset(
    name="csv", task="binary", default_model="mlp",
    description="Your own CSV: a label column, optional site column (options: path, label, ...)",
    natural_sites=True, load_federation=load, load_site=load_site, site_file=table_file)
