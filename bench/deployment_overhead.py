"""Per-round coordination overhead of a real federation on loopback vs the in-process engine.

The same two heart-disease hospitals (UCI format, written here), the same tiny model
(logistic regression) and config run (a) in-process (`medfed simulate`'s engine, the
federated part only, with the sites' own evaluation every round as in deployment) and
(b) on Flower's Deployment Engine: `medfed server start` (TLS, node authentication),
two `medfed client start` SuperNodes, `medfed run`. Round times in (b) come from the
coordinator's audit log (time between consecutive ``round_finished`` entries, so start-up
is excluded). Prints one JSON line.

    python bench/deployment_overhead.py [--rounds 10]
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
from pathlib import Path

import numpy as np

MEDFED = [sys.executable, "-m", "medfed.cli"]
CONFIG = """\
name: bench-deploy
dataset: {{name: heart-disease, options: {{centres: [cleveland, hungarian]}}}}
partition: {{scheme: natural, sites: 2}}
model: {{name: logreg}}
strategy: {{name: fedavg, min_sites: 2}}
train: {{lr: 0.05, batch_size: 16}}
rounds: {rounds}
baselines: {{centralized: false, local_only: false}}
"""


def write_sites(root: Path) -> dict[str, Path]:
    """UCI ``processed.*.data`` files: MEDFED_DATA_DIR for (a), one site folder each for (b)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.uci_files import FILES, write_uci_heart

    write_uci_heart(root / "data", seed=11)
    sites = {}
    for centre in ("cleveland", "hungarian"):
        folder = root / f"site-{centre}"
        folder.mkdir()
        (folder / FILES[centre]).write_bytes((root / "data" / "heart-disease" /
                                              FILES[centre]).read_bytes())
        sites[centre] = folder
    return sites


def in_process(config: Path, rounds: int) -> float:
    """Seconds per round of the federated part, in-process engine."""
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


def deployment(root: Path, config: Path, sites: dict[str, Path]) -> float:
    """Seconds per round on SuperLink + 2 SuperNodes (TLS, node auth), from the audit log."""
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    port, state, procs = free_port(), root / "state", []

    def cli(*args: str) -> None:
        subprocess.run([*MEDFED, *args], cwd=root, env=env, check=True, capture_output=True)

    def start(name: str, *args: str) -> None:
        log = open(root / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen([*MEDFED, *args], cwd=root, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))

    try:
        cli("certs", "init", "certs", "--server-name", "localhost")
        start("server", "server", "start", "--certs", "certs", "--state", str(state),
              "--address", f"127.0.0.1:{port}")
        while "Uvicorn running" not in (root / "server.log").read_text(errors="replace"):
            time.sleep(0.2)
        for name, folder in sites.items():
            cli("keys", "create", f"keys-{name}")
            cli("nodes", "add", f"keys-{name}/node.pub", "--name", name, "--state", str(state))
            start(f"client-{name}", "client", "start", "--superlink", f"localhost:{port}",
                  "--root-cert", "certs/ca.pem", "--key", f"keys-{name}/node.key", "--data",
                  str(folder), "--runtime-port", str(free_port()))
        cli("run", str(config), "--state", str(state), "--no-track", "--round-timeout", "120")
    finally:
        for proc in reversed(procs):
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    from datetime import datetime

    stamps = [datetime.fromisoformat(e["time"]).timestamp() for e in map(
        json.loads, (state / "audit.jsonl").read_text().splitlines())
        if e["event"] == "round_finished"]
    return float(np.median(np.diff(stamps)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="medfed-bench-") as tmp:
        root = Path(tmp)
        sites = write_sites(root)
        os.environ["MEDFED_DATA_DIR"] = str(root / "data")
        config = root / "bench.yaml"
        config.write_text(CONFIG.format(rounds=args.rounds))
        sim = in_process(config, args.rounds)
        deploy = deployment(root, config, sites)
    print(json.dumps({"case": "deployment_vs_inprocess", "sites": 2, "model": "logreg",
                      "rounds": args.rounds, "inprocess_round_s": round(sim, 4),
                      "deployment_round_s": round(deploy, 3),
                      "overhead_per_round_s": round(deploy - sim, 3),
                      "inprocess_rounds_per_s": round(1 / sim, 2),
                      "deployment_rounds_per_s": round(1 / deploy, 3),
                      "load_avg_1min": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
