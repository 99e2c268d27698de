"""A task says how a model's outputs become a loss, scores and metrics, and what a label is.

Each task is a small class with: ``name``, ``primary_metric``, ``metric_names``,
``n_outputs(n_classes)``, ``loss(outputs, y)``, ``scores(outputs)``, ``metrics(y, scores)``,
``label_summary(y)`` (what the report lists per site), ``stratify(y)`` (labels to stratify
a train/test split by, or None) and ``check_train_labels(y)`` (None, or what is wrong).
Register new tasks in ``TASKS`` as "module:Class".
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from medfed.errors import MedFedError

TASKS: dict[str, str] = {
    "binary": "medfed.tasks.classification:BinaryTask",
    "multiclass": "medfed.tasks.classification:MulticlassTask",
    "survival": "medfed.tasks.survival:SurvivalTask",
    "timeseries": "medfed.tasks.timeseries:TimeSeriesTask",
    "segmentation": "medfed.tasks.segmentation:SegmentationTask",
}


@cache
def get_task(name: str) -> Any:
    if name not in TASKS:
        raise MedFedError(f"task {name!r} is not supported; supported: {', '.join(TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)()
