"""What every dataset loader returns, and what a site holds after partitioning."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    keep_split: bool = False  # split is a benchmark's official one: kept under every scheme
    class_names: list[str] = field(default_factory=list)
    standardize: bool = True  # tabular features are scaled with federated statistics
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.x) != len(self.y):
            raise ValueError(f"{self.name}: {len(self.x)} feature rows but {len(self.y)} labels")


@dataclass
class Site:
    """One (virtual) hospital: its own train and test split."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    task: str = "binary"

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
