"""A hospital's own data folder, as its SuperNode reads it in a real federation.

Clinical sites: the folder holds ONE table file.
- ``dataset.name: heart-disease``: a file in the UCI ``processed.<centre>.data`` format (14
  values per row, ``?`` for missing; a header row naming the 14 columns is allowed), with
  FLamby's preprocessing and per-hospital 66/34 split, exactly as in simulation;
- ``dataset.name: csv``: a CSV with a header and the label column of ``dataset.options``.
``check_site_folder`` runs the same loading and prints what the site would train on, so a
broken folder fails at `medfed data check` / `medfed client start`, not mid-round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.datasets.base import Site, TableDataset
from medfed.errors import MedFedError

TABLE_SUFFIXES = (".csv", ".data", ".tsv")


def table_file(folder: str | Path) -> Path:
    """The one table file of a site folder (a file path is accepted as is)."""
    folder = Path(folder)
    if folder.is_file():
        return folder
    if not folder.is_dir():
        raise MedFedError(f"{folder}: site folder not found; pass the folder holding this "
                          "hospital's export (--data)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in TABLE_SUFFIXES
                   and p.is_file() and not p.name.startswith("."))
    if len(files) != 1:
        found = ", ".join(p.name for p in files) or "none"
        raise MedFedError(f"{folder}: expected exactly one table file (.csv/.data), found "
                          f"{found}; keep one export per site folder")
    return files[0]


def _heart_frame(path: Path) -> pd.DataFrame:
    from medfed.datasets import heart_disease as hd

    first = path.read_text(errors="replace").split("\n", 1)[0].lower()
    if "age" in first:  # a header row: read by name, in the UCI order
        try:
            frame = pd.read_csv(path, na_values=["?"])
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise MedFedError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") \
                from None
        missing = [c for c in hd.COLUMNS if c not in frame.columns]
        if missing:
            raise MedFedError(f"{path}: columns {missing} missing; the heart-disease format "
                              f"has {', '.join(hd.COLUMNS)}")
        try:
            return frame[hd.COLUMNS].apply(pd.to_numeric, errors="raise")
        except ValueError as exc:
            raise MedFedError(f"{path}: non-numeric value ({exc}); use numbers and '?' for "
                              "missing") from None
    return hd.read_centre(path)


def _heart_site(path: Path, name: str) -> TableDataset:
    from medfed.datasets import heart_disease as hd

    x, y, features = hd.preprocess(_heart_frame(path))
    if len(y) == 0:
        raise MedFedError(f"{path}: every row has a missing value; no patient left to train on")
    return TableDataset(name=name, task="binary", x=x, y=y, feature_names=features,
                        class_names=["no disease", "disease"], source=str(path))


def _split(data: TableDataset, test_fraction: float, seed: int) -> Site:
    from sklearn.model_selection import train_test_split

    from medfed.tasks import get_task

    rows = np.arange(len(data.y))
    stratify = get_task(data.task).stratify(data.y)
    if len(rows) < 4:
        raise MedFedError(f"{data.source}: only {len(rows)} usable rows; a site needs at least 4")
    train, test = train_test_split(rows, test_size=test_fraction, random_state=seed,
                                   stratify=stratify)
    return Site(data.name, data.x[train], data.y[train], data.x[test], data.y[test],
                task=data.task)


def load_site_folder(folder: str | Path, dataset: str, options: dict[str, Any] | None = None,
                     test_fraction: float = 0.3, seed: int = 42) -> tuple[Site, TableDataset]:
    """This hospital's site: its train/test split and the loaded table (shapes, classes)."""
    if dataset == "multimodal-sites":  # manifest.csv (+ clinical.csv): images + clinical
        from medfed.datasets.multimodal_sites import hospital_site

        return hospital_site(folder, options, test_fraction, seed)
    path = table_file(folder)
    name = Path(folder).name or path.stem
    if dataset == "heart-disease":
        from medfed.datasets import heart_disease as hd

        data = _heart_site(path, name)
        site = _split(data, hd.TEST_FRACTION, hd.SPLIT_SEED)
    elif dataset == "csv":
        from medfed.datasets.csv_table import load

        opts = {k: v for k, v in (options or {}).items() if k not in ("path", "site_column")}
        data = load(str(path), **opts)
        data.name = name
        site = _split(data, test_fraction, seed)
    else:
        raise MedFedError(f"dataset.name {dataset!r}: a hospital folder can hold 'heart-disease' "
                          "or 'csv' tables; simulate other datasets with `medfed simulate`")
    from medfed.tasks import get_task

    problem = get_task(site.task).check_train_labels(site.y_train)
    if problem:
        raise MedFedError(f"{path}: the training split has {problem}; this site cannot train "
                          "(export more patients)")
    return site, data


def check_site_folder(folder: str | Path, dataset: str = "heart-disease",
                      options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `data check` prints for a clinical site folder; raises MedFedError when broken."""
    site, data = load_site_folder(folder, dataset, options)
    return {"folder": str(folder), "file": table_file(folder).name, "dataset": dataset,
            "features": len(data.feature_names), "n_train": site.n_train,
            "n_test": site.n_test, "label_counts": site.label_counts()}
