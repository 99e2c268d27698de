"""Classification tasks: binary (one logit) and multiclass (K logits)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medfed.tasks.base import BaseTask
from medfed.tasks.metrics import BINARY_METRICS, binary_metrics, multiclass_metrics


class ClassLabels(BaseTask):
    """Label hooks shared by classifiers: class counts, stratified splits, two classes."""

    def label_summary(self, y: np.ndarray) -> dict[str, int]:
        return class_counts(y)

    def stratify(self, y: np.ndarray) -> np.ndarray | None:
        return class_stratify(y)

    def check_train_labels(self, y: np.ndarray) -> str | None:
        return None if len(np.unique(y)) >= 2 else "a single class in its training split"


@dataclass(frozen=True)
class BinaryTask(ClassLabels):
    """One logit per row; y in {0, 1}."""

    name: str = "binary"
    primary_metric: str = "auroc"
    metric_names: tuple[str, ...] = tuple(BINARY_METRICS)

    def n_outputs(self, n_classes: int) -> int:
        return 1

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits[:, 0], y.float())

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits[:, 0])

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return binary_metrics(y, scores)


@dataclass(frozen=True)
class MulticlassTask(ClassLabels):
    """K logits per row; y in {0..K-1}."""

    name: str = "multiclass"
    primary_metric: str = "auroc"
    metric_names: tuple[str, ...] = ("accuracy", "balanced_accuracy", "auroc")

    def n_outputs(self, n_classes: int) -> int:
        return n_classes

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y.long())

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return multiclass_metrics(y, scores)

    def details(self, y: np.ndarray, scores: np.ndarray) -> dict:
        """Confusion matrix (rows = true class, columns = predicted) and per-class metrics."""
        return class_details(y, scores)


def class_counts(y: np.ndarray) -> dict[str, int]:
    values, n = np.unique(np.asarray(y), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, n, strict=True)}


def class_stratify(y: np.ndarray) -> np.ndarray | None:
    """Labels to stratify a split by, or None when a class has fewer than 2 rows."""
    _, counts = np.unique(y, return_counts=True)
    return y if len(counts) > 1 and counts.min() >= 2 else None


def class_details(y: np.ndarray, proba: np.ndarray) -> dict:
    """``confusion_matrix`` (K x K counts, rows true, columns predicted) and ``per_class``
    ``{class: {precision, recall, f1, support}}`` (None where undefined); ``proba`` (N, K)."""
    y = np.asarray(y).astype(int)
    k = proba.shape[1] if proba.ndim == 2 else int(y.max(initial=0)) + 1
    pred = proba.argmax(axis=1) if proba.ndim == 2 else np.asarray(proba).astype(int)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (y, pred), 1)
    per_class = {}
    for c in range(k):
        tp, support, predicted = int(matrix[c, c]), int(matrix[c].sum()), int(matrix[:, c].sum())
        precision = tp / predicted if predicted else None
        recall = tp / support if support else None
        # F1 = 2 TP / (support + predicted); undefined only when the class never occurs
        f1 = 2 * tp / (support + predicted) if support else None
        per_class[str(c)] = {"precision": precision, "recall": recall, "f1": f1,
                             "support": support}
    return {"confusion_matrix": matrix.tolist(), "per_class": per_class}
