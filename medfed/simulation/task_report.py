"""Report sections a task adds on top of the metric tables (e.g. the sepsis alarm table).

A task opts in with ``report_extras(y, scores, dataset_options) -> dict`` (JSON-ready, stored
under ``report["task_report"]``), ``markdown(extras) -> list[str]`` and
``figures(extras) -> {file name: PNG bytes}``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from medfed.client.site_data import DataInfo
from medfed.client.train import predict
from medfed.config import ExperimentConfig
from medfed.datasets.base import Site
from medfed.simulation.evaluation import model_from_arrays, scale, scaling_from_record
from medfed.tasks import get_task


def task_extras(cfg: ExperimentConfig, info: DataInfo, sites: list[Site], arrays: ArrayRecord,
                scaling: ConfigRecord) -> dict[str, Any] | None:
    """The task's extra section for the final global model on the pooled test rows."""
    task = get_task(info.task)
    if not hasattr(task, "report_extras"):
        return None
    model = model_from_arrays(cfg, info, arrays)
    stats = scaling_from_record(scaling)
    y = np.concatenate([s.y_test for s in sites])
    scores = np.concatenate([predict(model, scale(s.x_test, stats), task) for s in sites])
    return task.report_extras(y, scores, cfg.dataset.options)


def extra_markdown(report: dict[str, Any]) -> list[str]:
    task = get_task(report["task"])
    extras = report.get("task_report")
    return task.markdown(extras) if extras and hasattr(task, "markdown") else []


def extra_figures(report: dict[str, Any]) -> dict[str, bytes]:
    task = get_task(report["task"])
    extras = report.get("task_report")
    return task.figures(extras) if extras and hasattr(task, "figures") else {}
