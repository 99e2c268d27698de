"""Score a model on every site's test split and on the pooled test set."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord

from medfed.client.site_data import DataInfo
from medfed.client.train import predict
from medfed.config import ExperimentConfig
from medfed.datasets.base import Site
from medfed.datasets.scaling import standardize
from medfed.metrics import clean
from medfed.models import build_model
from medfed.privacy.compat import maybe_dp_ready
from medfed.tasks import get_task

Scaling = tuple[np.ndarray, np.ndarray] | None


def scaling_from_record(record: ConfigRecord) -> Scaling:
    if "feature-mean" not in record:
        return None
    return (np.asarray(record["feature-mean"], np.float32),
            np.asarray(record["feature-std"], np.float32))


def scale(x: np.ndarray, scaling: Scaling) -> np.ndarray:
    return x if scaling is None else standardize(x, *scaling)


def new_model(cfg: ExperimentConfig, info: DataInfo) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    task = get_task(info.task)
    model = build_model(cfg.model.name, info.input_shape, task.n_outputs(info.n_classes),
                        **cfg.model_options())
    return maybe_dp_ready(model, cfg.privacy.mode)  # the same layers the sites train


def model_from_arrays(cfg: ExperimentConfig, info: DataInfo, arrays: ArrayRecord):
    model = new_model(cfg, info)
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
    if hasattr(task, "details"):  # e.g. multiclass: confusion matrix and per-class metrics
        result["details"] = {"pooled": task.details(np.concatenate(ys), np.concatenate(scores)),
                             "per_site": {site.name: task.details(y, s) for site, y, s in
                                          zip(sites, ys, scores, strict=True)}}
    return result


def score_one_model(model: torch.nn.Module, sites: list[Site], info: DataInfo,
                    scaling: Scaling) -> dict[str, Any]:
    return score_sites({s.name: model for s in sites}, sites, info,
                       {s.name: scaling for s in sites})


def central_evaluation(cfg: ExperimentConfig):
    """Per-round evaluate function over the virtual sites (the ServerApp's evaluation hook)."""
    from medfed.client.site_data import simulated_federation

    sites, info = simulated_federation(cfg.to_json())

    def evaluate_fn(rnd: int, arrays: ArrayRecord, scaling: ConfigRecord) -> dict[str, Any]:
        model = model_from_arrays(cfg, info, arrays)
        return score_one_model(model, sites, info, scaling_from_record(scaling))

    return evaluate_fn
