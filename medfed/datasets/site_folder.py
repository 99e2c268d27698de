"""A hospital's own data folder, as its SuperNode reads it in a real federation.

Generic over datasets: the dataset's ``DATASET.load_site`` reads the folder (e.g.
``heart-disease``: one UCI-format table; ``csv``: one CSV export; ``multimodal-sites``: a
manifest plus clinical table), then the site is split with ``splits.split_rows`` unless the
dataset fixed the split itself, and its training labels are checked as simulation checks them.
``check_site_folder`` runs the same loading and prints what the site would train on, so a
broken folder fails at `medfed data check` / `medfed client start`, not mid-round.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medfed.datasets.base import Dataset, Site, TableDataset, units_of
from medfed.datasets.splits import MIN_SITE_ROWS, fixed_split, split_units
from medfed.errors import MedFedError, warn

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


def site_dataset(name: str) -> Dataset:
    """The registered dataset ``name`` if a real hospital folder can hold it."""
    from medfed.datasets import DATASETS, get_dataset

    dataset = get_dataset(name) if name in DATASETS else None
    if dataset is not None and dataset.load_site is not None:
        return dataset
    held = [repr(n) for n in DATASETS if get_dataset(n).load_site is not None]
    choices = " or ".join([", ".join(held[:-1]), held[-1]] if len(held) > 1 else held)
    raise MedFedError(f"dataset.name {name!r}: a hospital folder can hold {choices} data; "
                      "simulate other datasets with `medfed simulate`")


def site_path(folder: str | Path, dataset: Dataset) -> Path:
    """What the dataset's ``load_site`` reads: its one file of the folder, or the folder."""
    return dataset.site_file(Path(folder)) if dataset.site_file else Path(folder)


def site_of(data: TableDataset, folder: str | Path, test_fraction: float, seed: int) -> Site:
    """The site's train/test: the dataset's own split if it fixed one, else ``split_units``."""
    rows = np.arange(len(data.y))
    if data.split is not None:
        train, test = fixed_split(rows, data.split)
        if len(train) == 0 or len(test) == 0:
            raise MedFedError(f"{folder}: {len(train)} train and {len(test)} test patients; a "
                              "site needs both (check the split column)")
    else:
        train, test = split_units(rows, data.y, data.units, test_fraction, seed, data.task,
                                  min_rows=MIN_SITE_ROWS, where=data.source or str(folder))
    return Site(data.name, data.x[train], data.y[train], data.x[test], data.y[test],
                task=data.task, units_train=units_of(data, train), unit=data.unit)


def load_site_folder(folder: str | Path, dataset: str, options: dict[str, Any] | None = None,
                     test_fraction: float = 0.3, seed: int = 42) -> tuple[Site, TableDataset]:
    """This hospital's site: its train/test split and the loaded table (shapes, classes)."""
    from medfed.tasks import get_task

    spec = site_dataset(dataset)
    path = site_path(folder, spec)
    data = spec.load_site(path, dict(options or {}), test_fraction=test_fraction, seed=seed)
    data.name = Path(folder).name or path.stem or "site"
    site = site_of(data, folder, test_fraction, seed)
    problem = get_task(site.task).check_train_labels(site.y_train)
    if problem:  # skewed sites are data: it trains in the federation, alone it could not
        warn(f"this site has {problem} (labels {site.label_counts()['train']}); it trains in "
             "the federation, but a model of this site alone would be a constant predictor",
             where=str(path), fix="nothing to do, unless the labels are wrong")
    return site, data


def check_site_folder(folder: str | Path, dataset: str = "heart-disease",
                      options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What `client start` checks before joining: `data check`'s checker first (its first
    problem, one line), then the loading training does; raises MedFedError when broken."""
    from medfed.datasets.site_check import check_any_site

    if dataset in ("heart-disease", "csv"):  # the clinical formats `data check` reads line by line
        checked = check_any_site(folder, dataset, options=options,
                                 label_column=(options or {}).get("label", "label"))
        if not checked.ok:
            raise MedFedError(f"{len(checked.problems)} problem(s), first: {checked.lines()[0]}",
                              where=str(folder), fix=f"see them all: medfed data check {folder}")
    site, data = load_site_folder(folder, dataset, options)
    return {"folder": str(folder), "file": site_path(folder, site_dataset(dataset)).name,
            "dataset": dataset, "features": len(data.feature_names), "n_train": site.n_train,
            "n_test": site.n_test, "label_counts": site.label_counts()}
