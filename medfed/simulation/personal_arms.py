"""``personalize:`` in ``medfed simulate``: the personalised arms, scored per site.

- ``ditto`` trains beside the main federation (each site's personal model on its disk);
- ``fedbn`` and ``perhead`` change what is shared, so each runs its own federation (same
  seed, sites and rounds); every site is scored by the global model plus its own layers;
- ``finetune`` starts from the main federation's final global model and trains it further on
  each site's training split.

Each arm's ``metrics.<arm>`` has the shape of ``metrics.federated`` (pooled and per site).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from medfed.config import RUN_ID, ExperimentConfig
from medfed.datasets.base import DataInfo, Site
from medfed.errors import warn
from medfed.federation import personalize
from medfed.federation.messages import read_scaling
from medfed.federation.train import train_local
from medfed.models.runtime import pick_device
from medfed.seeds import derive_seed
from medfed.simulation.evaluation import model_from_arrays, scale, score_sites
from medfed.tasks import get_task

Federate = Callable[[ExperimentConfig, dict[str, str]], Any]  # (cfg, run config) -> result


class PersonalRun:
    """The folder of the sites' personal weights for one simulation (removed at the end)."""

    def __init__(self, cfg: ExperimentConfig, run_id: str, ledger_dir: Path | None = None
                 ) -> None:
        self.cfg, self.run_id, self.ledger_dir = cfg, run_id, ledger_dir
        self._tmp = tempfile.TemporaryDirectory(prefix="medfed-personal-")
        self.root = Path(self._tmp.name)

    def run_config(self, arm: str = "") -> dict[str, str]:
        """The main federation (arm ""), or a fedbn/perhead federation with its own run id."""
        out = {personalize.RUN_PERSONAL_DIR: str(self.root), personalize.RUN_PERSONAL_ARM: arm}
        if arm:
            out[RUN_ID] = f"{self.run_id}-{arm}"
        return out

    def close(self) -> None:
        self._tmp.cleanup()


def arm_config(cfg: ExperimentConfig, arm: str) -> ExperimentConfig:
    """The experiment as a fedbn/perhead federation sees it (only that arm)."""
    return cfg.model_copy(update={"personalize": [arm]})


def personal_metrics(cfg: ExperimentConfig, sites: list[Site], info: DataInfo, fed: Any,
                     run: PersonalRun, federate: Federate) -> dict[str, dict[str, Any]]:
    """``metrics.<arm>`` for each arm in ``cfg.personalize`` (main federation ``fed`` done)."""
    out: dict[str, dict[str, Any]] = {}
    scaling = read_scaling(fed.summary.scaling)
    for arm in cfg.personalize:
        if arm == "finetune":
            out[arm] = finetune_scores(cfg, sites, info, fed.arrays, scaling, run)
        elif arm == "ditto":
            out[arm] = stored_scores(cfg, sites, info, fed.arrays, scaling, run.root,
                                     run.run_id, arm)
        else:
            warn_if_nothing_local(cfg, info, arm)
            arm_fed = federate(arm_config(cfg, arm), run.run_config(arm))
            out[arm] = stored_scores(cfg, sites, info, arm_fed.arrays,
                                     read_scaling(arm_fed.summary.scaling), run.root,
                                     f"{run.run_id}-{arm}", arm)
    return out


def warn_if_nothing_local(cfg: ExperimentConfig, info: DataInfo, arm: str) -> None:
    """fedbn on a model without normalisation layers is FedAvg again: say so."""
    model = fresh_model(cfg, info)
    if not personalize.local_keys(model, cfg, [arm]):
        warn(f"personalize: {arm} finds no site-local layer in model {cfg.model.name!r}; "
             "this arm equals FedAvg", where=f"personalize: {arm}",
             fix="use a model with BatchNorm/GroupNorm (e.g. small_cnn) or drop the arm")


def fresh_model(cfg: ExperimentConfig, info: DataInfo) -> torch.nn.Module:
    from medfed.models import for_experiment

    return for_experiment(cfg, info, seed=cfg.seed)


def stored_scores(cfg: ExperimentConfig, sites: list[Site], info: DataInfo,
                  arrays: ArrayRecord, scaling, root: Path, run_id: str, arm: str
                  ) -> dict[str, Any]:
    """Each site scored by the global ``arrays`` overlaid with its stored personal weights
    (ditto: its whole personal model; fedbn/perhead: its own layers)."""
    models = {}
    for site in sites:
        model = model_from_arrays(cfg, info, arrays)
        state = personalize.personal_state(root, run_id, site.name, arm)
        if state is not None:
            model.load_state_dict(state, strict=False)
        models[site.name] = model
    scores = score_sites(models, sites, info, {s.name: scaling for s in sites})
    missing = [s.name for s in sites if personalize.personal_state(
        root, run_id, s.name, arm) is None]
    if missing:  # e.g. a site whose budget ran out before its first personal round
        scores["global_model_at"] = missing
    return scores


def finetune_scores(cfg: ExperimentConfig, sites: list[Site], info: DataInfo,
                    arrays: ArrayRecord, scaling, run: PersonalRun) -> dict[str, Any]:
    """The final global model trained further on each site's training split, scored there."""
    options = cfg.personalization.finetune
    train_cfg = cfg.train.model_copy(update={"lr": options.lr or cfg.train.lr})
    task, device = get_task(info.task), pick_device(cfg.train.device)
    models, steps = {}, {}
    for site in sites:
        model = model_from_arrays(cfg, info, arrays)
        x = scale(site.x_train, scaling)
        seed = derive_seed(cfg.seed, site.name, "finetune")
        if cfg.privacy.mode == "dp-sgd":
            steps[site.name] = finetune_dp(model, x, site.y_train, task, cfg, train_cfg,
                                           site=site.name, seed=seed, device=device,
                                           run=run, units=site.units_train,
                                           data_unit=site.unit)
        else:
            xs, ys = step_rows(x, site.y_train, cfg, seed)
            stats = train_local(model, xs, ys, task, train_cfg, epochs=1 if options.epochs
                                is None else options.epochs, seed=seed, device=device)
            steps[site.name] = int(stats["steps"])
        models[site.name] = model
    scores = score_sites(models, sites, info, {s.name: scaling for s in sites})
    scores["steps"] = steps
    return scores


def step_rows(x: np.ndarray, y: np.ndarray, cfg: ExperimentConfig, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Rows for exactly ``finetune.steps`` full batches (shuffled passes, repeated), or the
    site's own rows when ``finetune.epochs`` is set."""
    options = cfg.personalization.finetune
    if options.epochs is not None or options.steps is None:
        return x, y
    need = options.steps * cfg.train.batch_size
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(y)) for _ in range(math.ceil(need / len(y)))])
    idx = order[:need]
    return x[idx], y[idx]


def finetune_dp(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, task,
                cfg: ExperimentConfig, train_cfg, *, site: str, seed: int,
                device: torch.device, run: PersonalRun, units: np.ndarray | None = None,
                data_unit: str | None = "patient") -> int:
    """DP-SGD fine-tuning at the site's planned noise, sampled and clipped per privacy unit;
    the spend goes into its ledger (run id ``<ledger run>/finetune``). Over budget: no
    fine-tuning (0 steps)."""
    from medfed.privacy.accounting import epsilon_of
    from medfed.privacy.dp import train_dp
    from medfed.privacy.ledger import Ledger, Spend
    from medfed.privacy.site import default_ledger_dir, site_plan
    from medfed.privacy.units import resolve_unit, unit_index

    p = cfg.privacy
    unit = resolve_unit(p.unit, data_unit, where=f"site {site!r}")
    units = units if unit.grouped else None
    n_units = unit_index(units, len(y))[1]
    folder = run.ledger_dir or (Path(p.ledger_dir) if p.ledger_dir else default_ledger_dir())
    run_id = f"{run.run_id}/finetune"
    ledger = Ledger.open(folder, site)
    per_epoch = math.ceil(n_units / cfg.train.batch_size)
    options = cfg.personalization.finetune
    epochs = options.epochs or max(1, round((options.steps or per_epoch) / per_epoch))
    plan = site_plan(cfg, ledger, run_id, n_units)
    sigma = p.noise_multiplier or plan.noise_multiplier
    if not sigma or epsilon_of([*ledger.history(), (sigma, plan.sample_rate, epochs * per_epoch)],
                               p.delta, p.accountant) > p.epsilon * (1 + 1e-9):
        return 0
    result = train_dp(model, x, y, task, train_cfg, noise_multiplier=sigma,
                      max_grad_norm=p.max_grad_norm, epochs=epochs, seed=seed,
                      accountant=p.accountant, mode=p.grad_sample_mode, device=device,
                      units=units)
    after = epsilon_of([*ledger.history(), *result.history], p.delta, p.accountant)
    ledger = Ledger.open(folder, site)
    for sigma_i, rate_i, steps_i in result.history:
        ledger.record(Spend(run_id=run_id, round=cfg.rounds + 1, steps=int(steps_i),
                            sample_rate=float(rate_i), noise_multiplier=float(sigma_i),
                            max_grad_norm=p.max_grad_norm, epsilon_after=after, delta=p.delta,
                            accountant=p.accountant, grad_sample_mode=result.grad_sample_mode,
                            time=time.time(), unit=unit.name))
    return int(result.steps)
