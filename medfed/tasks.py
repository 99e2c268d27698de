"""A task says how a model's outputs become a loss, scores and metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medfed.errors import MedFedError
from medfed.metrics import BINARY_METRICS, binary_metrics, multiclass_metrics


@dataclass(frozen=True)
class BinaryTask:
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
class MulticlassTask:
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


TASKS = {"binary": BinaryTask(), "multiclass": MulticlassTask()}


def get_task(name: str) -> BinaryTask | MulticlassTask:
    if name not in TASKS:
        raise MedFedError(f"task {name!r} is not supported here; supported: {', '.join(TASKS)}")
    return TASKS[name]
