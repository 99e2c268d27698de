"""Coordination seconds per round of a real federation on loopback, 2 and 5 hospitals.

Each hospital holds a UCI-format heart-disease file (tests/uci_files.py: generated with the
real files' sizes, skew and missingness; Cleveland, Hungary, VA, Switzerland, and a second
Cleveland-like file as the fifth). The coordinator runs `medfed server start` (TLS, node
authentication), each hospital `medfed client start` with a site policy trusting the
coordinator's key (checked on every message), then `medfed run` (logistic regression, FedAvg,
the sites' evaluation every round, no MLflow). Per round k >= 2:

    wall_k          time between the coordinator's audit entries round_finished k-1 and k
    site_k          the slowest site's own seconds in round k: its train + evaluate handlers,
                    timed inside the ClientApp (medfed/deploy/timing_mod.py)
    coordination_k  wall_k - site_k: messages, polls, forks, serialisation, aggregation

The in-process engine's seconds per round (2 sites, same config) are printed for reference.
Prints one JSON line. ``--profile DIR`` sets MEDFED_PROFILE_DIR, so each forked ClientApp
child dumps a cProfile there (medfed/deploy/supernode.py); profile the SuperNode, executor or
ServerApp with ``py-spy record --pid``.

    python bench/deployment_overhead.py [--rounds 8] [--sites 2 5]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MEDFED = [sys.executable, "-m", "medfed.cli"]
CENTRES = ["cleveland", "hungarian", "va", "switzerland"]
CONFIG = """\
name: bench-deploy
dataset: {{name: heart-disease, options: {{centres: [cleveland, hungarian]}}}}
partition: {{scheme: natural, sites: {sites}}}
model: {{name: logreg}}
strategy: {{name: fedavg, min_sites: {sites}}}
train: {{lr: 0.05, batch_size: 16}}
rounds: {rounds}
baselines: {{centralized: false, local_only: false}}
"""


def write_sites(root: Path, n: int) -> list[Path]:
    """``n`` site folders, each with one UCI ``processed.*.data`` file."""
    sys.path.insert(0, str(ROOT))
    from tests.uci_files import FILES, write_uci_heart

    write_uci_heart(root / "data", seed=11)
    write_uci_heart(root / "data2", seed=12)
    sources = [root / "data" / "heart-disease" / FILES[c] for c in CENTRES]
    sources.append(root / "data2" / "heart-disease" / FILES["cleveland"])
    sites = []
    for i, source in enumerate(sources[:n]):
        folder = root / f"site-{i}"
        folder.mkdir()
        (folder / source.name).write_bytes(source.read_bytes())
        sites.append(folder)
    return sites


def in_process(config: Path) -> float:
    """Median seconds per round of the federated part, in-process engine (2 sites)."""
    import logging

    from medfed.config import load_config
    from medfed.datasets.sites import simulated_federation
    from medfed.simulation.runner import run_federated

    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg = load_config(config)
    sites, info = simulated_federation(cfg.to_json())
    times: list[float] = []
    run_federated(cfg, sites, info, lambda record: times.append(time.perf_counter()))
    return float(np.median(np.diff(times)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """SuperLink + one SuperNode per site, as `medfed` processes; stopped by process group."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root, self.env, self.procs = root, env, []
        self.port, self.state = free_port(), root / "state"

    def cli(self, *args: str) -> None:
        subprocess.run([*MEDFED, *args], cwd=self.root, env=self.env, check=True,
                       capture_output=True)

    def start(self, name: str, *args: str) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - lives with the process
        self.procs.append(subprocess.Popen([*MEDFED, *args], cwd=self.root, env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def up(self, sites: list[Path]) -> None:
        self.cli("certs", "init", "certs", "--server-name", "localhost")
        self.start("server", "server", "start", "--certs", "certs", "--state",
                   str(self.state), "--address", f"127.0.0.1:{self.port}")
        while "Uvicorn running" not in (self.root / "server.log").read_text(errors="replace"):
            time.sleep(0.2)
        for i, folder in enumerate(sites):
            self.cli("keys", "create", f"keys-{i}")
            policy = {"trusted_keys": [str((self.state / "coordinator.pub").resolve())],
                      "datasets": ["heart-disease"], "models": ["logreg"]}
            (self.root / f"keys-{i}" / "site-policy.yaml").write_text(json.dumps(policy))
            self.cli("nodes", "add", f"keys-{i}/node.pub", "--name", f"site-{i}", "--state",
                     str(self.state))
            self.start(f"client-{i}", "client", "start", "--superlink",
                       f"localhost:{self.port}", "--root-cert", "certs/ca.pem", "--key",
                       f"keys-{i}/node.key", "--data", str(folder), "--runtime-port",
                       str(free_port()))

    def down(self) -> None:
        for proc in reversed(self.procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def deployment(root: Path, sites: list[Path], rounds: int, profile: Path | None
               ) -> dict[str, list[float]]:
    """Per-round wall, slowest-site and coordination seconds (rounds 2..N)."""
    timing = root / "timing.jsonl"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MEDFED_TIMING_LOG": str(timing)}
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        env["MEDFED_PROFILE_DIR"] = str(profile.resolve())
    config = root / "bench.yaml"
    config.write_text(CONFIG.format(sites=len(sites), rounds=rounds))
    cluster = Cluster(root, env)
    try:
        cluster.up(sites)
        cluster.cli("run", str(config), "--state", str(cluster.state), "--no-track",
                    "--round-timeout", "120", "--wait-timeout", "300")
    finally:
        cluster.down()
    return per_round(cluster.state / "audit.jsonl", timing)


def per_round(audit_log: Path, timing: Path) -> dict[str, list[float]]:
    """Wall, slowest site and coordination seconds for rounds 2..N (round k of a site: its
    k-th train message and the evaluate message after it)."""
    finished = [datetime.fromisoformat(e["time"]).timestamp() for e in map(
        json.loads, audit_log.read_text().splitlines()) if e["event"] == "round_finished"]
    site_s: dict[str, list[float]] = {}
    for entry in sorted(map(json.loads, timing.read_text().splitlines()),
                        key=lambda e: e["start"]):
        rounds = site_s.setdefault(entry["node"], [])
        if entry["type"] == "train":
            rounds.append(entry["seconds"])
        elif entry["type"].startswith("evaluate") and rounds:
            rounds[-1] += entry["seconds"]
    walls = list(np.diff(finished))
    slowest = [max(s[k] for s in site_s.values() if len(s) > k)
               for k in range(1, len(finished))]
    return {"wall": walls, "site": slowest,
            "coordination": [w - s for w, s in zip(walls, slowest, strict=True)]}


def summary(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 3), "median": round(float(np.median(values)), 3),
            "max": round(max(values), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--sites", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--profile", type=Path, default=None,
                        help="folder for cProfile dumps of the forked ClientApp children")
    parser.add_argument("--keep", type=Path, default=None,
                        help="an empty folder to run in and keep (logs, audit, timing)")
    args = parser.parse_args()
    out: dict = {"case": "deployment_coordination", "model": "logreg", "rounds": args.rounds,
                 "data": "generated UCI-format heart-disease files (tests/uci_files.py)"}
    with tempfile.TemporaryDirectory(prefix="medfed-bench-") as tmp:
        root = args.keep.resolve() if args.keep else Path(tmp)
        for n in args.sites:
            folder = root / f"n{n}"
            folder.mkdir()
            sites = write_sites(folder, n)
            if n == 2:
                os.environ["MEDFED_DATA_DIR"] = str(folder / "data")
                config = folder / "inprocess.yaml"
                config.write_text(CONFIG.format(sites=2, rounds=args.rounds))
                out["inprocess_round_s_2_sites"] = round(in_process(config), 4)
            result = deployment(folder, sites, args.rounds, args.profile)
            out[f"sites_{n}"] = {k: summary(v) for k, v in result.items()}
    out.update({"load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
