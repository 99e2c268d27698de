"""The two references every federated result is judged against, trained in the same run.

centralized: one model on all sites' training rows pooled (what data sharing would give);
local-only: one model per site on its own rows (what a hospital gets alone). Same model,
optimiser, seed and number of epochs (rounds x local epochs) as the federation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medfed.client.site_data import DataInfo
from medfed.client.train import pick_device, train_local
from medfed.config import ExperimentConfig
from medfed.datasets.base import Site
from medfed.datasets.scaling import combine_moments, site_moments
from medfed.simulation.evaluation import Scaling, new_model, scale, score_one_model, score_sites
from medfed.tasks import get_task


def epochs_of(cfg: ExperimentConfig) -> int:
    return cfg.rounds * cfg.train.local_epochs


def site_scaling(sites: list[Site], info: DataInfo) -> Scaling:
    if not info.standardize:
        return None
    return combine_moments(site_moments(s.x_train.reshape(s.n_train, -1)) for s in sites)


def train_arm(model, x: np.ndarray, y: np.ndarray, task, cfg: ExperimentConfig, *,
              epochs: int, seed: int, arm: str) -> None:
    """Plain training, or DP-SGD at the same budget when privacy.mode is dp-sgd (fairness)."""
    device = pick_device(cfg.train.device)
    if cfg.privacy.mode == "dp-sgd":
        from medfed.privacy.baseline import train_reference_dp

        train_reference_dp(model, x, y, task, cfg, seed=seed, device=device, arm=arm)
        return
    train_local(model, x, y, task, cfg.train, epochs=epochs, seed=seed, device=device)


def train_centralized(cfg: ExperimentConfig, sites: list[Site], info: DataInfo) -> dict[str, Any]:
    scaling = site_scaling(sites, info)
    x = np.concatenate([s.x_train for s in sites])
    y = np.concatenate([s.y_train for s in sites])
    model = new_model(cfg, info)
    train_arm(model, scale(x, scaling), y, get_task(info.task), cfg, epochs=epochs_of(cfg),
              seed=cfg.seed, arm="centralized")
    return score_one_model(model, sites, info, scaling)


def train_local_only(cfg: ExperimentConfig, sites: list[Site], info: DataInfo) -> dict[str, Any]:
    models, scalings = {}, {}
    for i, site in enumerate(sites):
        scalings[site.name] = site_scaling([site], info)
        model = new_model(cfg, info)
        train_arm(model, scale(site.x_train, scalings[site.name]), site.y_train,
                  get_task(info.task), cfg, epochs=epochs_of(cfg), seed=cfg.seed + i,
                  arm=f"local_only/{site.name}")
        models[site.name] = model
    return score_sites(models, sites, info, scalings)
