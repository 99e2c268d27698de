"""``medfed privacy plan|report``: a site's DP-SGD plan before training, and its ledger."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medfed.errors import MedFedError

privacy_app = typer.Typer(help="Differential privacy: plan a budget, read the ledgers.",
                          no_args_is_help=True)
console = Console()


@privacy_app.command("plan")
def plan(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. configs/heart-disease.yaml."),
    epsilon: float | None = typer.Option(None, "--epsilon", help="Each site's total budget "
                                         "(default: privacy.epsilon of the config)."),
    delta: float | None = typer.Option(None, "--delta", help="Default: privacy.delta."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key (repeatable)."),
) -> None:
    """Before any training: each site's noise multiplier, steps and the epsilon it will have
    spent after each round, for the whole planned training (rounds x local epochs)."""
    from medfed.config import load_config
    from medfed.datasets.sites import simulated_federation
    from medfed.privacy.accounting import check_epsilon, plan_site

    overrides = [*set_, "privacy.mode=dp-sgd"]
    if epsilon is not None:
        if not epsilon > 0:
            raise MedFedError(f"privacy.epsilon={epsilon:g} must be > 0", where="--epsilon",
                              fix="give each site's total budget, e.g. --epsilon 8")
        check_epsilon(epsilon)
        overrides.append(f"privacy.epsilon={epsilon!r}")
    if delta is not None:
        check_delta(delta)
        overrides.append(f"privacy.delta={delta!r}")
    cfg = load_config(config, overrides)
    sites, _ = simulated_federation(cfg.to_json())
    p = cfg.privacy
    table = Table(title=f"DP-SGD plan: epsilon {p.epsilon:g}, delta {p.delta:g} per site, "
                        f"{cfg.rounds} rounds x {cfg.train.local_epochs} epoch(s), "
                        f"{p.accountant} accountant")
    for column in ("site", "n", "noise", "rate", "steps/rnd", "steps", "eps rnd 1",
                   "eps end"):
        table.add_column(column, justify="right")
    for site in sites:
        pl = plan_site(n_train=site.n_train, batch_size=cfg.train.batch_size,
                       local_epochs=cfg.train.local_epochs, rounds=cfg.rounds,
                       epsilon=p.epsilon, delta=p.delta, accountant=p.accountant,
                       max_grad_norm=p.max_grad_norm, noise_multiplier=p.noise_multiplier,
                       site=site.name)
        table.add_row(site.name, str(site.n_train), f"{pl.noise_multiplier:.3f}",
                      f"{pl.sample_rate:.3f}", str(pl.steps_per_round),
                      str(pl.steps_per_round * pl.rounds), f"{pl.epsilon_per_round[0]:.3f}",
                      f"{pl.epsilon_per_round[-1]:.3f}")
    console.print(table)
    console.print(f"[dim]clipping norm {p.max_grad_norm:g}; a site stops training when its "
                  "next round would pass its budget[/dim]")


def check_delta(delta: float, option: str = "--delta") -> None:
    """Delta is a probability of failure: strictly between 0 and 1 (in practice < 1/n)."""
    if not 0 < delta < 1:
        raise MedFedError(f"delta {delta:g} is not strictly between 0 and 1", where=option,
                          fix="give a small probability, e.g. --delta 1e-5 (below 1/n)")


@privacy_app.command("report")
def report(
    ledger: Path = typer.Option(..., "--ledger", help="A ledger folder, e.g. runs/bc/privacy/."),
    delta: float = typer.Option(1e-5, "--delta", help="Delta at which epsilon is stated."),
    budget: float | None = typer.Option(None, "--budget", help="Budget to show what remains."),
    accountant: str = typer.Option("rdp", "--accountant", help="rdp or prv."),
    per_round: bool = typer.Option(False, "--rounds", help="Also list every round."),
) -> None:
    """Epsilon spent per site, per run and per round, and the budget that remains."""
    from medfed.privacy.accounting import epsilon_of
    from medfed.privacy.ledger import open_folder

    if accountant not in ("rdp", "prv"):
        raise MedFedError(f"unknown accountant {accountant!r}", where="--accountant",
                          fix="choose rdp or prv")
    check_delta(delta)
    if budget is not None and not budget > 0:
        raise MedFedError(f"budget {budget:g} is not positive", where="--budget",
                          fix="give the epsilon budget each site has, e.g. --budget 8")
    ledgers = open_folder(ledger)
    if not ledgers:
        raise MedFedError("no site ledgers (*.json) here", where=f"--ledger {ledger}",
                          fix="pass a run's privacy/ folder, e.g. --ledger runs/bc/privacy")
    table = Table(title=f"Privacy spent (delta {delta:g}, {accountant} accountant)")
    for column in ("site", "run", "rounds", "steps", "noise", "eps of run", "eps total",
                   "remaining"):
        table.add_column(column, justify="right")
    for site, led in ledgers.items():
        total = led.epsilon(delta, accountant)
        for run in led.runs():
            spends = [s for s in led.spends if s.run_id == run]
            eps_run = epsilon_of([(s.noise_multiplier, s.sample_rate, s.steps) for s in spends],
                                 delta, accountant)
            left = "—" if budget is None else f"{max(budget - total, 0):.3f}"
            table.add_row(site, run, str(len(spends)), str(sum(s.steps for s in spends)),
                          f"{spends[-1].noise_multiplier:.3f}", f"{eps_run:.3f}",
                          f"{total:.3f}", left)
            if per_round:
                for s in spends:
                    table.add_row("", f"round {s.round}", "", str(s.steps),
                                  f"{s.noise_multiplier:.3f}", "", f"{s.epsilon_after:.3f}", "")
    console.print(table)
