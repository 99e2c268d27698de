"""From a loaded dataset to virtual hospitals, each with its own stratified train/test split."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from medfed.config import config_from_json
from medfed.datasets import load_dataset
from medfed.datasets.base import DataInfo, Site, TableDataset, data_info, units_of
from medfed.datasets.partition import partition_rows
from medfed.datasets.shift import shift_sites
from medfed.datasets.splits import check_site_size, fixed_split, split_units
from medfed.errors import MedFedError, warn
from medfed.seeds import derive_seed
from medfed.tasks import get_task

SMALL_SITE_FIX = ("drop or merge that site's rows, fill its missing values, or lower "
                  "partition.min_site_size")


def partition_labels(data: TableDataset) -> np.ndarray:
    """(N,) integer labels for label-skew partitioners (survival: the event indicator)."""
    return get_task(data.task).partition_labels(data.y)


def partition_units(data: TableDataset, scheme: str, n_sites: int,
                    **options) -> list[tuple[str, np.ndarray]]:
    """Partition whole units (e.g. ICU stays): every row of a unit goes to the same site."""
    _, first, inverse = np.unique(data.units, return_index=True, return_inverse=True)
    labels = np.zeros(len(first), np.int64)
    np.maximum.at(labels, inverse, partition_labels(data).astype(np.int64))
    groups = None if data.groups is None else data.groups[first]
    parts = partition_rows(labels, scheme, n_sites, groups=groups, **options)
    return [(name, np.flatnonzero(np.isin(inverse, unit_rows))) for name, unit_rows in parts]


def build_sites(data: TableDataset, scheme: str, n_sites: int, *, alpha: float = 0.5,
                test_fraction: float = 0.3, min_size: int = 10, seed: int = 42) -> list[Site]:
    """Partition ``data`` into sites; a dataset's own split is kept for natural partitions.

    A site with fewer than ``min_size`` rows (after the loader dropped incomplete rows) is a
    MedFedError naming it; a site whose training labels are one class trains (warning).
    """
    if data.units is not None:
        parts = partition_units(data, scheme, n_sites, alpha=alpha, min_size=min_size, seed=seed)
    else:
        parts = partition_rows(partition_labels(data), scheme, n_sites, alpha=alpha,
                               groups=data.groups, min_size=min_size, seed=seed)
    sites = []
    for name, rows in parts:
        where = f"{data.name}: site {name!r}"
        check_site_size(len(rows), min_size, where, SMALL_SITE_FIX)
        # datasets with units (e.g. ICU stays) fix their split per unit: it is always kept
        if data.split is not None and (scheme == "natural" or data.units is not None
                                       or data.keep_split):
            train, test = fixed_split(rows, data.split)
        else:
            train, test = split_units(rows, data.y, data.units, test_fraction,
                                      derive_seed(seed, name, "split"), data.task,
                                      where=where, fix=SMALL_SITE_FIX)
        sites.append(Site(name, data.x[train], data.y[train], data.x[test], data.y[test],
                          task=data.task, units_train=units_of(data, train), unit=data.unit))
    check_sites(sites, data.name)
    return sites


def check_sites(sites: list[Site], dataset: str) -> None:
    """Every site needs rows in both splits; skewed training labels (e.g. one class) are
    data, not an error: the site trains in the federation, with a warning."""
    for site in sites:
        if site.n_train == 0 or site.n_test == 0:
            raise MedFedError(f"site {site.name!r} has {site.n_train} train and {site.n_test} "
                              "test rows", where=dataset, fix="use fewer sites or more data")
        problem = get_task(site.task).check_train_labels(site.y_train)
        if problem:
            warn(f"site {site.name!r} has {problem} (labels {site.label_counts()['train']}); "
                 "it trains in the federation", where=dataset,
                 fix="its local-only baseline is a constant predictor (see the report)")


def simulated_federation(experiment_json: str) -> tuple[list[Site], DataInfo]:
    """All virtual sites of one experiment (cached: every ClientApp of a process shares it)."""
    sites, info, _ = simulated_sites_and_schema(experiment_json)
    return sites, info


@lru_cache(maxsize=4)
def simulated_sites_and_schema(experiment_json: str
                               ) -> tuple[list[Site], DataInfo, TableDataset]:
    """The virtual sites, their ``DataInfo`` and the dataset's schema (names, no rows), from
    one load: reports and the model card read names here instead of loading the data again."""
    cfg = config_from_json(experiment_json)
    data = load_dataset(cfg.dataset.name, cfg.dataset.options)
    sites = build_sites(data, cfg.partition.scheme, cfg.partition.sites,
                        alpha=cfg.partition.alpha, test_fraction=cfg.partition.test_fraction,
                        min_size=cfg.partition.min_site_size, seed=cfg.partition_seed)
    sites = shift_sites(sites, cfg.partition.shift, cfg.partition_seed)  # per-site scanner
    return sites, data_info(data), data.schema()


@lru_cache(maxsize=4)
def hospital_site(experiment_json: str, data_path: str) -> tuple[Site, DataInfo]:
    """A real hospital's own folder (cached: a warm ClientApp process reads it once)."""
    from medfed.datasets.site_folder import load_site_folder

    cfg = config_from_json(experiment_json)
    site, data = load_site_folder(data_path, cfg.dataset.name, cfg.dataset.options,
                                  test_fraction=cfg.partition.test_fraction,
                                  seed=cfg.partition_seed)
    return site, data_info(data)
