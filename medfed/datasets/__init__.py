"""Dataset loaders, one small module each (FLamby style): ``load``, ``TASK``, ``DEFAULT_MODEL``."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from medfed.datasets.base import Site, TableDataset
from medfed.errors import MedFedError

# name -> module; imported lazily so that `medfed --help` stays fast
DATASETS: dict[str, str] = {
    "breast-cancer": "medfed.datasets.breast_cancer",
    "heart-disease": "medfed.datasets.heart_disease",
    "csv": "medfed.datasets.csv_table",
    "csv-survival": "medfed.datasets.csv_survival",
    "tcga-brca": "medfed.datasets.tcga_brca",
    "sepsis": "medfed.datasets.sepsis",
    "medmnist": "medfed.datasets.medmnist",
    "nifti-pyradiomics": "medfed.datasets.nifti_pyradiomics",
    "site-folders": "medfed.datasets.site_folders",
    "multimodal-sites": "medfed.datasets.multimodal_sites",
    "ham10000": "medfed.datasets.ham10000",
}

__all__ = ["DATASETS", "Site", "TableDataset", "dataset_module", "load_dataset"]


def dataset_module(name: str) -> ModuleType:
    if name not in DATASETS:
        raise MedFedError(f"dataset.name: unknown dataset {name!r}; choose one of "
                          f"{', '.join(DATASETS)} (see `medfed datasets list`)")
    return importlib.import_module(DATASETS[name])


def load_dataset(name: str, options: dict[str, Any] | None = None) -> TableDataset:
    """Load a registered dataset; bad options name the key and what it accepts."""
    module = dataset_module(name)
    try:
        return module.load(**(options or {}))
    except TypeError as exc:
        raise MedFedError(f"dataset.options: {exc} (dataset {name!r}; see `medfed datasets "
                          "list` and the dataset's docstring)") from None
