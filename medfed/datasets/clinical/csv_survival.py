"""A hospital's own survival export: one row per patient, a time and an event column.

Options: ``path``, ``time`` (follow-up, >= 0), ``event`` (1 = event, 0 = censored),
``site_column`` (for ``partition.scheme: natural``), ``features`` (default: every other
column), ``categorical`` (columns to one-hot), ``drop_columns`` (identifiers to ignore).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.clinical.csv_table import read_table
from medfed.errors import MedFedError
from medfed.tasks.survival import check_survival_labels


def load(path: str, time: str = "time", event: str = "event", site_column: str | None = None,
         features: list[str] | None = None, categorical: list[str] | None = None,
         drop_columns: list[str] | None = None) -> TableDataset:
    frame = read_table(path)
    for column in [time, event, *([site_column] if site_column else []), *(features or [])]:
        if column not in frame.columns:
            raise MedFedError(f"{path}: column {column!r} not found; columns are "
                              f"{list(frame.columns)} (set dataset.options.time/event)")
    labels = frame[[time, event]].apply(pd.to_numeric, errors="coerce")
    if labels.isna().any().any():
        row = int(labels.isna().any(axis=1).to_numpy().argmax()) + 2
        raise MedFedError(f"{path}: line {row}: {time!r}/{event!r} must be numbers; fix or "
                          "drop that row")
    y = labels.to_numpy(np.float64)
    problem = check_survival_labels(y[:, 0], y[:, 1], f"{path}: columns {time!r}/{event!r}")
    if problem:
        raise MedFedError(problem)
    ignored = {time, event, site_column, *(drop_columns or [])}
    columns = features or [c for c in frame.columns if c not in ignored]
    keep = frame[columns].notna().all(axis=1).to_numpy()
    if not keep.any():
        raise MedFedError(f"{path}: every row has a missing feature; fill or drop those columns")
    x_frame = pd.get_dummies(frame.loc[keep, columns], columns=categorical or None,
                             dtype=np.float32)
    non_numeric = [c for c in x_frame.columns if not pd.api.types.is_numeric_dtype(x_frame[c])]
    if non_numeric:
        raise MedFedError(f"{path}: non-numeric column(s) {non_numeric}; list them in "
                          "dataset.options.categorical or dataset.options.drop_columns")
    groups = (frame.loc[keep, site_column].astype(str).to_numpy(dtype=object)
              if site_column else None)
    return TableDataset(name=Path(path).stem, task="survival", x=x_frame.to_numpy(np.float32),
                        y=y[keep], feature_names=list(x_frame.columns), groups=groups,
                        unit="patient",
                        source=f"{path} ({int((~keep).sum())} rows with missing features "
                               "dropped)")


DATASET = Dataset(
    name="csv-survival", task="survival", default_model="cox",
    description="Your own survival CSV: time and event columns (options: path, time, event, ...)",
    natural_sites=True, load_federation=load)
