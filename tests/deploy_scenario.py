"""One real federation on loopback whose files several test modules read (no mocks).

Three hospitals and a SuperLink with TLS and node authentication; an intruder with an
unregistered key tries to join; a 3-round run loses hospital-c (SIGKILL) after round 1, is
stopped with Ctrl-C then and resumed (a new Flower run, the same MedFed run) with the two
hospitals left; the final model is registered in MLflow. Every process is stopped before the
tests read the files, so the scenario runs once per session (``run_once`` keeps a marker)
and the tests only read its logs, run folder and registry.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.deploy_procs import (
    MEDFED,
    Procs,
    free_port,
    read_json,
    test_env,
    wait_for,
    write_heart_site,
)

NAME = "hd-dropout-card"
CONFIG = f"""\
name: {NAME}
dataset: {{name: heart-disease}}
partition: {{sites: 3}}
model: {{name: logreg}}
strategy: {{name: fedavg, min_sites: 2}}
train: {{lr: 0.05, batch_size: 16}}
rounds: 3
seed: 7
"""
SITES = {"a": 200, "b": 160, "c": 140}


@dataclass(frozen=True)
class Scenario:
    root: Path
    run_id: str
    log: str  # the processes' output, for assertion messages

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def run_dir(self) -> Path:
        return self.state / "runs" / self.run_id

    def site_log(self, site: str) -> Path:
        return self.root / f"keys-{site}" / "audit.jsonl"

    def env(self) -> dict[str, str]:
        return {**test_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{self.root}/mlflow.db"}

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([*MEDFED, *args], cwd=self.root, capture_output=True, text=True,
                              timeout=timeout, env=self.env())


def run_once(base: Path) -> Scenario:
    """The scenario's files under ``base/dropout-federation`` (run on the first call)."""
    root = base / "dropout-federation"
    root.mkdir(exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = read_json(root / "scenario.json")
        if done is None:
            done = _run(root)
            (root / "scenario.json").write_text(json.dumps(done))
    return Scenario(root, done["run_id"], done["log"])


def _setup(root: Path, procs: Procs, port: int) -> None:
    from medfed.deploy.certs import create_node_keys, init_certs

    init_certs(root / "certs", ["coord.test", "localhost", "127.0.0.1"])
    for site in (*SITES, "intruder"):
        create_node_keys(root / f"keys-{site}")
    for seed, (site, rows) in enumerate(SITES.items(), start=1):
        write_heart_site(root / f"hospital-{site}", rows, seed=seed)
    (root / "hd.yaml").write_text(CONFIG)
    procs.start("server", ["server", "start", "--certs", str(root / "certs"), "--state",
                           str(root / "state"), "--address", f"127.0.0.1:{port}"])
    wait_for(lambda: "Uvicorn running" in procs.log("server"), 120, "the SuperLink")
    for site in SITES:
        done = subprocess.run([*MEDFED, "nodes", "add", str(root / f"keys-{site}" / "node.pub"),
                               "--name", f"hospital-{site}", "--state", str(root / "state")],
                              cwd=root, capture_output=True, text=True, timeout=120,
                              env=test_env())
        assert done.returncode == 0, done.stderr + done.stdout


def _client(root: Path, procs: Procs, port: int, site: str, keys: str, *extra: str):
    return procs.start(f"client-{keys}", [
        "client", "start", "--superlink", f"localhost:{port}", "--root-cert",
        str(root / "certs" / "ca.pem"), "--key", str(root / f"keys-{keys}" / "node.key"),
        "--data", str(root / f"hospital-{site}"), "--runtime-port", str(free_port()),
        "--no-policy", *extra])


def _run(root: Path) -> dict[str, str]:
    procs, port = Procs(root), free_port()
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"  # the processes' registry
    try:
        _setup(root, procs, port)
        for site in SITES:
            _client(root, procs, port, site, site)
        intruder = _client(root, procs, port, "a", "intruder", "--rejoin-wait", "0")
        runs = root / "state" / "runs"
        run = procs.start("run", ["run", str(root / "hd.yaml"), "--state", str(root / "state"),
                                  "--superlink", f"localhost:{port}", "--round-timeout", "10",
                                  "--wait-timeout", "120"])
        run_dir = wait_for(lambda: next(runs.iterdir(), None) if runs.is_dir() else None, 120,
                           "the run folder")

        def rounds() -> int:
            return len(read_json(run_dir / "progress.json", {}).get("history", []))

        wait_for(lambda: rounds() >= 1, 240, "round 1", interval=0.05)
        procs.crash("client-c")  # hospital-c is gone for good after round 1
        run.send_signal(signal.SIGINT)  # Ctrl-C: the last completed round stays resumable
        assert run.wait(timeout=120) == 130, procs.log("run")[-2000:]
        intruder.wait(timeout=120)
        resumed = subprocess.run([*MEDFED, "run", "--resume", run_dir.name, "--state",
                                  str(root / "state"), "--round-timeout", "10",
                                  "--wait-timeout", "3"], cwd=root, capture_output=True,
                                 text=True, timeout=600, env=test_env())
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        log = resumed.stdout + resumed.stderr
    finally:
        procs.stop_all()
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    return {"run_id": run_dir.name, "log": log[-3000:]}
