"""What every dataset loader returns, and what a site holds after partitioning."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np


@dataclass
class TableDataset:
    """A loaded dataset before it is split into sites.

    ``x``: (N, F) float32 features (or (N, C, H, W) images); ``y``: (N,) int64 labels.
    ``groups``: the natural site of each row (e.g. the hospital), if the data has one.
    ``split``: "train"/"test" per row when the dataset fixes the split (e.g. FLamby's).
    """

    name: str
    task: str
    x: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    groups: np.ndarray | None = None
    split: np.ndarray | None = None
    # rows of one unit (e.g. one ICU stay) always share a site and a split; set split with it
    units: np.ndarray | None = None
    # who one unit is: "patient" (units are patients, or each row is one), "stay" (an ICU
    # stay: one patient may have several) or None (unknown: a patient may have several rows
    # and nothing says which; DP-SGD then needs privacy.unit=row, see medfed.privacy.units)
    unit: str | None = None
    keep_split: bool = False  # split is a benchmark's official one: kept under every scheme
    class_names: list[str] = field(default_factory=list)
    standardize: bool = True  # tabular features are scaled with federated statistics
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} feature rows but {len(self.y)} labels")

    def schema(self) -> TableDataset:
        """The same dataset with no rows: its names, task and label space, cheap to keep."""
        def empty(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[:0]

        return replace(self, x=self.x[:0], y=self.y[:0], groups=empty(self.groups),
                       split=empty(self.split), units=empty(self.units))


def units_of(data: TableDataset, rows: np.ndarray) -> np.ndarray | None:
    """(len(rows),) the unit of each of ``rows``; None when every row is its own unit."""
    return None if data.units is None else np.asarray(data.units)[rows]


class SiteLoader(Protocol):
    """A real hospital's data -> its table (``Dataset.load_site``).

    ``path``: the dataset's ``site_file`` of the folder, or the folder itself. ``test_fraction``
    and ``seed`` are the federation's: a dataset that must split while loading (e.g. to scale
    clinical columns with training patients only) uses them and sets ``split``; the others
    leave ``split`` None and the site is split by ``medfed.datasets.splits.split_rows``.
    """

    def __call__(self, path: Path, options: dict[str, Any], *, test_fraction: float,
                 seed: int) -> TableDataset: ...


@dataclass(frozen=True)
class Dataset:
    """One registered dataset (``DATASET`` in its module): what `medfed datasets list` shows,
    how simulation loads the whole federation and how a real hospital loads its own folder."""

    name: str
    task: str  # as listed; a loader may refine it (e.g. multiclass for more than two labels)
    default_model: str
    description: str
    natural_sites: bool  # the data names each row's hospital (partition.scheme: natural)
    load_federation: Callable[..., TableDataset]  # dataset.options as keyword arguments
    load_site: SiteLoader | None = None  # None: simulation only, no real hospital folder
    site_file: Callable[[Path], Path] | None = None  # the folder's one file load_site reads


@dataclass(frozen=True)
class DataShape:
    """The task, one sample's shape (features, or C x spatial) and the label space."""

    task: str
    input_shape: tuple[int, ...]
    n_classes: int


@dataclass(frozen=True)
class DataInfo(DataShape):
    """What the server may know about the data: shapes and label space, never rows."""

    standardize: bool = True  # tabular features are scaled with federated statistics


def data_info(data: TableDataset) -> DataInfo:
    return DataInfo(task=data.task, input_shape=tuple(data.x.shape[1:]),
                    n_classes=max(len(data.class_names), int(data.y.max()) + 1),
                    standardize=data.standardize)


@dataclass
class Site:
    """One (virtual) hospital: its own train and test split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str = "binary"
    units_train: np.ndarray | None = None  # (n_train,) unit id per row; None: one row each
    unit: str | None = None  # as ``TableDataset.unit``

    @property
    def n_train(self) -> int:
        return len(self.y_train)

    @property
    def n_test(self) -> int:
        return len(self.y_test)

    def label_counts(self) -> dict[str, dict]:
        """Per split, what the task reports of its labels (class counts for classifiers)."""
        from medfed.tasks import get_task

        task = get_task(self.task)
        return {"train": task.label_summary(self.y_train), "test": task.label_summary(self.y_test)}
