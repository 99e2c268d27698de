"""Wisconsin diagnostic breast cancer (scikit-learn's copy): 569 patients, 30 features.

Label 1 = malignant (the positive class a screening tool must find), 0 = benign.
Shipped with scikit-learn, so it is MedFed's embedded default: no download, no network.
"""

from __future__ import annotations

import numpy as np

from medfed.datasets.base import Dataset, TableDataset


def load(**options: object) -> TableDataset:
    from sklearn.datasets import load_breast_cancer

    if options:
        raise TypeError(f"unexpected option(s) {sorted(options)}; breast-cancer takes none")
    data = load_breast_cancer()
    # scikit-learn codes malignant as 0: flip so that malignant is the positive class
    y = (data.target == 0).astype(np.int64)
    return TableDataset(
        name="breast-cancer",
        task="binary",
        x=data.data.astype(np.float32),
        y=y,
        feature_names=list(data.feature_names),
        class_names=["benign", "malignant"],
        unit="patient",  # one row per patient
        source="sklearn.datasets.load_breast_cancer",
    )


DATASET = Dataset(
    name="breast-cancer", task="binary", default_model="mlp",
    description="Wisconsin breast cancer (569 patients, 30 features; ships with scikit-learn)",
    natural_sites=False, load_federation=load)
