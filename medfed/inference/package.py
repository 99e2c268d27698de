"""The model card of a simulated federation (``medfed simulate`` writes OUT/model/).

The federated scaling is recomputed exactly as the server combined it: each virtual site's
count, sums and sums of squares of its training rows (the site summaries carry no noise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfed.config import ExperimentConfig
from medfed.datasets.base import DataInfo, Site
from medfed.datasets.scaling import combine_moments, site_moments, standardize
from medfed.errors import MedFedError
from medfed.federation.train import predict
from medfed.inference.card import card_sections, preprocessing_section
from medfed.models import for_experiment
from medfed.tasks import get_task


def federated_scaling(sites: list[Site], info: DataInfo
                      ) -> tuple[np.ndarray, np.ndarray] | None:
    if not info.standardize:
        return None
    return combine_moments(site_moments(s.x_train.reshape(s.n_train, -1)) for s in sites)


def image_modality(cfg: ExperimentConfig) -> str | None:
    """The modality of the first training image of a site-folders dataset (e.g. CT)."""
    if cfg.dataset.name != "site-folders":
        return None
    from medfed.datasets.imaging.manifest import manifest_rows, read_manifest
    from medfed.datasets.imaging.volume import load_image

    roots = cfg.dataset.options.get("roots") or []
    root = Path(roots[0] if isinstance(roots, list) else roots)
    label_column = cfg.dataset.options.get("label_column", "label")
    try:
        rows = manifest_rows(root, read_manifest(root, label_column), label_column)
        return load_image(rows[0].image).modality if rows and rows[0].image else None
    except (MedFedError, OSError):  # training read these files; unknown, not an error
        return None


def test_scores(model: torch.nn.Module, sites: list[Site], info: DataInfo,
                scaling: tuple[np.ndarray, np.ndarray] | None) -> dict[str, np.ndarray]:
    task = get_task(info.task)
    return {s.name: predict(model, s.x_test if scaling is None else standardize(s.x_test,
                                                                                 *scaling), task)
            for s in sites}


def packable(cfg: ExperimentConfig) -> bool:
    """Multimodal models (an image and a table per patient) have no predict path yet."""
    return cfg.model.name != "multimodal"


def simulation_card(cfg: ExperimentConfig, report: dict[str, Any],
                    state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The card of the federated model of a simulation (``report`` from run_simulation)."""
    from medfed.datasets.sites import simulated_sites_and_schema

    sites, info, data = simulated_sites_and_schema(cfg.to_json())  # the run's load, no reload
    scaling = federated_scaling(sites, info)
    model = for_experiment(cfg, info)
    model.load_state_dict(state)
    scores = test_scores(model, sites, info, scaling)
    history = report.get("history", [])
    fed = report["metrics"]["federated"]
    privacy = report.get("privacy") or {}
    card = {"name": cfg.name or f"{cfg.dataset.name}-{cfg.strategy.name}", "kind": "final",
            "run_id": "simulation", "round": cfg.rounds, "rounds": cfg.rounds,
            "task": info.task, "input_shape": list(info.input_shape),
            "n_classes": info.n_classes, "dataset": cfg.dataset.name,
            "model": cfg.model.name, "strategy": cfg.strategy.name,
            "federated_metrics": {k: v for k, v in fed["pooled"].items() if v is not None},
            "sites": [{"site": s.name, "n_train": s.n_train, "n_test": s.n_test,
                       "metrics": fed["per_site"].get(s.name, {}),
                       "privacy": (privacy.get("per_site") or {}).get(s.name)
                       or {"mode": cfg.privacy.mode}} for s in sites],
            "privacy": json.loads(cfg.privacy.model_dump_json()),
            "config": json.loads(cfg.to_json()), "weights_format": "safetensors",
            "preprocessing": preprocessing_section(cfg, info, scaling, data,
                                                   image_modality(cfg))}
    card.update(card_sections(cfg, info, sites, scores, privacy, history))
    return card
