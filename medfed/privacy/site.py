"""One DP-SGD round at one site: plan, check the budget, train, record the spend.

The accountant history lives with the site: in the ClientApp's ``Context.state`` (this run)
and in the site's ledger file (all runs). A site whose next round would exceed its budget
does not train: ``BudgetExhausted`` becomes a Flower error reply (the ClientApp's) that the
server logs and shows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context
from torch import nn

from medfed.config import NODE_LEDGER_DIR, RUN_ID, RUN_LEDGER_DIR, ExperimentConfig
from medfed.privacy.accounting import Plan, epsilon_of, merge, plan_site
from medfed.privacy.ledger import Ledger, Spend
from medfed.privacy.units import resolve_unit, unit_index

STATE_KEY = "medfed.privacy"


class BudgetExhausted(Exception):
    """The site's next round would exceed its (epsilon, delta) budget."""


def default_ledger_dir() -> Path:
    return Path(os.environ.get("MEDFED_PRIVACY_DIR", Path.home() / ".medfed" / "privacy"))


def ledger_dir(context: Context, cfg: ExperimentConfig) -> Path:
    """The site's own node config ``privacy-ledger-dir`` (a real hospital), the run config's
    (simulation), the experiment's ``privacy.ledger_dir``, else ~/.medfed/privacy."""
    where = (context.node_config.get(NODE_LEDGER_DIR)
             or context.run_config.get(RUN_LEDGER_DIR) or cfg.privacy.ledger_dir)
    return Path(str(where)) if where else default_ledger_dir()


def run_id_of(context: Context) -> str:
    return str(context.run_config.get(RUN_ID) or f"flwr-{context.run_id}")


def site_plan(cfg: ExperimentConfig, ledger: Ledger, run_id: str, n_train: int) -> Plan:
    """This run's plan; prior = spends of earlier runs, so a resumed run re-plans the same.
    ``n_train``: the site's training units (patients or stays; rows when the unit is a row)."""
    p = cfg.privacy
    prior = merge((s.noise_multiplier, s.sample_rate, s.steps) for s in ledger.spends
                  if s.run_id != run_id)
    return plan_site(n_train=n_train, batch_size=cfg.train.batch_size,
                     local_epochs=cfg.train.local_epochs, rounds=cfg.rounds,
                     epsilon=p.epsilon, delta=p.delta, accountant=p.accountant,
                     max_grad_norm=p.max_grad_norm, noise_multiplier=p.noise_multiplier,
                     prior=prior, site=ledger.site, per_round=False)


def _save_state(context: Context, run_id: str, plan: Plan, ledger: Ledger, mode: str) -> None:
    history = ledger.history()
    context.state[STATE_KEY] = ConfigRecord({
        "run-id": run_id, "noise-multiplier": plan.noise_multiplier or 0.0,
        "sample-rate": plan.sample_rate, "steps-per-round": plan.steps_per_round,
        "history-noise": [h[0] for h in history], "history-rate": [h[1] for h in history],
        "history-steps": [h[2] for h in history], "grad-sample-mode": mode,
        "epsilon": ledger.epsilon(plan.delta, plan.accountant)})


def check_budget(plan: Plan, ledger: Ledger) -> float:
    """Epsilon after one more round; raises BudgetExhausted when it would pass the budget."""
    spent = ledger.epsilon(plan.delta, plan.accountant)
    if plan.noise_multiplier is None:
        raise BudgetExhausted(f"privacy budget exhausted at site {ledger.site!r}: epsilon "
                              f"{spent:.3f} of {plan.epsilon_budget:g} spent (delta "
                              f"{plan.delta:g}); it no longer trains")
    after = epsilon_of([*ledger.history(), (plan.noise_multiplier, plan.sample_rate,
                                            plan.steps_per_round)], plan.delta, plan.accountant)
    if after > plan.epsilon_budget * (1 + 1e-9):
        raise BudgetExhausted(f"privacy budget exhausted at site {ledger.site!r}: epsilon "
                              f"{spent:.3f} of {plan.epsilon_budget:g} spent, one more round "
                              f"would reach {after:.3f} (delta {plan.delta:g}); it no longer "
                              "trains")
    return after


def train_round(model: nn.Module, x: np.ndarray, y: np.ndarray, task, cfg: ExperimentConfig, *,
                site: str, context: Context, server_round: int, seed: int | None,
                device=None, units: np.ndarray | None = None,
                data_unit: str | None = "patient") -> dict[str, float]:
    """DP-SGD for this round's local epochs; the spend is in the ledger before the reply.

    ``seed``: reproducible sampling and noise (simulation); None in a real federation, where
    noise drawn from a known seed could be subtracted. ``units``: (N,) each row's patient or
    stay, ``data_unit`` what they are (``Site.units_train``, ``Site.unit``; the defaults: one
    row per patient): sampled and clipped whole unless privacy.unit=row
    (``medfed.privacy.units``); None (unknown) refuses unless privacy.unit=row.
    """
    from medfed.privacy.dp import train_dp

    unit = resolve_unit(cfg.privacy.unit, data_unit, where=f"site {site!r}")
    units = units if unit.grouped else None
    run_id = run_id_of(context)
    ledger = Ledger.open(ledger_dir(context, cfg), site)
    plan = site_plan(cfg, ledger, run_id, unit_index(units, len(y))[1])
    record_as = run_id
    if ledger.has(run_id, server_round):  # a resumed round
        if seed is not None:  # same seed, same noise: the very same update, no new release
            ledger.spends = [s for s in ledger.spends
                             if not (s.run_id == run_id and s.round == server_round)]
        else:  # fresh noise is a new release: count it too
            record_as = f"{run_id}/retry-{sum(s.round == server_round for s in ledger.spends)}"
    check_budget(plan, ledger)
    result = train_dp(model, x, y, task, cfg.train, noise_multiplier=plan.noise_multiplier,
                      max_grad_norm=cfg.privacy.max_grad_norm, epochs=cfg.train.local_epochs,
                      seed=seed, accountant=plan.accountant, mode=cfg.privacy.grad_sample_mode,
                      device=device, secure_mode=cfg.privacy.secure_mode, units=units)
    after = epsilon_of([*ledger.history(), *result.history], plan.delta, plan.accountant)
    ledger = Ledger.open(ledger_dir(context, cfg), site)  # re-read: never overwrite a spend
    for sigma, rate, steps in result.history:
        ledger.record(Spend(run_id=record_as, round=server_round, steps=int(steps),
                            sample_rate=float(rate), noise_multiplier=float(sigma),
                            max_grad_norm=cfg.privacy.max_grad_norm, epsilon_after=after,
                            delta=plan.delta, accountant=plan.accountant,
                            grad_sample_mode=result.grad_sample_mode, time=time.time(),
                            unit=unit.name))
    _save_state(context, run_id, plan, ledger, result.grad_sample_mode)
    return {"train_loss": result.train_loss, "steps": float(result.steps),
            "dp_epsilon": after, "dp_noise_multiplier": float(plan.noise_multiplier)}
