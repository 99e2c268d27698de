"""A task says how a model's outputs become a loss, scores and metrics, and what a label is.

Every hook is declared in ``medfed.tasks.base.Task`` (defaults in ``BaseTask``). A new task
is one class deriving from ``BaseTask`` plus one entry in ``TASKS`` ("module:Class").
"""

from __future__ import annotations

import importlib
from functools import cache

from medfed.errors import MedFedError
from medfed.tasks.base import Task

TASKS: dict[str, str] = {
    "binary": "medfed.tasks.classification:BinaryTask",
    "multiclass": "medfed.tasks.classification:MulticlassTask",
    "survival": "medfed.tasks.survival:SurvivalTask",
    "timeseries": "medfed.tasks.timeseries:TimeSeriesTask",
    "segmentation": "medfed.tasks.segmentation:SegmentationTask",
    "regions": "medfed.tasks.segmentation:RegionSegmentationTask",  # "regions:wt,tc,et"
}


@cache
def get_task(name: str) -> Task:
    """The task ``name``; ``base:argument`` names a parameterised task (e.g. the regions of
    ``regions:wt,tc,et``), built by its class's ``with_argument``."""
    base, _, argument = name.partition(":")
    if base not in TASKS:
        raise MedFedError(f"task {name!r} is not supported; supported: {', '.join(TASKS)}")
    module, cls = TASKS[base].split(":")
    task_class = getattr(importlib.import_module(module), cls)
    return task_class.with_argument(argument) if argument else task_class()
