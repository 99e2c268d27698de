"""`medfed simulate` (virtual hospitals, baselines, sweeps) and `medfed datasets list`."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

datasets_app = typer.Typer(help="Datasets MedFed can load and partition.", no_args_is_help=True)

out_console = Console()
PROGRESS_METRICS = ("auroc", "accuracy", "c_index", "dice")  # shown on the progress bar
err_console = Console(stderr=True)


def quiet_libraries(verbose: bool = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    for name in ("flwr", "mlflow", "alembic", "datasets", "ray"):
        logging.getLogger(name).setLevel(level)
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


def results_table(report: dict) -> Table:
    from medfed.reports.common import ARMS
    from medfed.reports.report import comparison_rows

    metric = report["primary_metric"]
    arms = [a for a in ARMS if a in report["metrics"]]
    table = Table(title=f"{report['dataset']}: {metric.upper()} on each site's test split")
    table.add_column("site")
    for arm in arms:
        table.add_column(arm.replace("_", "-"), justify="right")
    for row in comparison_rows(report, metric):
        table.add_row(*row, style="bold" if row[0] == "pooled" else None)
    return table


def simulate(
    config: Path = typer.Argument(..., help="Experiment YAML, e.g. configs/breast-cancer.yaml."),
    out: Path | None = typer.Option(None, "--out", "-o",
                                    help="Report folder (default: runs/<config name>)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. "
                                   "--set strategy.name=fedadam --set rounds=50 (repeatable)."),
    engine: str | None = typer.Option(None, help="inprocess (fast, default) or ray (Flower's "
                                      "Simulation Engine)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Run the sites on an "
                                           "existing Ray cluster (its head's HOST:PORT; implies "
                                           "--engine ray; default: RAY_ADDRESS). Per-site "
                                           "resources: engine_options.num_cpus / num_gpus."),
    as_json: bool = typer.Option(False, "--json", help="Print report.json to stdout, nothing "
                                 "else there."),
    track: bool = typer.Option(True, help="Log the run to MLflow (MLFLOW_TRACKING_URI, default "
                               "sqlite:///mlflow.db)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Flower's own logs."),
    sweep: str | None = typer.Option(None, "--sweep", help="One run per value, then a table "
                                     "and plot, e.g. --sweep privacy.epsilon=0.5,1,2,4,8,inf "
                                     "(inf = non-private)."),
) -> None:
    """Simulate virtual hospitals; compare federated, local-only and centralized training.

    Shows progress per round, then a table per site; writes report.json, report.md and plots
    to --out. With privacy.mode=dp-sgd each site's privacy ledger is in --out/privacy/.
    """
    from medfed.config import load_config
    from medfed.io import check_output_dir

    quiet_libraries(verbose)
    logging.getLogger("medfed").setLevel(logging.DEBUG if verbose else logging.INFO)
    overrides = [*set_, *([f"engine={engine}"] if engine else [])]
    if ray_address:
        overrides += ["engine=ray", f"engine_options.address={json.dumps(ray_address)}"]
    cfg = load_config(config, overrides)
    out = check_output_dir(out or Path("runs") / config.stem, "--out")
    console = err_console if as_json else out_console
    if sweep:
        return _sweep(config, out, overrides, sweep, console, track)
    if cfg.privacy.mode == "dp-sgd" and cfg.privacy.ledger_dir is None:
        cfg.privacy.ledger_dir = str(out / "privacy")  # epsilon accumulates over runs in --out
    report, arrays = _run_with_progress(cfg, console)
    _save_outputs(report, arrays, out)
    from medfed.cli.use import save_simulation_model

    save_simulation_model(cfg, report, arrays, out)  # OUT/model: signed, for `medfed predict`
    if track:
        try:
            _track(cfg, report, out)
        except Exception as exc:  # the report is written; tracking is a convenience
            err_console.print(f"[yellow]warning:[/yellow] MLflow logging failed "
                              f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}); "
                              "check MLFLOW_TRACKING_URI or use --no-track")
    if as_json:
        sys.stdout.write(json.dumps(report, default=float) + "\n")
        return
    console.print(results_table(report))
    if any(None in (m["per_site"][s].get(report["primary_metric"]) for s in m["per_site"])
           for m in report["metrics"].values()):
        console.print("[dim]— : undefined for that site (e.g. AUROC on a one-class test "
                      "split).[/dim]")
    t = report["timing"]
    console.print(f"[dim]{t['total_s']:.1f} s in all ({t['federated_s']:.1f} s federated). "
                  f"Report: {out / 'report.md'}[/dim]")


def _sweep(config: Path, out: Path, overrides: list[str], sweep: str, console: Console,
           track: bool) -> None:
    from medfed.simulation.sweep import run_sweep

    def run_point(cfg, point_out: Path) -> dict:
        console.print(f"[bold]{sweep.partition('=')[0]}[/bold] = {point_out.name.split('=')[-1]}")
        report, arrays = _run_with_progress(cfg, console)
        _save_outputs(report, arrays, point_out)
        if track:
            _track(cfg, report, point_out)
        return report

    rows = run_sweep(config, out, overrides, sweep, run_point)
    console.print(_sweep_table(sweep.partition("=")[0], rows))
    console.print(f"[dim]Table {out / 'sweep.md'}, plot {out / 'sweep.png'}[/dim]")


def _sweep_table(key: str, rows: list[dict]) -> Table:
    from medfed.reports.common import ARMS

    table = Table(title=f"Pooled {rows[0]['metric'].upper()} vs {key}")
    table.add_column(key)
    arms = [a for a in ARMS if a in rows[0]]
    for arm in arms:
        table.add_column(arm.replace("_", "-"), justify="right")
    for r in rows:
        table.add_row(str(r[key]), *[f"{r[a]:.4f}" if r.get(a) is not None else "—"
                                     for a in arms])
    return table


def _run_with_progress(cfg, console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from medfed.simulation.runner import run_simulation

    quiet_libraries(logging.getLogger("medfed").level <= logging.DEBUG)
    columns = [TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
               TextColumn("{task.description}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("starting", total=cfg.rounds)

        def on_round(record: dict) -> None:
            pooled = record.get("pooled") or record.get("federated_eval") or {}
            shown = " ".join(f"{k} {pooled[k]:.3f}" for k in PROGRESS_METRICS
                             if pooled.get(k) is not None)
            loss = record.get("train_loss")
            progress.update(bar, completed=record["round"],
                            description=f"pooled {shown}" + (f" loss {loss:.3f}" if loss else ""))

        result = run_simulation(cfg, on_round=on_round)
    return result.report, result.arrays


def _save_outputs(report: dict, arrays, out: Path) -> None:
    from medfed.federation.checkpoint import arrays_to_bytes
    from medfed.io import atomic_write_bytes
    from medfed.reports.report import write_report

    write_report(report, out)
    atomic_write_bytes(out / "global_model.safetensors", arrays_to_bytes(arrays))


def _track(cfg, report: dict, out: Path) -> None:
    from medfed.reports.tracking import log_run

    report["mlflow"] = log_run(report, out, f"medfed-{cfg.dataset.name}",
                               cfg.name or f"{cfg.strategy.name}")


@datasets_app.command("list")
def datasets_list() -> None:
    """Every dataset MedFed can load: name, task, natural sites, description."""
    from medfed.datasets import DATASETS, get_dataset

    table = Table(title="Datasets (`dataset.name` in a config)")
    for column in ("name", "task", "natural sites", "default model", "description"):
        table.add_column(column)
    for name in DATASETS:
        dataset = get_dataset(name)
        table.add_row(name, dataset.task, "yes" if dataset.natural_sites else "no",
                      dataset.default_model, dataset.description)
    out_console.print(table)
