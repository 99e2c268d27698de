"""The multimodal section of a report (``report["multimodal"]``), for ``model.name: multimodal``.

In the same run as the spine's federated/local/centralized arms:
- ``models``: multimodal, image-only and clinical-only models, each trained federatedly with
  the same config, scored pooled and per site;
- ``modality_removed``: the final multimodal model scored with every image removed, then with
  every clinical row removed (the mask says "missing", as for a patient without that data);
- ``clinical_only_sites``: each site without images, its test metrics (and the others')
  with it in the federation and without it (a federation of the remaining sites).

``medfed.reports.multimodal`` renders it.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from typing import Any

import numpy as np
from flwr.app import ArrayRecord

from medfed.config import (
    RUN_EXPERIMENT,
    RUN_ID,
    RUN_LEDGER_DIR,
    ExperimentConfig,
    config_from_json,
)
from medfed.datasets.base import DataInfo, Site
from medfed.models.multimodal import site_modalities, split_layout
from medfed.simulation.evaluation import model_from_arrays, score_one_model
from medfed.tasks import get_task

CLINICAL_SCALING = ("clinical columns standardised per site with that site's training patients "
                    "(no pooling); images scaled per image")


def variant(cfg: ExperimentConfig, **changes: Any) -> ExperimentConfig:
    """``cfg`` with ``section.key`` changes, e.g. ``variant(cfg, model__modalities=["image"])``."""
    raw = json.loads(cfg.to_json())
    for key, value in changes.items():
        section, name = key.split("__")
        raw[section][name] = value
    return config_from_json(json.dumps(raw))


def without_modality(sites: list[Site], info: DataInfo, cfg: ExperimentConfig,
                     modality: str) -> list[Site]:
    """Copies of the sites whose test rows lack ``modality`` (block zeroed, mask 0)."""
    n_pixels, n_clinical = split_layout(info.input_shape[0], cfg.model_options().get(
        "image_shape", (1, 32, 32)))
    block = slice(0, n_pixels) if modality == "image" else slice(n_pixels, n_pixels + n_clinical)
    mask = -2 if modality == "image" else -1
    out = []
    for site in sites:
        x = np.array(site.x_test, np.float32, copy=True)
        x[:, block] = 0.0
        x[:, mask] = 0.0
        out.append(Site(site.name, site.x_train, site.y_train, x, site.y_test, task=site.task))
    return out


def federate(cfg: ExperimentConfig, sites: list[Site], info: DataInfo,
             exclude: set[int] = frozenset()) -> ArrayRecord:
    """Final global arrays of a federation over ``sites`` minus the ``exclude`` indices."""
    from medfed.federation.client_app import app as client_app
    from medfed.federation.rounds import RoundHooks, run_federation
    from medfed.simulation.engine import SITE_NODE_BASE, InProcessGrid

    if exclude:
        cfg = variant(cfg, strategy__min_sites=max(1, min(cfg.strategy.min_sites,
                                                          len(sites) - len(exclude))))
    with tempfile.TemporaryDirectory(prefix="medfed-arm-") as ledgers:
        # DP-SGD: each comparison arm is accounted in its own throw-away ledger (same budget),
        # never in the run's or the user's site ledgers
        grid = InProcessGrid(client_app, len(sites), {
            RUN_EXPERIMENT: cfg.to_json(), RUN_ID: f"arm-{uuid.uuid4().hex[:8]}",
            RUN_LEDGER_DIR: ledgers})
        for index in exclude:  # that hospital never joins: its node does not exist
            del grid.contexts[SITE_NODE_BASE + index]
        return run_federation(grid, cfg, RoundHooks(seed=cfg.seed)).arrays


def multimodal_section(cfg: ExperimentConfig, sites: list[Site], info: DataInfo,
                       arrays: ArrayRecord, federated: dict[str, Any]) -> dict[str, Any]:
    """Everything the multimodal report adds; ``federated`` = the spine's federated scores."""
    metric = get_task(info.task).primary_metric
    model = model_from_arrays(cfg, info, arrays)
    models = {"multimodal": federated}
    for modality in ("image", "clinical"):
        single = variant(cfg, model__modalities=[modality])
        models[f"{modality}_only"] = score_one_model(
            model_from_arrays(single, info, federate(single, sites, info)), sites, info, None)
    removed = {f"without_{m}": score_one_model(model, without_modality(sites, info, cfg, m),
                                               info, None) for m in ("image", "clinical")}
    best_single = max(models["image_only"]["pooled"].get(metric) or 0.0,
                      models["clinical_only"]["pooled"].get(metric) or 0.0)
    section = {
        "metric": metric,
        "clinical_scaling": CLINICAL_SCALING,
        "site_modalities": {s.name: sorted(site_modalities(s.x_train)) for s in sites},
        "patients_with_image": {s.name: int(np.sum(s.x_train[:, -2] > 0) +
                                            np.sum(s.x_test[:, -2] > 0)) for s in sites},
        "models": models,
        "modality_removed": removed,
        "fusion_gain": (federated["pooled"].get(metric) or 0.0) - best_single,
        "clinical_only_sites": contribution(cfg, sites, info, federated, metric),
    }
    return section


def contribution(cfg: ExperimentConfig, sites: list[Site], info: DataInfo,
                 federated: dict[str, Any], metric: str) -> dict[str, Any]:
    """Per clinical-only site: test metrics with it in the federation vs without it."""
    out = {}
    for index, site in enumerate(sites):
        if "image" in site_modalities(site.x_train) or len(sites) < 2:
            continue
        arrays = federate(cfg, sites, info, exclude={index})
        without = score_one_model(model_from_arrays(cfg, info, arrays), sites, info, None)
        others = [s.name for s in sites if s.name != site.name]
        out[site.name] = {
            "with": {"site": federated["per_site"][site.name].get(metric),
                     "other_sites_mean": _mean(federated, others, metric),
                     "pooled": federated["pooled"].get(metric)},
            "without": {"site": without["per_site"][site.name].get(metric),
                        "other_sites_mean": _mean(without, others, metric),
                        "pooled": without["pooled"].get(metric)},
        }
    return out


def _mean(scores: dict[str, Any], names: list[str], metric: str) -> float | None:
    values = [scores["per_site"][n].get(metric) for n in names]
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None

