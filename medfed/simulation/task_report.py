"""The extra report section a task computes (e.g. the sepsis alarm table).

A task opts in with ``has_report_section`` and ``report_extras(y, scores, dataset_options) ->
dict`` (JSON-ready, stored under ``report["task_report"]``); ``medfed.reports.task`` renders
it (the task's ``markdown`` and ``figures``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord

from medfed.config import ExperimentConfig
from medfed.datasets.base import DataInfo, Site
from medfed.federation.messages import read_scaling
from medfed.federation.train import predict
from medfed.simulation.evaluation import model_from_arrays, scale
from medfed.tasks import get_task


def task_extras(cfg: ExperimentConfig, info: DataInfo, sites: list[Site], arrays: ArrayRecord,
                scaling: ConfigRecord) -> dict[str, Any] | None:
    """The task's extra section for the final global model on the pooled test rows."""
    task = get_task(info.task)
    if not task.has_report_section:
        return None
    model = model_from_arrays(cfg, info, arrays)
    stats = read_scaling(scaling)
    y = np.concatenate([s.y_test for s in sites])
    scores = np.concatenate([predict(model, scale(s.x_test, stats), task) for s in sites])
    return task.report_extras(y, scores, cfg.dataset.options)

