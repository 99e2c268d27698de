"""Personalised federated learning at the site: weights that never leave it.

``fedbn`` (Li et al., ICLR 2021): normalisation layers (BatchNorm/GroupNorm/LayerNorm/
InstanceNorm affine weights and running statistics) stay on the site; ``perhead`` (FedPer):
the classification head stays on the site; ``ditto`` (Li et al., ICML 2021): the site keeps a
personal model trained with ``lam/2 ||w_personal - w_global||^2`` beside the global one.

Site-local weights live on the site's disk (``personal/<run-id>/<site>.<arm>.pt``): next to
its privacy ledger in a real federation (node config ``privacy-ledger-dir``), in the run's
folder in a simulation (run config ``personal-dir``). Replies carry only the shared arrays.
"""

from __future__ import annotations

import copy
import io
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from torch import nn

from medfed.config import NODE_LEDGER_DIR, RUN_ID, ExperimentConfig
from medfed.io import atomic_write_bytes

RUN_PERSONAL_DIR = "personal-dir"  # run config: the simulation's folder of site-local weights
RUN_PERSONAL_ARM = "personal-arm"  # run config: which partial arm this federation runs ("": none)
PARTIAL_ARMS = ("fedbn", "perhead")  # arms that change what the federation shares
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
KEPT_KEY = "medfed.personal.kept"  # Context.state: what this message's handler kept on site
State = dict[str, torch.Tensor]


def partial_arms(cfg: ExperimentConfig, context: Context | None = None) -> list[str]:
    """The partial arms this federation runs: the run config's ``personal-arm`` when set (a
    simulation runs one federation per arm), else every one ``personalize`` names."""
    if context is not None and RUN_PERSONAL_ARM in context.run_config:
        arm = str(context.run_config[RUN_PERSONAL_ARM])
        return [arm] if arm else []
    return [arm for arm in cfg.personalize if arm in PARTIAL_ARMS]


def runs_ditto(cfg: ExperimentConfig, context: Context) -> bool:
    """Ditto trains beside the plain global model (never inside a fedbn/perhead federation)."""
    return "ditto" in cfg.personalize and not partial_arms(cfg, context)


def norm_keys(model: nn.Module) -> set[str]:
    """State-dict keys of every normalisation layer (affine weights and running statistics)."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            keys |= {f"{name}.{k}" if name else k for k in module.state_dict()}
    return keys


def head_keys(model: nn.Module, prefixes: list[str] | None = None) -> set[str]:
    """State-dict keys of the classification head: ``prefixes``, else the last linear layer."""
    if not prefixes:
        linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        prefixes = linear[-1:]
    return {k for k in model.state_dict() if any(k == p or k.startswith(p + ".")
                                                 for p in prefixes)}


def local_keys(model: nn.Module, cfg: ExperimentConfig, arms: list[str]) -> set[str]:
    """The state-dict keys that never leave the site under ``arms``."""
    keys: set[str] = set()
    if "fedbn" in arms:
        keys |= norm_keys(model)
    if "perhead" in arms:
        keys |= head_keys(model, cfg.personalization.perhead.head)
    return keys


# --- the site's disk -----------------------------------------------------------------------------

def personal_root(context: Context) -> Path:
    """The folder of this site's personal weights: beside its ledger (real site), the run's
    ``personal-dir`` (simulation), else ~/.medfed/personal."""
    if context.node_config.get(NODE_LEDGER_DIR):
        return Path(str(context.node_config[NODE_LEDGER_DIR])) / "personal"
    if context.run_config.get(RUN_PERSONAL_DIR):
        return Path(str(context.run_config[RUN_PERSONAL_DIR]))
    return Path(os.environ.get("MEDFED_PERSONAL_DIR", Path.home() / ".medfed" / "personal"))


def state_path(root: Path, run_id: str, site: str, arm: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in site)
    return root / "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id) / \
        f"{safe}.{arm}.pt"


def _path(context: Context, site: str, arm: str) -> Path:
    run_id = str(context.run_config.get(RUN_ID) or f"flwr-{context.run_id}")
    return state_path(personal_root(context), run_id, site, arm)


def save_state(path: Path, state: State, context: Context | None = None) -> None:
    """Write ``state`` to the site's disk; note it in ``context.state`` for the audit log."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
    if context is not None:
        import hashlib

        kept = context.state.get(KEPT_KEY) or ConfigRecord({"files": [], "sha256": [],
                                                           "keys": []})
        kept["files"] = [*kept["files"], str(path)]
        kept["sha256"] = [*kept["sha256"], hashlib.sha256(buffer.getvalue()).hexdigest()]
        kept["keys"] = [*kept["keys"], ",".join(sorted(state))]
        context.state[KEPT_KEY] = kept


def pop_kept(context: Context) -> dict[str, list[str]] | None:
    """What the last handler kept on the site (files, their SHA-256, their keys), once."""
    kept = context.state.get(KEPT_KEY)
    if kept is None:
        return None
    del context.state[KEPT_KEY]
    return {k: list(v) for k, v in kept.items()}


def load_state(path: Path) -> State | None:
    return torch.load(path, weights_only=True) if path.is_file() else None


# --- fedbn / perhead: keep some keys local -------------------------------------------------------

def overlay_local(model: nn.Module, cfg: ExperimentConfig, context: Context, site: str) -> None:
    """Put this site's own copies of its local keys (from an earlier round) into ``model``."""
    for arm in partial_arms(cfg, context):
        state = load_state(_path(context, site, arm))
        if state is not None:
            model.load_state_dict(state, strict=False)


def shared_state(state: State, model: nn.Module, cfg: ExperimentConfig, context: Context,
                 site: str) -> State:
    """Save the site-local keys of ``state`` to the site's disk; return the rest to send."""
    arms = partial_arms(cfg, context)
    if not arms:
        return state
    for arm in arms:
        keys = local_keys(model, cfg, [arm])
        save_state(_path(context, site, arm), {k: v for k, v in state.items() if k in keys},
                   context)
    keep = local_keys(model, cfg, arms)
    return {k: v for k, v in state.items() if k not in keep}


# --- ditto: a personal model beside the global one ---------------------------------------------

def train_ditto(template: nn.Module, global_arrays: ArrayRecord, x: np.ndarray, y: np.ndarray,
                task, cfg: ExperimentConfig, *, context: Context, site: str, server_round: int,
                seed: int | None, device: torch.device, units: np.ndarray | None = None,
                data_unit: str | None = "patient") -> dict[str, float]:
    """One round of Ditto's personal update at this site; the personal model stays on disk.

    ``x``: (N, ...) scaled training inputs, ``y``: (N,) labels. Without DP: ``local_epochs``
    of SGD on loss + lam/2 ||v - w||^2. With DP-SGD: DP-SGD on the loss (privacy/dp.py),
    then the proximal step v <- (v + eta lam w) / (1 + eta lam) (data-independent
    post-processing, eta = lr x steps); its steps are recorded in the site's ledger, sampled
    and clipped per privacy unit like the global update (``units``, ``data_unit``: the site's).
    """
    from medfed.federation.train import train_local

    options = cfg.personalization.ditto
    path = _path(context, site, "ditto")
    global_state = global_arrays.to_torch_state_dict()
    model = copy.deepcopy(template)
    model.load_state_dict(load_state(path) or global_state)
    anchor = [global_state[name] for name, _ in model.named_parameters()]
    train_cfg = cfg.train.model_copy(update={"lr": options.lr or cfg.train.lr,
                                             "local_epochs": options.local_epochs})
    if cfg.privacy.mode == "dp-sgd":
        stats = _ditto_dp(model, anchor, x, y, task, cfg, train_cfg, context=context, site=site,
                          server_round=server_round, seed=seed, device=device, units=units,
                          data_unit=data_unit)
    else:
        stats = train_local(model, x, y, task, train_cfg, epochs=options.local_epochs,
                            seed=seed if seed is not None else 0, proximal_mu=options.lam,
                            device=device, anchor=anchor)
    save_state(path, model.to("cpu").state_dict(), context)
    return {f"ditto_{k}": v for k, v in stats.items()}


def _ditto_dp(model: nn.Module, anchor: list[torch.Tensor], x: np.ndarray, y: np.ndarray, task,
              cfg: ExperimentConfig, train_cfg, *, context: Context, site: str,
              server_round: int, seed: int | None, device: torch.device,
              units: np.ndarray | None, data_unit: str | None) -> dict[str, float]:
    """DP-SGD for the personal model at the noise the site's plan uses; the spend is in the
    ledger (run id ``<run>/personal``) before the reply. Over budget: no personal update."""
    from medfed.privacy.accounting import epsilon_of
    from medfed.privacy.dp import train_dp
    from medfed.privacy.ledger import Ledger, Spend
    from medfed.privacy.site import STATE_KEY, ledger_dir, run_id_of
    from medfed.privacy.units import resolve_unit, unit_index

    p = cfg.privacy
    unit = resolve_unit(p.unit, data_unit, where=f"site {site!r}")
    units = units if unit.grouped else None
    plan = context.state.get(STATE_KEY)  # written by this round's global DP-SGD
    if plan is None:
        return {"skipped": 1.0}
    sigma, rate = float(plan["noise-multiplier"]), float(plan["sample-rate"])
    run_id = f"{run_id_of(context)}/personal"
    ledger = Ledger.open(ledger_dir(context, cfg), site)
    if seed is not None:  # a resumed round redraws the very same noise: no new release
        ledger.spends = [s for s in ledger.spends
                         if not (s.run_id == run_id and s.round == server_round)]
    steps = train_cfg.local_epochs * math.ceil(unit_index(units, len(y))[1]
                                               / cfg.train.batch_size)
    if sigma <= 0 or epsilon_of([*ledger.history(), (sigma, rate, steps)], p.delta,
                                p.accountant) > p.epsilon * (1 + 1e-9):
        return {"skipped": 1.0}
    result = train_dp(model, x, y, task, train_cfg, noise_multiplier=sigma,
                      max_grad_norm=p.max_grad_norm, epochs=train_cfg.local_epochs, seed=seed,
                      accountant=p.accountant, mode=p.grad_sample_mode, device=device,
                      secure_mode=p.secure_mode, units=units)
    _proximal_step(model, anchor, train_cfg.lr * result.steps * cfg.personalization.ditto.lam)
    after = epsilon_of([*ledger.history(), *result.history], p.delta, p.accountant)
    ledger = Ledger.open(ledger_dir(context, cfg), site)  # re-read: never overwrite a spend
    for sigma_i, rate_i, steps_i in result.history:
        ledger.record(Spend(run_id=run_id, round=server_round, steps=int(steps_i),
                            sample_rate=float(rate_i), noise_multiplier=float(sigma_i),
                            max_grad_norm=p.max_grad_norm, epsilon_after=after, delta=p.delta,
                            accountant=p.accountant, grad_sample_mode=result.grad_sample_mode,
                            time=time.time(), unit=unit.name))
    return {"train_loss": result.train_loss, "steps": float(result.steps), "dp_epsilon": after}


@torch.no_grad()
def _proximal_step(model: nn.Module, anchor: list[torch.Tensor], eta_lam: float) -> None:
    """The proximal operator of eta_lam/2 ||v - w||^2: v <- (v + eta_lam w) / (1 + eta_lam)."""
    for param, ref in zip(model.parameters(), anchor, strict=True):
        param.add_(ref.to(param.device), alpha=eta_lam).div_(1 + eta_lam)


def personal_state(root: Path, run_id: str, site: str, arm: str) -> State | None:
    """A site's stored personal weights of ``arm`` (simulation scoring reads them)."""
    return load_state(state_path(root, run_id, site, arm))
