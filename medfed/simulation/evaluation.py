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
    details = task.details(np.concatenate(ys), np.concatenate(scores))
    if details is not None:  # e.g. multiclass: confusion matrix and per-class metrics
        result["details"] = {"pooled": details,
                             "per_site": {site.name: task.details(y, s) for site, y, s in
                                          zip(sites, ys, scores, strict=True)}}
    return result


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
