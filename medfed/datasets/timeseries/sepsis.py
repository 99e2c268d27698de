"""PhysioNet/CinC 2019 sepsis early warning: one ``.psv`` file per ICU stay, one row per hour.

Files: pipe-separated, header of the 40 variables (``sepsis_features.COLUMNS``) and
``SepsisLabel`` (1 from 6 h before sepsis onset on), ``NaN`` for not measured. ``path`` is a
folder of ``.psv`` files (one site) or a folder with one sub-folder of ``.psv`` files per
hospital (natural sites: the challenge's ``training_setA`` and ``training_setB`` come from two
hospital systems). Default: ``$MEDFED_DATA_DIR/sepsis/``; when that is empty and ``download``
is on, the two training sets are fetched from PhysioNet
(https://physionet.org/content/challenge-2019/1.0.0/, files
``training/training_setA.zip`` and ``training_setB.zip``, ODC-BY). Demo data:
``medfed demo-data sepsis OUT --sites 2 --patients 300``.

One row per stay-hour. ``representation: window`` gives (N, F) features for an MLP,
``sequence`` (N, hours, F) for the GRU. Stays are split (train/test) and partitioned whole:
no stay is in two splits or two sites. ``y`` is float (N, 4): SepsisLabel, stay id, hour of
stay, weight of a positive hour (its site's negative/positive ratio among training hours:
class weighting computed per site, locally).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.files import data_dir
from medfed.datasets.splits import split_rows
from medfed.datasets.timeseries.sepsis_features import (
    COLUMNS,
    LABEL,
    clinical_features,
    hour_of_stay,
    hourly_features,
    sequence_features,
)
from medfed.errors import MedFedError
from medfed.tasks.timeseries import policy_of

PHYSIONET = "https://physionet.org/files/challenge-2019/1.0.0/training/{name}.zip"
TRAINING_SETS = ("training_setA", "training_setB")


def read_stay(path: Path) -> pd.DataFrame:
    """One stay's hourly table; bad files raise one line naming the file and the fix."""
    lines = path.read_text(errors="replace").splitlines()
    header = lines[0].split("|") if lines else []
    try:  # fast path: a well-formed file is a grid of numbers and NaN
        values = np.array([line.split("|") for line in lines[1:] if line], dtype=np.float64)
        if values.ndim == 2 and values.shape[1] == len(header) and LABEL in header:
            frame = pd.DataFrame(values, columns=header)
            if frame[LABEL].isin((0, 1)).all():
                return frame.reindex(columns=[*COLUMNS, LABEL])
    except ValueError:
        pass  # the careful path below says what is wrong
    try:
        frame = pd.read_csv(path, sep="|", na_values=["NaN", "nan", ""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise MedFedError(f"{path}: not a readable pipe-separated .psv ({str(exc).splitlines()[0]})"
                          "; export one stay per file with a header row") from None
    if LABEL not in frame.columns:
        raise MedFedError(f"{path}: no {LABEL!r} column (columns: {list(frame.columns)[:6]}...); "
                          "every .psv needs the PhysioNet 2019 header including SepsisLabel")
    for column in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            values = pd.to_numeric(frame[column], errors="coerce")
            bad = frame[column][values.isna() & frame[column].notna()]
            raise MedFedError(f"{path}: line {int(bad.index[0]) + 2}, column {column!r} has the "
                              f"non-numeric value {bad.iloc[0]!r}; use numbers or NaN")
    if frame.empty:
        raise MedFedError(f"{path}: header but no hourly rows; remove the file")
    if not frame[LABEL].isin((0, 1)).all():
        raise MedFedError(f"{path}: {LABEL} must be 0 or 1 in every row")
    return frame.reindex(columns=[*COLUMNS, LABEL])  # absent variables: never measured


def site_folders(root: Path) -> list[tuple[str, Path]]:
    """[(site name, folder)]: the root itself if it holds .psv files, else its sub-folders."""
    if any(root.glob("*.psv")):
        return [(root.name, root)]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("*.psv")))
    if not folders:
        raise MedFedError(f"{root}: no .psv files (directly or one folder per site); write demo "
                          "data with `medfed demo-data sepsis OUT` or set dataset.options.path")
    return [(p.name, p) for p in folders]


def download(root: Path) -> None:
    """Fetch PhysioNet's two training sets (about 40,000 stays) into ``root``."""
    import urllib.request

    for name in TRAINING_SETS:
        url = PHYSIONET.format(name=name)
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310
                payload = response.read()
        except OSError as exc:
            raise MedFedError(f"{root}: no .psv files and the download from {url} failed "
                              f"({exc.__class__.__name__}); put the files there by hand or "
                              "run `medfed demo-data sepsis OUT`") from None
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            for member in archive.namelist():
                if member.endswith(".psv"):
                    target = root / name / Path(member).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(archive.read(member))


def read_stays(root: Path, max_stays: int | None = None) -> tuple[pd.DataFrame, np.ndarray,
                                                                  np.ndarray]:
    """All hours of all stays: (raw table, stay id per row, site name per row)."""
    tables, stays, sites = [], [], []
    stay_id = 0
    for site, folder in site_folders(root):
        files = sorted(folder.glob("*.psv"))[:max_stays]
        for path in files:
            frame = read_stay(path)
            tables.append(frame)
            stays.append(np.full(len(frame), stay_id))
            sites.append(np.full(len(frame), site, dtype=object))
            stay_id += 1
    return (pd.concat(tables, ignore_index=True), np.concatenate(stays),
            np.concatenate(sites))


def split_stays(stays: np.ndarray, sites: np.ndarray, septic: np.ndarray, test_fraction: float,
                seed: int) -> np.ndarray:
    """"train"/"test" per row, drawn per site by stay (stratified by septic stay when both
    septic and other stays number 2+)."""
    split = np.empty(len(stays), dtype=object)
    for site in np.unique(sites):
        # septic is indexed by stay id: split the site's stays as a binary task's rows
        _, test_ids = split_rows(np.unique(stays[sites == site]), septic, test_fraction, seed,
                                 "binary")
        rows = sites == site
        split[rows] = np.where(np.isin(stays[rows], test_ids), "test", "train")
    return split


CLASS_WEIGHTS = ("balanced", "sqrt", "none")


def fixed_weight(class_weight: str | float) -> float:
    """A number given as ``class_weight``; anything else is a one-line error."""
    try:
        weight = float(class_weight)
    except (TypeError, ValueError):
        weight = -1.0
    if not weight > 0:
        raise MedFedError(f"dataset.options.class_weight: {class_weight!r}; use a positive "
                          f"number or one of {', '.join(CLASS_WEIGHTS)}")
    return weight


def positive_weights(label: np.ndarray, sites: np.ndarray, split: np.ndarray,
                     class_weight: str | float | None) -> np.ndarray:
    """Weight of each positive hour: a number, or per site from its own training hours:
    ``balanced`` negatives/positives, ``sqrt`` its square root (gentler: with ~2 % positive
    hours from few septic stays, full balancing overweights a handful of patients)."""
    if class_weight is None or class_weight == "none":
        return np.ones(len(label))
    if class_weight not in CLASS_WEIGHTS:
        return np.full(len(label), fixed_weight(class_weight))
    weights = np.ones(len(label))
    for site in np.unique(sites):
        rows = sites == site
        train = label[rows & (split == "train")]
        positives = max(int(train.sum()), 1)
        ratio = (len(train) - positives) / positives
        weights[rows] = np.sqrt(ratio) if class_weight == "sqrt" else ratio
    return weights


FEATURE_SETS = ("clinical", "basic")


def window_table(raw: pd.DataFrame, stays: np.ndarray, features: str, windows: Sequence[int],
                 variables: Sequence[str] | None) -> pd.DataFrame:
    """(N, F) hourly features of the ``window`` representation (``features``: clinical or
    basic)."""
    make = clinical_features if features == "clinical" else hourly_features
    return make(raw, stays, windows, variables)


def load(path: str | None = None, folder: str = "sepsis", representation: str = "window",
         features: str = "clinical", windows: Sequence[int] = (6, 24),
         variables: Sequence[str] | None = None, hours: int = 12, test_fraction: float = 0.3,
         seed: int = 42, class_weight: str | float | None = "sqrt", max_stays: int | None = None,
         download_missing: bool = True, demo_patients: int | None = None,
         alarm: dict[str, Any] | None = None) -> TableDataset:
    """Load ``.psv`` stays as hourly rows.

    ``path``: the stays (default ``$MEDFED_DATA_DIR/<folder>``); ``features`` (window
    representation): ``clinical`` (values with skewed labs on a log scale, missingness,
    rolling statistics, hours since each variable was measured, labs drawn in the last 24 h,
    SIRS, qSOFA, partial SOFA and its 24 h rise, shock index, length of stay) or ``basic``
    (values, missingness, rolling statistics); ``windows``: trailing windows (hours) of the
    rolling statistics; ``variables``: which variables get them; ``class_weight``: see
    ``positive_weights``; ``hours``: sequence length for the GRU; ``max_stays``: per site, for a
    quick look; ``demo_patients``: when ``path`` has no .psv files, first write that many
    synthetic stays per site (2 sites) there (``medfed demo-data sepsis``); ``alarm``: the
    alarm policy the report evaluates (thresholds, dwell, cooldown, horizon; see
    ``medfed.tasks.timeseries``).
    """
    if representation not in ("window", "sequence"):
        raise MedFedError(f"dataset.options.representation: {representation!r}; use window "
                          "(MLP on rolling features) or sequence (GRU)")
    if features not in FEATURE_SETS:
        raise MedFedError(f"dataset.options.features: {features!r}; use clinical (values, "
                          "trends, time since measured, SIRS/qSOFA/SOFA) or basic")
    if class_weight is not None and class_weight not in CLASS_WEIGHTS:
        fixed_weight(class_weight)  # a typo fails now, not after reading every stay
    policy_of(alarm)  # a typo in the alarm policy fails now, not after training
    root = Path(path) if path else data_dir(folder)
    if demo_patients and not (root.is_dir() and any(root.rglob("*.psv"))):
        from medfed.datasets.timeseries.sepsis_demo import write_demo

        write_demo(root, sites=2, patients=int(demo_patients), seed=seed)
    if not root.is_dir() or not any(root.rglob("*.psv")):
        if path or not download_missing:
            raise MedFedError(f"{root}: no .psv files; write demo data with `medfed demo-data "
                              "sepsis OUT` and set dataset.options.path to OUT")
        download(root)
    raw, stays, sites = read_stays(root, max_stays)
    label = raw[LABEL].to_numpy(np.float64)
    septic = np.zeros(stays.max() + 1)
    np.maximum.at(septic, stays, label)
    split = split_stays(stays, sites, septic, test_fraction, seed)
    hour = hour_of_stay(stays)
    if representation == "window":
        frame = window_table(raw, stays, features, windows, variables)
        x, names = frame.to_numpy(np.float32), list(frame.columns)
    else:
        x = sequence_features(raw, stays, hours)
        names = [f"f{i}" for i in range(x.shape[2])]
    y = np.column_stack([label, stays, hour, positive_weights(label, sites, split,
                                                             class_weight)])
    return TableDataset(name="sepsis", task="timeseries", x=x, y=y, feature_names=names,
                        groups=sites, split=split, units=stays, unit="stay",
                        class_names=["no sepsis", "sepsis"],
                        source=f"{root} ({stays.max() + 1} stays, {len(stays)} hours)")


DATASET = Dataset(
    name="sepsis", task="timeseries", default_model="mlp",
    description=("PhysioNet 2019 sepsis early warning: hourly ICU vitals/labs (.psv per stay), "
                 "one site per folder"),
    natural_sites=True, load_federation=load)
