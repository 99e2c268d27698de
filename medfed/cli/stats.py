"""``medfed stats``: know the cohort before training (federated statistics, small cells
suppressed at each site)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medfed.errors import MedFedError

out_console = Console()
err_console = Console(stderr=True)


def stats(
    config: Path = typer.Argument(..., help="Experiment YAML; its `stats:` section sets "
                                  "min_count, bins, variables and optional noise."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Report folder (default: "
                                    "runs/CONFIG-stats, or the run folder with "
                                    "--superlink)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set "
                                   "stats.min_count=20 (repeatable)."),
    superlink: str | None = typer.Option(None, help="Ask a real federation: the SuperLink "
                                         "HOST:PORT (with --state). Without it the sites are "
                                         "simulated from the config's dataset."),
    state: Path = typer.Option(Path("state"), help="The coordinator's state folder "
                               "(--superlink only)."),
    certs: Path | None = typer.Option(None, help="Certificate folder with ca.pem (default: "
                                      "the one `server start` used; --superlink only)."),
    engine: str | None = typer.Option(None, help="Simulated sites: inprocess (fast, default) "
                                      "or ray (Flower's Simulation Engine)."),
    ledger: Path | None = typer.Option(None, help="Simulated sites' privacy ledgers, used "
                                       "with stats.privacy (default: OUT/privacy; "
                                       "privacy.ledger_dir wins)."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the sites' answers "
                                  "(--superlink only)."),
) -> None:
    """Per variable, per site and pooled: counts, missingness, mean/std, quantiles,
    categories, labels, Kaplan-Meier, image facts, and harmonisation flags.

    Every count below `stats.min_count` (default 10) is suppressed at the site before it is
    sent; no row, identifier, date or free text leaves a site. Writes stats.json, stats.md,
    histograms.png, missingness.png (and km.png for survival) to --out.

    Examples: `medfed stats configs/heart-disease.yaml --out runs/hd-stats`;
    `medfed stats configs/heart-disease.yaml --superlink coord:9093 --state state/`.
    """
    from medfed.config import load_config
    from medfed.io import check_output_dir

    cfg = load_config(config, [*set_, *([f"engine={engine}"] if engine else [])])
    title = cfg.name or config.stem
    if superlink is None:
        out = check_output_dir(out or Path("runs") / f"{config.stem}-stats", "--out")
        result = _simulated(cfg, out, ledger)
    else:
        if out is not None:
            check_output_dir(out, "--out")
        result, run_dir = _deployed(cfg, config, superlink, state, certs, timeout)
        out = out or run_dir
    from medfed.reports.stats import write_stats_report

    write_stats_report(result, out, title)
    out_console.print(_summary(result))
    for flag in result["flags"][:10]:
        out_console.print(f"[yellow]warning:[/yellow] site {flag['site']} differs on "
                          f"{flag['variable']} (KS distance {flag['distance']:.2f} > "
                          f"{flag['threshold']})", highlight=False)
    out_console.print(f"[dim]Report: {out / 'stats.md'}[/dim]", highlight=False)


def _simulated(cfg, out: Path, ledger: Path | None) -> dict:
    from medfed.simulation.stats import run_stats_simulation

    with err_console.status("federated statistics") as status:
        return run_stats_simulation(cfg, ledger or out / "privacy",
                                    progress=lambda text: status.update(text))


def _deployed(cfg, config: Path, superlink: str, state: Path, certs: Path | None,
              timeout: float) -> tuple[dict, Path]:
    """Submit the query as a Flower run of MedFed's app; wait for its result file."""
    from medfed.cli.deploy import _root_cert
    from medfed.config import RUN_EXPERIMENT
    from medfed.deploy import flower
    from medfed.deploy.state import read_server
    from medfed.deploy.stats import RESULT
    from medfed.io import atomic_write_text

    server = read_server(state).model_dump()
    flower.parse_address(superlink)
    root = _root_cert(server, certs)
    flower.check_reachable(superlink, root)
    flower.write_flwr_home(state, superlink, root, bool(server.get("insecure")))
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_dir = state / "runs" / f"{cfg.name or config.stem}-stats-{stamp}"
    atomic_write_text(run_dir / "config.json", cfg.to_json())
    from medfed.deploy.policy import sign_experiment
    from medfed.deploy.signing import ensure_signing_key

    atomic_write_text(run_dir / "run_config.toml", flower.run_config_toml({
        flower.RUN_SIGNATURE: sign_experiment(cfg.to_json(), ensure_signing_key(state)),
        RUN_EXPERIMENT: cfg.to_json(), flower.RUN_STATE_DIR: str(run_dir.resolve()),
        flower.RUN_DEPLOY_ID: run_dir.name, flower.RUN_JOB: "stats",
        flower.RUN_ROUND_TIMEOUT: timeout, flower.RUN_WAIT_TIMEOUT: timeout}))
    flower_run = flower.submit_run(state, run_dir)
    err_console.print(f"statistics query {run_dir.name} (Flower run {flower_run})",
                      highlight=False)
    with err_console.status("waiting for the sites' answers"):
        _wait(run_dir, state, flower_run, 3 * timeout + 60)
    import json

    return json.loads((run_dir / RESULT).read_text()), run_dir


def _wait(run_dir: Path, state: Path, flower_run: str, limit: float) -> None:
    from medfed.cli.deploy import _FlowerCheck, _read_json
    from medfed.deploy import flower

    check = _FlowerCheck(state, run_dir.name, flower_run)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        status = _read_json(run_dir / "status.json", {})
        if status.get("status") == "finished":
            return
        if status.get("status") == "failed":
            raise MedFedError(f"statistics query {run_dir.name} failed: {status.get('error')}")
        check()
        time.sleep(0.3)
    flower.stop_run(state, flower_run)
    raise MedFedError(f"statistics query {run_dir.name}: no result within {limit:.0f} s",
                      fix="check that the sites run `medfed client start`, then try again")


def _summary(result: dict) -> Table:
    table = Table(title=f"sites (counts below {result['min_count']} suppressed)")
    for column in ("site", result["unit"], "individuals", "variables summarised", "flags"):
        table.add_column(column, justify="left" if column == "site" else "right")
    for site, reply in result["sites"].items():
        summarised = sum(1 for v in reply["variables"].values() if v.get("summarised"))
        flags = sum(1 for f in result["flags"] if f["site"] == site)
        table.add_row(site, str(reply["rows"]), str(reply["individuals"]), str(summarised),
                      str(flags or ""))
    for node, reason in result.get("not_answered", {}).items():
        table.add_row(f"node {node}", "refused", "", reason[:60], "")
    return table
