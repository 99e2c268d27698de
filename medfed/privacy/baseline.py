"""DP-SGD for the simulation's reference arms (centralized, local-only), same budget.

With ``privacy.mode=dp-sgd`` a fair comparison trains the baselines under the same (epsilon,
delta) over the same number of epochs (rounds x local epochs), planned the same way. These
are counterfactual references: they are not recorded in any site's ledger. Their accounting
is returned to the caller, which passes it on to the report (``privacy.baselines``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from medfed.config import ExperimentConfig
from medfed.privacy.accounting import epsilon_of, plan_site
from medfed.privacy.dp import train_dp
from medfed.privacy.units import resolve_unit, unit_index
from medfed.tasks.base import Task


def train_reference_dp(model: nn.Module, x: np.ndarray, y: np.ndarray, task: Task,
                       cfg: ExperimentConfig, *, seed: int, device: torch.device | None,
                       arm: str, units: np.ndarray | None = None,
                       data_unit: str | None = "patient") -> dict[str, Any]:
    """Train one reference model with DP-SGD at the experiment's budget; its accounting.

    ``units``/``data_unit``: each row's patient or stay and what they are (as the sites'):
    the references protect the same unit as the federation. The accounting: epsilon,
    noise_multiplier, steps, sample_rate, grad_sample_mode, unit.
    """
    p = cfg.privacy
    epochs = cfg.rounds * cfg.train.local_epochs
    unit = resolve_unit(p.unit, data_unit, where=arm)
    units = units if unit.grouped else None
    plan = plan_site(n_train=unit_index(units, len(y))[1], batch_size=cfg.train.batch_size,
                     local_epochs=epochs,
                     rounds=1, epsilon=p.epsilon, delta=p.delta, accountant=p.accountant,
                     max_grad_norm=p.max_grad_norm, noise_multiplier=p.noise_multiplier,
                     site=arm, per_round=False)
    result = train_dp(model, x, y, task, cfg.train, noise_multiplier=plan.noise_multiplier,
                      max_grad_norm=p.max_grad_norm, epochs=epochs, seed=seed,
                      accountant=p.accountant, mode=p.grad_sample_mode, device=device,
                      units=units)
    return {"epsilon": epsilon_of(result.history, p.delta, p.accountant),
            "noise_multiplier": plan.noise_multiplier, "steps": result.steps,
            "sample_rate": plan.sample_rate, "grad_sample_mode": result.grad_sample_mode,
            "unit": unit.name}


def pooled_units(sites: list) -> np.ndarray | None:
    """(sum n_train,) unit ids of the sites' pooled training rows, site-prefixed (a unit
    never spans two hospitals); None when every site has one row per unit."""
    if all(s.units_train is None for s in sites):
        return None
    return np.concatenate([np.asarray([f"{s.name}/{u}" for u in (
        s.units_train if s.units_train is not None else range(s.n_train))], dtype=object)
        for s in sites])
