"""`medfed stats` on simulated sites: the statistics query over the in-process engine."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfed.config import RUN_EXPERIMENT, RUN_LEDGER_DIR, ExperimentConfig
from medfed.datasets import get_dataset
from medfed.datasets.stats_view import simulated_views
from medfed.federation.stats import run_stats


def run_stats_simulation(cfg: ExperimentConfig, ledger: Path | None = None,
                         progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every virtual site answers through the same ClientApp as training (``query.stats``).

    ``ledger``: the sites' privacy ledgers (``privacy.ledger_dir`` wins when set)."""
    from medfed.federation.client_app import app as client_app
    from medfed.simulation.engine import InProcessGrid

    get_dataset(cfg.dataset.name)
    if progress:
        progress("reading the sites' data")
    views = simulated_views(cfg.to_json())
    run_config = {RUN_EXPERIMENT: cfg.to_json()}
    if ledger is not None and not cfg.privacy.ledger_dir:
        run_config[RUN_LEDGER_DIR] = str(ledger)
    if cfg.engine == "ray":
        if progress:
            progress(f"asking {len(views)} sites under Flower's Simulation Engine (Ray)")
        return stats_with_ray(run_config, len(views))
    grid = InProcessGrid(client_app, len(views), run_config)
    return run_stats(grid, cfg, progress=progress, wait_timeout=5.0)


def stats_with_ray(run_config: dict[str, str], n_sites: int) -> dict[str, Any]:
    """The same query under Flower's Simulation Engine: a simulation SuperLink on a free
    loopback port, ``flwr run`` of MedFed's statistics ServerApp, stopped afterwards."""
    import json
    import shutil
    import subprocess
    import tempfile

    from medfed.config import RUN_OUTPUT_DIR
    from medfed.errors import MedFedError
    from medfed.federation.app import app_pyproject, free_port
    from medfed.federation.stats_app import RESULT, SERVER_APP
    from medfed.simulation.ray_engine import (
        executable,
        simulation_env,
        start_superlink,
        stop,
        wait_healthy,
    )

    work = Path(tempfile.mkdtemp(prefix="medfed-ray-stats-"))
    port, out = free_port(), work / "out"
    for folder in (work / "app", work / "flwr-home", out):
        folder.mkdir(parents=True)
    values = {**run_config, RUN_OUTPUT_DIR: str(out)}
    (work / "app" / "pyproject.toml").write_text(app_pyproject(
        {key: "" for key in values}, serverapp=SERVER_APP))
    (work / "flwr-home" / "config.toml").write_text(
        f'[superlink]\ndefault = "medfed-sim"\n\n[superlink.medfed-sim]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    (work / "run.toml").write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in
                                           values.items()))
    env = simulation_env(work / "flwr-home")
    link = start_superlink(port, env, work / "superlink.log")
    try:
        wait_healthy(port, link, work / "superlink.log")
        with (work / "flwr-run.log").open("w") as log:
            done = subprocess.run(
                [executable("flwr"), "run", str(work / "app"), "medfed-sim", "--run-config",
                 str(work / "run.toml"), "--federation-config", f"num-supernodes={n_sites}",
                 "--stream"], env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        if done.returncode != 0 or not (out / RESULT).is_file():
            raise MedFedError(f"the Ray statistics query failed (exit {done.returncode})",
                              where=str(work / "flwr-run.log"), fix="see that log")
    finally:
        stop(link)
    result = json.loads((out / RESULT).read_text())
    shutil.rmtree(work, ignore_errors=True)
    return result


def harmonisation_section(cfg: ExperimentConfig) -> dict[str, Any]:
    """``report.json`` -> ``harmonisation``: the stats query's flags for `medfed simulate`'s
    header (skipped under ``stats.privacy``: it would spend the sites' budget)."""
    from medfed.errors import MedFedError

    if cfg.engine == "ray":  # a second SuperLink and Ray cluster only for the header
        return {"skipped": "not run under engine ray; run `medfed stats`"}
    if cfg.stats.privacy is not None:
        return {"skipped": "not run (stats.privacy is set: the query would spend privacy "
                           "budget); run `medfed stats`"}
    import warnings

    from medfed.errors import MedFedWarning

    try:
        with warnings.catch_warnings():  # the sites' data warnings were shown by the run
            warnings.simplefilter("ignore", MedFedWarning)
            result = run_stats_simulation(cfg)
    except MedFedError as exc:
        return {"skipped": f"not run ({exc})"}
    return {"flags": result["flags"], "threshold": cfg.stats.flag_distance,
            "min_count": result["min_count"]}
