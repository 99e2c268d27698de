"""Dataset loaders, one small module each (FLamby style), each defining ``DATASET``.

A module's ``DATASET`` (``medfed.datasets.base.Dataset``) says its task, default model and
description, how simulation loads it (``load_federation``) and, for data a real hospital can
hold, how that hospital's own folder loads (``load_site``). Adding a dataset: one module and
one line in ``DATASETS``.
"""

from __future__ import annotations

import importlib
from typing import Any

from medfed.datasets.base import Dataset, Site, TableDataset
from medfed.errors import MedFedError

# name -> module; imported lazily so that `medfed --help` stays fast
DATASETS: dict[str, str] = {
    "breast-cancer": "medfed.datasets.clinical.breast_cancer",
    "heart-disease": "medfed.datasets.clinical.heart_disease",
    "csv": "medfed.datasets.clinical.csv_table",
    "csv-survival": "medfed.datasets.clinical.csv_survival",
    "tcga-brca": "medfed.datasets.clinical.tcga_brca",
    "sepsis": "medfed.datasets.timeseries.sepsis",
    "medmnist": "medfed.datasets.imaging.medmnist",
    "nifti-pyradiomics": "medfed.datasets.imaging.nifti_pyradiomics",
    "site-folders": "medfed.datasets.imaging.site_folders",
    "multimodal-sites": "medfed.datasets.multimodal.sites",
    "ham10000": "medfed.datasets.multimodal.ham10000",
}

__all__ = ["DATASETS", "Dataset", "Site", "TableDataset", "get_dataset", "load_dataset"]


def get_dataset(name: str) -> Dataset:
    """The registered dataset ``name`` (imports its module)."""
    if name not in DATASETS:
        raise MedFedError(f"dataset.name: unknown dataset {name!r}; choose one of "
                          f"{', '.join(DATASETS)} (see `medfed datasets list`)")
    return importlib.import_module(DATASETS[name]).DATASET


def load_dataset(name: str, options: dict[str, Any] | None = None) -> TableDataset:
    """Load a registered dataset; bad options name the key and what it accepts."""
    dataset = get_dataset(name)
    try:
        return dataset.load_federation(**(options or {}))
    except TypeError as exc:
        raise MedFedError(f"dataset.options: {exc} (dataset {name!r}; see `medfed datasets "
                          "list` and the dataset's docstring)") from None
