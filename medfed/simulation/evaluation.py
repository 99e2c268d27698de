"""Score a model on every site's test split and on the pooled test set."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from medfed.config import ExperimentConfig
from medfed.datasets.base import DataInfo, Site
from medfed.datasets.scaling import standardize
from medfed.federation.messages import Scaling, read_scaling
from medfed.federation.train import predict
from medfed.models import for_experiment
from medfed.tasks import get_task
from medfed.tasks.metrics import clean


def scale(x: np.ndarray, scaling: Scaling) -> np.ndarray:
    return x if scaling is None else standardize(x, *scaling)


def model_from_arrays(cfg: ExperimentConfig, info: DataInfo, arrays: ArrayRecord):
    model = for_experiment(cfg, info, seed=cfg.seed)
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def score_sites(models: dict[str, torch.nn.Module], sites: list[Site], info: DataInfo,
                scalings: dict[str, Scaling]) -> dict[str, Any]:
    """Each site scored by its model (``models[site.name]``); pooled = all test rows."""
    task = get_task(info.task)
    per_site, ys, scores = {}, [], []
    for site in sites:
        s = predict(models[site.name], scale(site.x_test, scalings[site.name]), task)
        per_site[site.name] = clean(task.metrics(site.y_test, s))
        ys.append(site.y_test)
        scores.append(s)
    pooled = clean(task.metrics(np.concatenate(ys), np.concatenate(scores)))
    result = {"pooled": pooled, "per_site": per_site}
    undefined = undefined_metrics(result, task, dict(zip([s.name for s in sites], ys,
                                                        strict=True)))
    if undefined:  # why a metric is null, beside the numbers (they stay numeric or null)
        result["undefined"] = undefined
    details = task.details(np.concatenate(ys), np.concatenate(scores))
    if details is not None:  # e.g. multiclass: confusion matrix and per-class metrics
        result["details"] = {"pooled": details,
                             "per_site": {site.name: task.details(y, s) for site, y, s in
                                          zip(sites, ys, scores, strict=True)}}
    return result


def undefined_metrics(result: dict[str, Any], task, ys: dict[str, np.ndarray]
                      ) -> dict[str, Any]:
    """{"pooled": {metric: why}, "per_site": {site: {metric: why}}} for every null metric."""
    def reasons(metrics: dict[str, Any], y: np.ndarray) -> dict[str, str]:
        return {name: undefined_reason(name, task, y) for name, value in metrics.items()
                if value is None}

    pooled = reasons(result["pooled"], np.concatenate(list(ys.values())))
    per_site = {name: r for name, m in result["per_site"].items() if (r := reasons(m, ys[name]))}
    return {k: v for k, v in (("pooled", pooled), ("per_site", per_site)) if v}


def undefined_reason(metric: str, task, y: np.ndarray) -> str:
    """One line: why ``metric`` has no value on test labels ``y``."""
    labels = task.label_summary(y)
    if task.name == "binary":
        if metric == "sensitivity":
            return f"no positive (class 1) row in the test split (labels {labels})"
        if metric == "specificity":
            return f"no negative (class 0) row in the test split (labels {labels})"
        return f"needs both classes; the test split holds one (labels {labels})"
    return f"undefined on this test split (labels {labels})"


def score_one_model(model: torch.nn.Module, sites: list[Site], info: DataInfo,
                    scaling: Scaling) -> dict[str, Any]:
    return score_sites({s.name: model for s in sites}, sites, info,
                       {s.name: scaling for s in sites})


def central_evaluation(cfg: ExperimentConfig):
    """Per-round evaluate function over the virtual sites (the ServerApp's evaluation hook)."""
    from medfed.datasets.sites import simulated_federation

    sites, info = simulated_federation(cfg.to_json())

    def evaluate_fn(rnd: int, arrays: ArrayRecord, scaling: ConfigRecord) -> dict[str, Any]:
        model = model_from_arrays(cfg, info, arrays)
        return score_one_model(model, sites, info, read_scaling(scaling))

    return evaluate_fn
