"""FLamby's Fed-TCGA-BRCA: survival of 1,088 breast-cancer patients in 6 regions (natural sites).

Files in ``$MEDFED_DATA_DIR/tcga-brca/``: ``brca.csv`` (``pid``, 39 clinical features, ``E``
event 0/1, ``T`` days) and ``train_test_split.csv`` (``pid``, ``fold`` train/test, ``fold2``
``train_K``/``test_K`` with K = region 0-5). Same split as FLamby's benchmark, so C-indices
compare with its published figures. The files come from FLamby's repository
(https://github.com/owkin/FLamby, flamby/datasets/fed_tcga_brca/); no download here: the GDC's
terms apply, copy them by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medfed.datasets.base import Dataset, TableDataset
from medfed.datasets.files import data_dir
from medfed.errors import MedFedError
from medfed.tasks.survival import check_survival_labels


def _read(path: Path, needed: list[str]) -> pd.DataFrame:
    if not path.is_file():
        raise MedFedError(f"{path}: not found; copy FLamby's Fed-TCGA-BRCA files (brca.csv, "
                          "train_test_split.csv) there or set MEDFED_DATA_DIR")
    frame = pd.read_csv(path)
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise MedFedError(f"{path}: column(s) {missing} missing; expected FLamby's file")
    return frame


def load(path: str | None = None) -> TableDataset:
    """``path``: the folder with the two CSVs (default ``$MEDFED_DATA_DIR/tcga-brca``)."""
    folder = Path(path) if path else data_dir("tcga-brca")
    data = _read(folder / "brca.csv", ["pid", "E", "T"])
    split = _read(folder / "train_test_split.csv", ["pid", "fold2"])
    frame = data.merge(split[["pid", "fold2"]], on="pid", how="inner")
    if frame.empty:
        raise MedFedError(f"{folder}: no patient of brca.csv is in train_test_split.csv")
    fold, region = frame["fold2"].str.split("_", n=1, expand=True).T.to_numpy()
    if not set(fold) <= {"train", "test"}:
        raise MedFedError(f"{folder / 'train_test_split.csv'}: fold2 must be train_K or test_K")
    features = [c for c in data.columns if c not in ("pid", "E", "T")]
    y = frame[["T", "E"]].to_numpy(np.float64)
    problem = check_survival_labels(y[:, 0], y[:, 1], str(folder / "brca.csv"))
    if problem:
        raise MedFedError(problem)
    return TableDataset(
        name="tcga-brca", task="survival", x=frame[features].to_numpy(np.float32), y=y,
        feature_names=features, groups=np.array([f"region-{k}" for k in region], dtype=object),
        split=np.asarray(fold, dtype=object), unit="patient", source=str(folder),
    )


DATASET = Dataset(
    name="tcga-brca", task="survival", default_model="cox",
    description="FLamby Fed-TCGA-BRCA: breast-cancer survival, 1,088 patients, 6 regions (Cox)",
    natural_sites=True, load_federation=load)
