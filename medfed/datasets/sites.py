"""From a loaded dataset to virtual hospitals, each with its own stratified train/test split."""

from __future__ import annotations

import numpy as np

from medfed.datasets.base import Site, TableDataset
from medfed.datasets.partition import partition_rows
from medfed.errors import MedFedError
from medfed.tasks import get_task


def split_site(rows: np.ndarray, y: np.ndarray, test_fraction: float, seed: int,
               task: str = "binary") -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test rows of one site (unstratified if a class has < 2 rows)."""
    from sklearn.model_selection import train_test_split

    stratify = get_task(task).stratify(y[rows])
    train, test = train_test_split(rows, test_size=test_fraction, random_state=seed,
                                   stratify=stratify)
    return np.sort(train), np.sort(test)


def build_sites(data: TableDataset, scheme: str, n_sites: int, *, alpha: float = 0.5,
                test_fraction: float = 0.3, min_size: int = 10, seed: int = 42) -> list[Site]:
    """Partition ``data`` into sites; a dataset's own split is kept for natural partitions."""
    parts = partition_rows(data.y, scheme, n_sites, alpha=alpha, groups=data.groups,
                           min_size=min_size, seed=seed)
    sites = []
    for i, (name, rows) in enumerate(parts):
        if scheme == "natural" and data.split is not None:
            train, test = rows[data.split[rows] == "train"], rows[data.split[rows] == "test"]
        else:
            train, test = split_site(rows, data.y, test_fraction, seed + i, data.task)
        sites.append(Site(name, data.x[train], data.y[train], data.x[test], data.y[test],
                          task=data.task))
    check_sites(sites, data.name)
    return sites


def check_sites(sites: list[Site], dataset: str) -> None:
    """Every site must be able to train: rows in both splits, labels the task can learn."""
    for site in sites:
        if site.n_train == 0 or site.n_test == 0:
            raise MedFedError(f"{dataset}: site {site.name!r} has {site.n_train} train and "
                              f"{site.n_test} test rows; use fewer sites or more data")
        problem = get_task(site.task).check_train_labels(site.y_train)
        if problem:
            raise MedFedError(f"{dataset}: site {site.name!r} has {problem}; raise "
                              "partition.alpha, lower partition.sites, or drop that site")
