"""A site's train/test split: one function for simulated sites and real hospitals alike."""

from __future__ import annotations

import numpy as np

from medfed.errors import MedFedError, warn

MIN_SITE_ROWS = 4  # a real hospital's table: fewer rows cannot fill both splits


def check_site_size(n_rows: int, min_rows: int, where: str, fix: str) -> None:
    """MedFedError naming the site, its row count and ``fix`` when it has < ``min_rows``."""
    if n_rows < min_rows:
        raise MedFedError(f"site too small to split: {n_rows} usable row(s), fewer than the "
                          f"{min_rows} a site needs", where=where, fix=fix)


def split_rows(rows: np.ndarray, y: np.ndarray, test_fraction: float, seed: int,
               task: str = "binary", *, min_rows: int = 0, where: str = "",
               min_class_rows: int = 2,
               fix: str = "export more patients from this site or leave it out"
               ) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test ``rows`` of one site, stratified as the task decides.

    ``get_task(task).stratify`` picks what to stratify by (classification: the label). When a
    class has fewer than ``min_class_rows`` rows (2; FLamby's heart-disease split: 3) the split
    is random, with a warning naming ``where``. Fewer than ``min_rows`` rows, or a split that
    leaves train or test empty, is a MedFedError naming ``where``, the row count and ``fix``.
    """
    from sklearn.model_selection import train_test_split

    check_site_size(len(rows), min_rows, where, fix)
    stratify = stratify_labels(y[rows], task, min_class_rows, where)
    try:
        train, test = train_test_split(rows, test_size=test_fraction, random_state=seed,
                                       stratify=stratify)
    except ValueError:  # e.g. one row: the train set would be empty
        raise MedFedError(f"site too small to split: {len(rows)} usable row(s) leave its "
                          f"train or test split empty (test fraction {test_fraction:g})",
                          where=where, fix=fix) from None
    return np.sort(train), np.sort(test)


def split_units(rows: np.ndarray, y: np.ndarray, units: np.ndarray | None,
                test_fraction: float, seed: int, task: str = "binary", **kwargs
                ) -> tuple[np.ndarray, np.ndarray]:
    """``split_rows`` with every unit (patient, stay) whole on one side: a patient's rows,
    slices or images never train and test at once. ``units``: (N,) one id per row of the
    table (None, or one row per unit: ``split_rows`` itself). Units are stratified by their
    first row's label."""
    if units is None:
        return split_rows(rows, y, test_fraction, seed, task, **kwargs)
    ids = np.asarray(units)[rows].astype(str)
    _, first = np.unique(ids, return_index=True)
    if len(first) == len(rows):
        return split_rows(rows, y, test_fraction, seed, task, **kwargs)
    train_first, _ = split_rows(rows[first], y, test_fraction, seed, task, **kwargs)
    in_train = np.isin(ids, ids[np.isin(rows, train_first)])
    return np.sort(rows[in_train]), np.sort(rows[~in_train])


def stratify_labels(y: np.ndarray, task: str, min_class_rows: int, where: str
                    ) -> np.ndarray | None:
    """What to stratify ``y`` by, or None; warns when a rare class forces a random split."""
    from medfed.tasks import get_task  # imports torch: only when a split is drawn

    spec = get_task(task)
    stratify = spec.stratify(y)
    if stratify is not None and min_class_rows > 2:
        _, counts = np.unique(stratify, return_counts=True)
        stratify = stratify if counts.min() >= min_class_rows else None
    # with every row doubled each class has 2+ rows: a task that stratifies then was only
    # stopped by a rare class (a task that never stratifies, e.g. ICU stays, stays silent)
    if stratify is None and len(y) and spec.stratify(np.repeat(y, 2, axis=0)) is not None:
        warn(f"a class has fewer than {min_class_rows} rows (labels "
             f"{spec.label_summary(y)}); this site's train/test split is random, not "
             "stratified", where=where or "site",
             fix="its test metrics may be undefined for the rare class")
    return stratify


def fixed_split(rows: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train and test ``rows`` as the dataset's own ``split`` column ("train"/"test") says."""
    return rows[split[rows] == "train"], rows[split[rows] == "test"]


def split_column(n: int, train: np.ndarray) -> np.ndarray:
    """(n,) "train"/"test" per row: ``train`` rows train, the rest test."""
    split = np.full(n, "test", dtype=object)
    split[train] = "train"
    return split
