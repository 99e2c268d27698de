"""``medfed privacy plan|report``: a site's DP-SGD plan before training, and its ledger."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medfed.errors import MedFedError, warn

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
    from medfed.privacy.simulation import n_units

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
    for column in ("site", "units", "noise", "rate", "steps/rnd", "steps", "eps rnd 1",
                   "eps end"):
        table.add_column(column, justify="right")
    for site in sites:
        pl = plan_site(n_train=n_units(cfg, site), batch_size=cfg.train.batch_size,
                       local_epochs=cfg.train.local_epochs, rounds=cfg.rounds,
                       epsilon=p.epsilon, delta=p.delta, accountant=p.accountant,
                       max_grad_norm=p.max_grad_norm, noise_multiplier=p.noise_multiplier,
                       site=site.name)
        table.add_row(site.name, str(n_units(cfg, site)), f"{pl.noise_multiplier:.3f}",
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
    audit_file: Path | None = typer.Option(None, "--audit", help="An audit.json of `medfed "
                                           "privacy audit` to show beside the ledgers "
                                           "(default: the one next to --ledger, if any)."),
) -> None:
    """Epsilon spent per site, per run and per round, and the budget that remains; with an
    audit, each site's claimed epsilon beside its empirical lower bound."""
    from medfed.privacy.accounting import epsilon_of
    from medfed.privacy.ledger import open_folder
    from medfed.privacy.report import unit_guarantees, unit_label

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
    for column in ("site", "run", "unit", "rounds", "steps", "noise", "eps of run",
                   "eps total", "remaining"):
        table.add_column(column, justify="right")
    for site, led in ledgers.items():
        total = led.epsilon(delta, accountant)
        for run in led.runs():
            spends = [s for s in led.spends if s.run_id == run]
            eps_run = epsilon_of([(s.noise_multiplier, s.sample_rate, s.steps) for s in spends],
                                 delta, accountant)
            left = "—" if budget is None else f"{max(budget - total, 0):.3f}"
            table.add_row(site, run, unit_label(spends[-1].unit), str(len(spends)),
                          str(sum(s.steps for s in spends)),
                          f"{spends[-1].noise_multiplier:.3f}", f"{eps_run:.3f}",
                          f"{total:.3f}", left)
            if per_round:
                for s in spends:
                    table.add_row("", f"round {s.round}", "", "", str(s.steps),
                                  f"{s.noise_multiplier:.3f}", "", f"{s.epsilon_after:.3f}", "")
    console.print(table)
    for line in unit_guarantees({s.unit for led in ledgers.values() for s in led.spends}):
        console.print(line)
    audit_path = audit_file or ledger.parent / "audit.json"
    if audit_file is not None or audit_path.is_file():
        from medfed.simulation.privacy_audit import read_audit

        console.print(audit_table(read_audit(audit_path)))


@privacy_app.command("audit")
def audit(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. configs/breast-cancer-dp.yaml."),
    canaries: int = typer.Option(50, "--canaries", "-m", min=4, max=100_000,
                                 help="Canaries per site; each joins that site's training rows "
                                 "with probability 1/2. More canaries: a tighter bound."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Folder for audit.json (default: "
                                    "runs/CONFIG-NAME; a simulate run's folder puts the "
                                    "audit beside its report)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. "
                                   "--set rounds=5 (repeatable)."),
    confidence: float = typer.Option(0.95, "--confidence", min=0.5, max=0.999,
                                     help="Probability that the bound holds."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the canaries and their coins "
                                    "(default: the config's seed)."),
) -> None:
    """Empirical lower bound on each site's epsilon (one-run audit, Steinke et al. 2023).

    Trains the federation once, in-process, with canaries (made-up records with random
    labels) hidden in every site's training rows, each by a coin flip. From what each site
    sent back every round, the auditor guesses which canaries were in; a guess rate
    beyond chance proves leakage: if training were (epsilon, delta)-DP as claimed, so many
    right guesses would happen with probability below 1 - confidence. A DP-SGD site's bound
    must stay below its claimed epsilon; without DP it shows how much a site's updates leak.
    The sites' real privacy budgets are not spent (the audit keeps its own ledgers). The
    score models plain SGD steps: with Adam or augmentation the bound stays valid but loose.
    """
    from medfed.cli.simulate import err_console, quiet_libraries
    from medfed.config import load_config
    from medfed.io import atomic_write_json, check_output_dir
    from medfed.simulation.privacy_audit import AUDIT_FILE

    quiet_libraries()
    cfg = load_config(config, set_)
    out = check_output_dir(out or Path("runs") / config.stem, "--out")
    result = _audit_with_progress(cfg, canaries, seed, confidence, err_console)
    atomic_write_json(out / AUDIT_FILE, result)
    card = record_on_card(out / "model", cfg, result)
    console.print(audit_table(result))
    for caveat in result["caveats"]:
        console.print(f"[yellow]note:[/yellow] {caveat}")
    console.print(f"[dim]{result['seconds']:.1f} s. Audit: {out / AUDIT_FILE}"
                  + (f"; recorded on the model card {card}" if card else "") + "[/dim]")


def card_audit(result: dict) -> dict:
    """The model card's ``privacy.audit``: per site, claimed vs audited epsilon."""
    import datetime

    return {"method": result["method"], "canaries_per_site": result["canaries_per_site"],
            "confidence": result["confidence"], "rounds": result["rounds"],
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "note": "a separate training run of the same config with canaries (the released "
                    "weights hold none); bounds the procedure, not these exact weights",
            "per_site": {site: {"claimed_epsilon": row["claimed_epsilon"],
                                "audited_epsilon_lower_bound": row["epsilon_lower_bound"],
                                "within_claim": row["within_claim"]}
                         for site, row in result["sites"].items()}}


def record_on_card(model_dir: Path, cfg, result: dict) -> Path | None:
    """Add the audit to ``model_dir``'s card (a `medfed simulate` model of this very config,
    signed with the run's own key in ``../signing``) and sign it again; None when there is
    no such model."""
    import json

    from medfed.deploy.registry import card_markdown
    from medfed.deploy.signing import CARD_JSON, CARD_MD, ensure_signing_key, sign_model_dir
    from medfed.io import atomic_write_json, atomic_write_text

    card_path, key_dir = model_dir / CARD_JSON, model_dir.parent / "signing"
    if not card_path.is_file() or not key_dir.is_dir():
        return None
    card = json.loads(card_path.read_text())
    trained = dict(card.get("config") or {}, privacy={
        **(card.get("config") or {}).get("privacy", {}), "ledger_dir": cfg.privacy.ledger_dir})
    if trained != json.loads(cfg.to_json()):  # the ledger folder simulate chose may differ
        warn("the model in this folder was trained with another config; its card does not "
             "get this audit", where=str(model_dir), fix="audit with the config (and --set "
             "overrides) the model was trained with")
        return None
    card.setdefault("privacy", {})["audit"] = card_audit(result)
    atomic_write_json(card_path, card)
    atomic_write_text(model_dir / CARD_MD, card_markdown(card))
    sign_model_dir(model_dir, ensure_signing_key(key_dir))
    return card_path


def _audit_with_progress(cfg, canaries: int, seed: int | None, confidence: float,
                         console: Console) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from medfed.simulation.privacy_audit import run_audit

    columns = [TextColumn("[bold]audit round"), MofNCompleteColumn(), BarColumn(),
               TimeElapsedColumn()]
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("training with canaries", total=cfg.rounds)
        return run_audit(cfg, canaries, seed=seed, confidence=confidence,
                         on_round=lambda record: progress.update(bar,
                                                                 completed=record["round"]))


def audit_table(result: dict) -> Table:
    """Claimed epsilon vs audited lower bound, one row per site."""
    table = Table(title=f"Privacy audit: {result['canaries_per_site']} canaries per site, "
                        f"{result['confidence'] * 100:g} % confidence, delta {result['delta']:g}")
    for column in ("site", "claimed eps", "audited eps >=", "right/guesses", "canaries in",
                   "verdict"):
        table.add_column(column, justify="right")
    for site, row in result["sites"].items():
        claim = row["claimed_epsilon"]
        verdict = ("no claim (not DP-SGD)" if claim is None else
                   "consistent" if row["within_claim"] else "[red]CLAIM VIOLATED[/red]")
        table.add_row(site, "—" if claim is None else f"{claim:.3f}",
                      f"{row['epsilon_lower_bound']:.3f}", f"{row['correct']}/{row['guesses']}",
                      f"{row['included']}/{row['canaries']}", verdict)
    return table
