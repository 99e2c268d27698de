"""A site's train/test split: one function for simulated sites and real hospitals alike."""

from __future__ import annotations

import numpy as np

from medfed.errors import MedFedError

MIN_SITE_ROWS = 4  # a real hospital's table: fewer rows cannot fill both splits


def split_rows(rows: np.ndarray, y: np.ndarray, test_fraction: float, seed: int,
               task: str = "binary", *, min_rows: int = 0,
               where: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test ``rows`` of one site, stratified as the task decides.

    ``get_task(task).stratify`` picks what to stratify by (classification: the label, only
    when every class has 2+ rows; otherwise unstratified). Fewer than ``min_rows`` rows is a
    MedFedError naming ``where``.
    """
    from sklearn.model_selection import train_test_split

    from medfed.tasks import get_task  # imports torch: only when a split is drawn

    if len(rows) < min_rows:
        raise MedFedError(f"{where}: only {len(rows)} usable rows; a site needs at least "
                          f"{min_rows}")
    stratify = get_task(task).stratify(y[rows])
    train, test = train_test_split(rows, test_size=test_fraction, random_state=seed,
                                   stratify=stratify)
    return np.sort(train), np.sort(test)


def fixed_split(rows: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and test ``rows`` as the dataset's own ``split`` column ("train"/"test") says."""
    return rows[split[rows] == "train"], rows[split[rows] == "test"]


def split_column(n: int, train: np.ndarray) -> np.ndarray:
    """(n,) "train"/"test" per row: ``train`` rows train, the rest test."""
    split = np.full(n, "test", dtype=object)
    split[train] = "train"
    return split
