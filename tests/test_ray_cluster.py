"""`--engine ray` on an existing Ray cluster: a head and a second node on loopback, started by
``ray start`` in sessions of their own and stopped by PID (never ``ray stop``: it would stop
every Ray on the machine). The sites' work must run on both nodes."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import small_config
from tests.deploy_procs import _kill, descendants, free_port
from tests.deploy_procs import test_env as process_env

RAY = str(Path(sys.executable).with_name("ray"))


def _ports(*names: str) -> list[str]:
    return [arg for name in names for arg in (f"--{name}", str(free_port()))]


class RayNode:
    """One ``ray start --block`` process (and everything it spawns) with its own temp dir."""

    def __init__(self, args: list[str], root: Path, name: str) -> None:
        # Ray's socket paths must stay under 107 bytes: a short folder, not pytest's tmp_path
        self.temp = Path(tempfile.mkdtemp(prefix=f"mf-{name}-", dir="/tmp"))
        self.log = root / f"{name}.log"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [RAY, "start", "--block", "--num-cpus=1", "--num-gpus=0",
                 f"--temp-dir={self.temp}", "--disable-usage-stats",
                 *_ports("node-manager-port", "object-manager-port",
                         "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                         "runtime-env-agent-port", "metrics-export-port"), *args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=process_env())
        self.seen: set[int] = set()

    def remember(self) -> None:
        self.seen |= set(descendants(self.proc.pid))

    def stop(self) -> None:
        self.remember()
        _kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)
        deadline = time.monotonic() + 10
        for pid in sorted(self.seen):
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            _kill(pid, signal.SIGKILL)
        shutil.rmtree(self.temp, ignore_errors=True)


def _wait_for_nodes(address: str, count: int, nodes: list[RayNode], timeout: float = 90) -> None:
    """Until ``ray status`` lists ``count`` live nodes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for node in nodes:
            assert node.proc.poll() is None, node.log.read_text()[-2000:]
            node.remember()
        status = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True,
                                text=True, env=process_env(), timeout=60)
        if status.returncode == 0 and status.stdout.count(" node_") >= count:
            return
        time.sleep(2)
    pytest.fail(f"the Ray cluster did not reach {count} nodes: {status.stdout}{status.stderr}")


@pytest.fixture
def ray_cluster(tmp_path):
    """(head address, its two nodes) of a loopback cluster, one CPU per node."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [RayNode(["--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                      "--include-dashboard=false", *_ports("ray-client-server-port")],
                     tmp_path, "head")]
    try:
        _wait_for_nodes(address, 1, nodes)
        nodes.append(RayNode([f"--address={address}", "--node-ip-address=127.0.0.1"],
                             tmp_path, "worker"))
        _wait_for_nodes(address, 2, nodes)
        yield address, nodes
    finally:
        for node in reversed(nodes):
            node.stop()


def ran_a_site_actor(node: RayNode) -> bool:
    """Whether a Flower ClientApp actor ran on ``node``: Ray tags each actor worker's stdout
    in that node's own session logs with ``:actor_name:<class>``."""
    return any(":actor_name:ClientAppActor" in out.read_text(errors="replace")
               for out in node.temp.glob("session_*/logs/worker-*.out"))


@pytest.mark.deploy
def test_simulation_runs_its_sites_on_both_nodes_of_a_cluster(ray_cluster):
    from medfed.simulation.ray_engine import run_with_ray

    address, nodes = ray_cluster
    cfg = small_config(engine="ray", rounds=2, partition__sites=4,
                       engine_options={"num_cpus": 1})  # one site per node at a time
    result = run_with_ray(cfg, 4, address=address)
    for node in nodes:
        node.remember()
    assert [h["round"] for h in result.history] == [1, 2]
    assert all(ran_a_site_actor(node) for node in nodes)


def test_site_resources_and_cluster_address_reach_flower(monkeypatch):
    from flwr.common.config import parse_config_args
    from flwr.supercore.utils import simulation_config_from_json

    from medfed.simulation.ray_engine import cluster_address, federation_config

    cfg = small_config(engine="ray", engine_options={"num_cpus": 1, "num_gpus": 0.25})
    text = federation_config(cfg, 8)
    # what `flwr run --federation-config` makes of it: Flower's backend client_resources
    parsed = {k.replace("-", "_"): v for k, v in parse_config_args([text]).items()}
    sim = simulation_config_from_json(parsed)
    assert (sim.num_supernodes, sim.client_resources_num_cpus,
            sim.client_resources_num_gpus) == (8, 1, 0.25)
    assert federation_config(small_config(), 3) == "num-supernodes=3"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster_address(small_config()) == "10.0.0.5:6379"
    assert cluster_address(cfg, "127.0.0.1:7000") == "127.0.0.1:7000"
    monkeypatch.delenv("RAY_ADDRESS")
    assert cluster_address(small_config()) is None
