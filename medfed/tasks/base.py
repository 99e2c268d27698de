"""The task contract: every hook a task can have, declared once, with defaults.

A task turns a model's outputs into a loss, scores and metrics, and says what a label is.
Subclass ``BaseTask`` and override what differs; ``Task`` is the Protocol the rest of
MedFed is typed against.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch


class Task(Protocol):
    """What MedFed asks of a task. Shapes: ``outputs`` (N, n_outputs, ...), ``y`` (N, ...)."""

    name: str
    primary_metric: str
    metric_names: tuple[str, ...]
    has_report_section: bool  # True: report_extras/markdown/figures add a report section

    def n_outputs(self, n_classes: int) -> int: ...
    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...
    def scores(self, outputs: torch.Tensor) -> torch.Tensor: ...
    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]: ...
    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor: ...
    def label_summary(self, y: np.ndarray) -> dict[str, Any]: ...
    def stratify(self, y: np.ndarray) -> np.ndarray | None: ...
    def check_train_labels(self, y: np.ndarray) -> str | None: ...
    def partition_labels(self, y: np.ndarray) -> np.ndarray: ...
    def details(self, y: np.ndarray, scores: np.ndarray) -> dict[str, Any] | None: ...
    def report_extras(self, y: np.ndarray, scores: np.ndarray,
                      options: dict[str, Any] | None) -> dict[str, Any] | None: ...
    def markdown(self, extras: dict[str, Any]) -> list[str]: ...
    def figures(self, extras: dict[str, Any]) -> dict[str, bytes]: ...


class BaseTask:
    """Defaults for the optional hooks; a task overrides what it needs.

    Required (no default): ``name``, ``primary_metric``, ``metric_names``, ``n_outputs``,
    ``loss``, ``scores``, ``metrics``, ``label_summary``, ``stratify``, ``check_train_labels``.
    """

    # a task with its own report section sets this and overrides report_extras, markdown and
    # figures (predicting every test row for a section the task does not have would be waste)
    has_report_section: bool = False

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Outputs at inference (e.g. sliding windows over volumes); plain ``model(x)``."""
        return model(x)

    def partition_labels(self, y: np.ndarray) -> np.ndarray:
        """(N,) integer labels for label-skew partitioners (e.g. survival: the event)."""
        return y

    def details(self, y: np.ndarray, scores: np.ndarray) -> dict[str, Any] | None:
        """Extra per-site results (e.g. a confusion matrix); None when the task has none."""
        return None

    def report_extras(self, y: np.ndarray, scores: np.ndarray,
                      options: dict[str, Any] | None) -> dict[str, Any] | None:
        """A report section of the final model (JSON-ready, e.g. an alarm table), or None."""
        return None

    def markdown(self, extras: dict[str, Any]) -> list[str]:
        """report.md lines for ``report_extras``'s section."""
        return []

    def figures(self, extras: dict[str, Any]) -> dict[str, bytes]:
        """{file name: PNG bytes} for ``report_extras``'s section."""
        return {}
