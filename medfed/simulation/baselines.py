"""The two references every federated result is judged against, trained in the same run.

centralized: one model on all sites' training rows pooled (what data sharing would give);
local-only: one model per site on its own rows (what a hospital gets alone). Same model,
optimiser, seed and number of epochs (rounds x local epochs) as the federation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from medfed.config import ExperimentConfig
from medfed.datasets.base import DataInfo, Site
from medfed.datasets.scaling import combine_moments, site_moments
from medfed.federation.messages import Scaling
from medfed.federation.train import train_local
from medfed.models import for_experiment
from medfed.models.runtime import pick_device
from medfed.privacy.baseline import pooled_units
from medfed.seeds import derive_seed
from medfed.simulation.evaluation import scale, score_one_model, score_sites
from medfed.tasks import get_task
from medfed.tasks.base import Task

Accounting = dict[str, Any]  # one DP-SGD model: epsilon, noise_multiplier, steps, sample_rate...


@dataclass
class Baselines:
    """The reference arms of a run: scores by arm, and (DP-SGD only) each model's accounting."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # local_only, centralized
    accounting: dict[str, Accounting] = field(default_factory=dict)  # report's privacy.baselines


def epochs_of(cfg: ExperimentConfig) -> int:
    return cfg.rounds * cfg.train.local_epochs


def site_scaling(sites: list[Site], info: DataInfo) -> Scaling:
    if not info.standardize:
        return None
    return combine_moments(site_moments(s.x_train.reshape(s.n_train, -1)) for s in sites)


def train_arm(model: nn.Module, x: np.ndarray, y: np.ndarray, task: Task,
              cfg: ExperimentConfig, *, epochs: int, seed: int, arm: str,
              units: np.ndarray | None = None, unit: str | None = None) -> Accounting | None:
    """Plain training, or DP-SGD at the same budget when privacy.mode is dp-sgd (fairness;
    ``units``/``unit``: the rows' privacy units, as the federation's sites have them).

    Returns the DP-SGD accounting, None when trained without DP.
    """
    device = pick_device(cfg.train.device)
    if cfg.privacy.mode == "dp-sgd":
        from medfed.privacy.baseline import train_reference_dp

        return train_reference_dp(model, x, y, task, cfg, seed=seed, device=device, arm=arm,
                                  units=units, data_unit=unit)
    train_local(model, x, y, task, cfg.train, epochs=epochs, seed=seed, device=device)
    return None


def train_centralized(cfg: ExperimentConfig, sites: list[Site], info: DataInfo
                      ) -> tuple[dict[str, Any], dict[str, Accounting]]:
    """One model on all sites' pooled training rows: its scores, its DP accounting (if any)."""
    scaling = site_scaling(sites, info)
    x = np.concatenate([s.x_train for s in sites])
    y = np.concatenate([s.y_train for s in sites])
    model = for_experiment(cfg, info, seed=cfg.seed)
    dp = train_arm(model, scale(x, scaling), y, get_task(info.task), cfg,
                   epochs=epochs_of(cfg), seed=derive_seed(cfg.seed, "centralized"),
                   arm="centralized", units=pooled_units(sites), unit=sites[0].unit)
    return score_one_model(model, sites, info, scaling), ({"centralized": dp} if dp else {})


def train_local_only(cfg: ExperimentConfig, sites: list[Site], info: DataInfo
                     ) -> tuple[dict[str, Any], dict[str, Accounting]]:
    """One model per site on its own rows: their scores, their DP accounting (if any).

    A site whose training labels cannot train a model alone (e.g. one class) gets what it
    would really have: a constant predictor (its training label frequencies), marked
    ``"degenerate"`` in its per-site scores, never dropped.
    """
    models, scalings, accounting, degenerate = {}, {}, {}, {}
    for site in sites:
        scalings[site.name] = site_scaling([site], info)
        reason = degenerate_reason(info.task, site.y_train)
        if reason:
            models[site.name], degenerate[site.name] = constant_model(info, site.y_train), reason
            continue
        model = for_experiment(cfg, info, seed=cfg.seed)
        arm = f"local_only/{site.name}"
        dp = train_arm(model, scale(site.x_train, scalings[site.name]), site.y_train,
                       get_task(info.task), cfg, epochs=epochs_of(cfg),
                       seed=derive_seed(cfg.seed, site.name, "local-only"),
                       arm=arm, units=site.units_train, unit=site.unit)
        if dp:
            accounting[arm] = dp
        models[site.name] = model
    scores = score_sites(models, sites, info, scalings)
    for name, reason in degenerate.items():
        scores["per_site"][name]["degenerate"] = reason
    return scores, accounting


def degenerate_reason(task: str, y_train: np.ndarray) -> str | None:
    """Why a site's own training rows give no model (classifiers: one class), or None."""
    problem = get_task(task).check_train_labels(y_train)
    if problem is None:
        return None
    return "single class in training" if task in ("binary", "multiclass") else problem


class ConstantModel(nn.Module):
    """The same logits for every input: (N, K), or (N, K, *spatial) when ``spatial``."""

    def __init__(self, logits: torch.Tensor, spatial: bool) -> None:
        super().__init__()
        self.register_buffer("logits", logits.float())
        self.anchor = nn.Parameter(torch.zeros(()), requires_grad=False)  # device for predict
        self.spatial = spatial

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.spatial:
            return self.logits.expand(len(x), -1) + self.anchor
        view = self.logits.view(1, -1, *([1] * (x.dim() - 2)))
        return view.expand(len(x), -1, *x.shape[2:]) + self.anchor


def constant_model(info: DataInfo, y_train: np.ndarray) -> ConstantModel:
    """The constant predictor of a site's training labels: log of their class frequencies
    (one output: the log-odds of class 1), clipped so one class gives finite logits."""
    task = get_task(info.task)
    n_out = task.n_outputs(info.n_classes)
    labels = np.asarray(task.partition_labels(y_train)).astype(np.int64)
    freq = np.clip(np.bincount(labels, minlength=max(n_out, 2))[:max(n_out, 2)] / len(labels),
                   1e-4, 1 - 1e-4)
    logits = np.log(freq[1:2] / freq[0:1]) if n_out == 1 else np.log(freq[:n_out])
    return ConstantModel(torch.as_tensor(logits), spatial=info.task == "segmentation")


def train_baselines(cfg: ExperimentConfig, sites: list[Site], info: DataInfo) -> Baselines:
    """The configured reference arms, local-only then centralized (report order)."""
    out = Baselines()
    arms = (("local_only", cfg.baselines.local_only, train_local_only),
            ("centralized", cfg.baselines.centralized, train_centralized))
    for name, wanted, train in arms:
        if wanted:
            out.metrics[name], accounting = train(cfg, sites, info)
            out.accounting |= accounting
    return out
