"""``--engine ray``: the same ServerApp and ClientApp under Flower's Simulation Engine.

MedFed starts its own SuperLink in simulation mode on a free loopback port, submits the app
with ``flwr run`` (runtime dependency installation off: MedFed is already installed), follows
per-round progress from the ServerApp's ``progress.json`` and stops the SuperLink afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord

from medfed.config import RUN_EVALUATION_HOOK, RUN_EXPERIMENT, RUN_OUTPUT_DIR, ExperimentConfig
from medfed.errors import MedFedError
from medfed.federation.app import app_pyproject, flower_env, free_port
from medfed.federation.checkpoint import load_checkpoint
from medfed.federation.rounds import FederationResult, FederationSummary

SIM_RUN_CONFIG = {RUN_EXPERIMENT: "", RUN_OUTPUT_DIR: "", RUN_EVALUATION_HOOK: ""}


def simulation_env(home: Path) -> dict[str, str]:
    env = flower_env(home)
    env.update(FLWR_DISABLE_UPDATE_CHECK="1", RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    return env


def executable(name: str) -> str:
    """Flower's CLI next to this Python (the venv's), else on PATH."""
    local = Path(sys.executable).with_name(name)
    return str(local) if local.exists() else (shutil.which(name) or name)


def wait_healthy(port: int, process: subprocess.Popen, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise MedFedError(f"flower-superlink exited with code {process.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise MedFedError(f"flower-superlink did not start within {timeout:.0f} s; see {log}")


def write_app(work: Path, cfg: ExperimentConfig, port: int, extra: dict[str, Any] | None = None
              ) -> tuple[Path, Path, Path]:
    """The app folder, Flower home and output folder; ``extra``: more run-config keys (ledger
    folder, run id, personal weights), declared in the app since Flower drops undeclared keys."""
    app_dir, home, out = work / "app", work / "flwr-home", work / "out"
    for folder in (app_dir, home, out):
        folder.mkdir(parents=True)
    (app_dir / "pyproject.toml").write_text(app_pyproject({**SIM_RUN_CONFIG, **(extra or {})}))
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "medfed-sim"\n\n[superlink.medfed-sim]\n'
        f'address = "127.0.0.1:{port}"\ninsecure = true\n')
    run_config = {**(extra or {}), RUN_EXPERIMENT: cfg.to_json(), RUN_OUTPUT_DIR: str(out),
                  RUN_EVALUATION_HOOK: "medfed.simulation.evaluation:central_evaluation"}
    (work / "run.toml").write_text("".join(f"{k} = {json.dumps(v)}\n"
                                           for k, v in run_config.items()))
    return app_dir, home, out


def follow_progress(run: subprocess.Popen, progress: Path, on_round) -> None:
    seen = 0
    while run.poll() is None:
        time.sleep(0.5)
        if on_round and progress.exists():
            try:
                history = json.loads(progress.read_text())["history"]
            except (json.JSONDecodeError, KeyError):
                continue
            for record in history[seen:]:
                on_round(record)
            seen = len(history)


def stop(process: subprocess.Popen) -> None:
    """Stop a process we started and everything it spawned (its own session)."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)


def start_superlink(port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A simulation SuperLink on loopback ``port`` in its own process group (``stop`` ends
    it), without runtime dependency installation (it would fetch a CUDA torch)."""
    with log.open("w") as log_file:
        return subprocess.Popen(
            [executable("flower-superlink"), "--insecure", "--simulation", "--isolation",
             "subprocess", "--host", "127.0.0.1", "--port", str(port),
             "--disable-runtime-dependency-installation"],
            env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)


def federation_config(cfg: ExperimentConfig, n_sites: int) -> str:
    """``flwr run --federation-config``: the sites and each one's resources (Flower's
    ``client_resources``; a fractional ``num_gpus`` lets several sites share a GPU)."""
    options = cfg.engine_options
    parts = [f"num-supernodes={n_sites}"]
    if options.num_cpus is not None:
        parts.append(f"client-resources-num-cpus={int(options.num_cpus)}")
    if options.num_gpus is not None:
        parts.append(f"client-resources-num-gpus={float(options.num_gpus)!r}")
    return " ".join(parts)


def cluster_address(cfg: ExperimentConfig, address: str | None = None) -> str | None:
    """The Ray cluster to join: ``address``, else ``engine_options.address``, else
    ``RAY_ADDRESS``; None: Flower starts a local Ray."""
    return address or cfg.engine_options.address or os.environ.get("RAY_ADDRESS") or None


def run_with_ray(cfg: ExperimentConfig, n_sites: int,
                 on_round: Callable[[dict[str, Any]], None] | None = None,
                 address: str | None = None, extra_run_config: dict[str, Any] | None = None
                 ) -> FederationResult:
    """Run the federation under Flower's Simulation Engine; returns what the in-process
    engine returns. ``address``: an existing Ray cluster (``host:port`` of its head, as
    ``ray start --head`` prints it) whose nodes run the sites (default: see
    ``cluster_address``). ``extra_run_config``: what the ClientApps also need (as in-process)."""
    start = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="medfed-ray-"))
    port = free_port()
    app_dir, home, out = write_app(work, cfg, port, extra_run_config)
    env = simulation_env(home)
    ray_address = cluster_address(cfg, address)
    if ray_address:  # ray.init() inside Flower's simulation process joins this cluster
        env["RAY_ADDRESS"] = ray_address
    log = work / "superlink.log"
    link = start_superlink(port, env, log)
    try:
        wait_healthy(port, link, log)
        with (work / "flwr-run.log").open("w") as run_log:
            run = subprocess.Popen(
                [executable("flwr"), "run", str(app_dir), "medfed-sim", "--run-config",
                 str(work / "run.toml"), "--federation-config", federation_config(cfg, n_sites),
                 "--stream"], env=env, stdout=run_log, stderr=subprocess.STDOUT)
            follow_progress(run, out / "progress.json", on_round)
        if run.returncode != 0 or not (out / "history.json").exists():
            raise MedFedError(f"the Ray simulation failed (exit {run.returncode}); see "
                              f"{work / 'flwr-run.log'}")
    finally:
        stop(link)
    weights, _ = load_checkpoint(out)
    saved = json.loads((out / "history.json").read_text())
    shutil.rmtree(work, ignore_errors=True)
    # the scaling the ServerApp computed, not recomputed here: the same bits as in-process
    summary = FederationSummary(task="", input_shape=(), n_classes=0,
                                scaling=ConfigRecord(saved.get("scaling", {})))
    return FederationResult(ArrayRecord(weights), saved["history"], summary,
                            time.perf_counter() - start)
