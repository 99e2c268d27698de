"""`medfed benchmark`: a grid × seeds of simulations, one table with error bars, MLflow runs."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out_console = Console()
err_console = Console(stderr=True)


def benchmark(
    config: Path = typer.Argument(..., help="Experiment YAML; its `benchmark:` section gives "
                                  "the default grid and seeds, e.g. "
                                  "configs/benchmark-tcga-brca.yaml."),
    grid: list[str] = typer.Option([], "--grid", help="KEY=V1,V2,...: one cell per "
                                   "combination of all --grid keys, e.g. --grid "
                                   "strategy.name=fedavg,fedprox --grid "
                                   "personalize=none,ditto (repeatable; replaces the config's "
                                   "benchmark.grid)."),
    seeds: str | None = typer.Option(None, "--seeds", help="N (seeds 0..N-1) or a list "
                                     "1,2,3; each sets `seed` (default: benchmark.seeds, 5)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Benchmark folder (default: "
                                    "runs/CONFIG-NAME). Finished cells there are reused."),
    jobs: int | None = typer.Option(None, "--jobs", "-j", min=1, help="Cells run at once, "
                                    "each in its own process (default: one per core)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key in every cell, "
                                   "e.g. --set rounds=5 (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print benchmark.json to stdout, "
                                 "nothing else there."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="Run every cell on "
                                           "this Ray cluster (engine=ray), e.g. "
                                           "127.0.0.1:6379."),
    track: bool = typer.Option(True, help="Log to MLflow: one parent run, a child run per "
                               "cell (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Flower's own logs."),
) -> None:
    """Compare strategies and personalised arms over seeds, with error bars.

    Runs every combination of the --grid values for every seed (resumable: a finished cell is
    never recomputed), then writes --out/benchmark.md (mean ± std and 95 % CI per arm, pooled
    and per site; paired comparison against FedAvg), benchmark.json and a plot per metric.
    """
    from medfed.cli.simulate import quiet_libraries
    from medfed.io import check_output_dir
    from medfed.simulation.benchmark import plan_benchmark

    quiet_libraries(verbose)
    logging.getLogger("medfed").setLevel(logging.DEBUG if verbose else logging.WARNING)
    out = check_output_dir(out or Path("runs") / config.stem, "--out")
    console = err_console if as_json else out_console
    plan = plan_benchmark(config, out, set_, grid, seeds, ray_address)
    start = time.perf_counter()
    records, counts = _run_with_progress(plan, jobs, ray_address, console)
    summary = _summarise(plan, records, counts, track, time.perf_counter() - start)
    if as_json:
        sys.stdout.write(json.dumps(summary, default=float) + "\n")
        return
    console.print(summary_table(summary, console.width))
    console.print(f"[dim]{summary['cells_computed']} cells computed, "
                  f"{summary['cells_reused']} reused, {summary['seconds']:.1f} s. Tables and "
                  f"paired comparison: {out / 'benchmark.md'}[/dim]")


def _run_with_progress(plan, jobs: int | None, ray_address: str | None, console: Console):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from medfed.simulation.benchmark import run_benchmark

    counts = {"reused": 0, "computed": 0}
    shown: set[str] = set()
    columns = [TextColumn("[bold]cells"), MofNCompleteColumn(), BarColumn(),
               TextColumn("{task.description}"), TimeElapsedColumn(), TextColumn("ETA"),
               TimeRemainingColumn()]
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("", total=len(plan.cells))

        def on_cell(record: dict, reused: bool) -> None:
            counts["reused" if reused else "computed"] += 1
            for message in record.get("warnings", []):
                if message not in shown:
                    shown.add(message)
                    console.print(f"[yellow]warning:[/yellow] {message}", highlight=False)
            done = " ".join(record["group"].values())
            progress.update(bar, advance=1, description=f"{done} seed {record['seed']}"
                            + (" (stored)" if reused else ""))

        records = run_benchmark(plan, jobs, on_cell, ray_address)
    return records, counts


def _summarise(plan, records: list[dict], counts: dict[str, int], track: bool,
               seconds: float) -> dict:
    from medfed.reports.benchmark import build_summary, log_benchmark, write_benchmark

    out = plan.out
    summary = build_summary(records, plan.grid, plan.seeds, str(plan.config))
    summary |= {"cells_computed": counts["computed"], "cells_reused": counts["reused"],
                "seconds": round(seconds, 1), "out": str(out)}
    files = write_benchmark(out, summary)
    if track:
        try:
            summary["mlflow"] = log_benchmark(summary, records, out, files,
                                              f"medfed-{plan.dataset}",
                                              f"benchmark-{plan.config.stem}")
        except Exception as exc:  # the files are written; tracking is a convenience
            err_console.print(f"[yellow]warning:[/yellow] MLflow logging failed "
                              f"({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}); "
                              "check MLFLOW_TRACKING_URI or use --no-track")
    return summary


def summary_table(summary: dict, width: int = 200) -> Table:
    """The primary metric: mean ± std (95 % CI) per row, site mean, pooled and each site
    (sites only where the terminal is wide enough; benchmark.md has them all)."""
    from medfed.reports.benchmark import cell_text

    metric = summary["primary_metric"]
    n = len(summary["seeds"])
    sites = summary["sites"] if 60 + 14 * len(summary["sites"]) <= width else []
    table = Table(title=f"{summary['dataset']}: {metric} over {n} seeds, mean ± std (95 % CI)")
    for column in (" · ".join(summary["grid"]) or "grid", "arm", "site mean", "pooled",
                   *sites):
        table.add_column(column, justify="left" if column in ("arm",) else "right")
    beyond = {(p["label"], p["arm"]) for p in summary["paired"] if p["metric"] == metric
              and p["scope"] == "site_mean" and p["exceeds_noise"]}
    for row in summary["rows"]:
        s = row["stats"][metric]
        mark = " *" if (row["label"], row["arm"]) in beyond else ""
        table.add_row(row["label"], row["arm"].replace("_", "-") + mark,
                      cell_text(s["site_mean"]).replace(" (", "\n("),
                      cell_text(s["pooled"]).replace(" (", "\n("),
                      *(cell_text(s["per_site"][x], ci=False) if x in s["per_site"] else "—"
                        for x in sites))
    table.caption = ("* site mean differs from FedAvg's beyond seed noise (paired, 95 % CI of "
                     "the difference excludes 0)" + ("" if sites else "; per site: "
                                                     "benchmark.md"))
    return table
