"""A real federation on loopback: SuperLink + two SuperNodes, TLS and node authentication.

No mocks: every command is the `medfed` CLI in its own process, Flower's own SuperLink and
SuperNodes underneath. One coordinator and two hospitals serve the module; each test stops
what it starts, and the module fixture stops the rest by PID (with their children).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy_procs import Procs, free_port, read_json, run_cli, wait_for, write_heart_site

pytestmark = pytest.mark.deploy

CONFIG = """\
name: hd-fedadam
dataset: {name: heart-disease}
partition: {sites: 2}
model: {name: logreg}
strategy: {name: fedadam, min_sites: 1, eta: 0.05}
train: {lr: 0.05, batch_size: 16}
rounds: 3
seed: 7
"""


class Federation:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs = Procs(root)
        self.port = free_port()
        self.state = root / "state"
        self.certs = root / "certs"
        self.config = root / "hd.yaml"
        self.superlink = f"localhost:{self.port}"

    def start_server(self, name: str = "server") -> None:
        self.procs.start(name, ["server", "start", "--certs", str(self.certs), "--state",
                                str(self.state), "--address", f"127.0.0.1:{self.port}"])
        wait_for(lambda: "Uvicorn running" in self.procs.log(name), 120, "the SuperLink")

    def start_client(self, site: str, key_dir: str, name: str | None = None, *extra: str):
        return self.procs.start(name or f"client-{site}", [
            "client", "start", "--superlink", self.superlink, "--root-cert",
            str(self.certs / "ca.pem"), "--key", str(self.root / key_dir / "node.key"),
            "--data", str(self.root / site), "--runtime-port", str(free_port()),
            *extra, *(() if "--policy" in extra else ("--no-policy",))])
        # site policies are tested in tests/test_site_policy.py

    def runs(self) -> set[str]:
        folder = self.state / "runs"
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()

    def run_args(self, *extra: str) -> list[str]:
        return ["run", str(self.config), "--state", str(self.state), "--superlink",
                self.superlink, *extra]


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    root = tmp_path_factory.mktemp("federation")
    federation = Federation(root)
    federation.config.write_text(CONFIG)
    write_heart_site(root / "hospital-a", 220, seed=1)
    write_heart_site(root / "hospital-b", 180, seed=2)
    for args in (["certs", "init", str(federation.certs), "--server-name", "coord.test"],
                 ["keys", "create", str(root / "keys-a")],
                 ["keys", "create", str(root / "keys-b")],
                 ["keys", "create", str(root / "keys-intruder")]):
        done = run_cli(args, root)
        assert done.returncode == 0, done.stderr
    try:
        federation.start_server()
        for name in ("a", "b"):
            done = run_cli(["nodes", "add", str(root / f"keys-{name}" / "node.pub"), "--name",
                            f"hospital-{name}", "--state", str(federation.state)], root)
            assert done.returncode == 0, done.stderr + done.stdout
        done = run_cli(["data", "check", str(root / "hospital-a"), "--label-column", "num"],
                       root)
        assert done.returncode == 0, done.stdout + done.stderr
        federation.start_client("hospital-a", "keys-a", "client-a")
        federation.start_client("hospital-b", "keys-b", "client-b")
        yield federation
    finally:
        federation.procs.stop_all()


def _history(run_dir: Path) -> list[dict]:
    return read_json(run_dir / "result.json", {}).get("history", [])


def test_three_rounds_tls_node_auth_registry_and_tampered_model(fed):
    before = fed.runs()
    done = run_cli(fed.run_args("--round-timeout", "90"), fed.root)
    assert done.returncode == 0, done.stderr[-2000:]
    (run_id,) = fed.runs() - before
    run_dir = fed.state / "runs" / run_id
    history = _history(run_dir)
    assert [h["round"] for h in history] == [1, 2, 3]
    assert all(h["sites_trained"] == 2 for h in history)
    assert history[-1]["federated_eval"]["auroc"] > 0.6
    assert read_json(fed.state / "server.json")["insecure"] is False
    # the sites' and the coordinator's audit logs: chained, and they say what left the sites
    for log in (fed.state / "audit.jsonl", fed.root / "keys-a" / "audit.jsonl"):
        check = run_cli(["audit", "verify", str(log)], fed.root)
        assert check.returncode == 0, check.stderr
    site_entries = [json.loads(line) for line in
                    (fed.root / "keys-a" / "audit.jsonl").read_text().splitlines()]
    sent = [e for e in site_entries if e["event"] == "sent_to_coordinator"
            and e["message_type"] == "train"]
    assert len(sent) >= 3 and sent[-1]["arrays"]["arrays"]["bytes"] > 0
    assert len(sent[-1]["arrays"]["arrays"]["sha256"]) == 64
    # registry: best + final registered; download verifies; altered bytes fail verification
    listed = run_cli(["model", "list"], fed.root)
    assert "hd-fedadam" in listed.stdout and "final" in listed.stdout
    out = fed.root / "downloaded"
    got = run_cli(["model", "download", "hd-fedadam", "--version", "latest", "-o", str(out),
                   "--key", str(fed.state / "coordinator.pub"), "--audit-log",
                   str(fed.root / "downloads.jsonl")], fed.root)
    assert got.returncode == 0, got.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert card["kind"] == "final" and {s["site"] for s in card["sites"]} == {
        "hospital-a", "hospital-b"}
    assert run_cli(["model", "verify", str(out)], fed.root).returncode == 0
    weights = bytearray((out / "model.safetensors").read_bytes())
    weights[-2] ^= 0x01
    (out / "model.safetensors").write_bytes(bytes(weights))
    bad = run_cli(["model", "verify", str(out)], fed.root)
    assert bad.returncode == 2
    assert "SHA-256 does not match" in bad.stderr and "Traceback" not in bad.stderr


def test_node_with_unregistered_key_is_refused(fed):
    intruder = fed.start_client("hospital-a", "keys-intruder", "intruder", "--rejoin-wait", "3")
    try:
        intruder.wait(timeout=180)
    finally:
        fed.procs.stop("intruder")
    assert intruder.returncode == 2
    assert "not registered" in fed.procs.log("intruder")


def test_supernode_killed_in_round_two_run_completes_and_node_rejoins(fed):
    before = fed.runs()
    run = fed.procs.start("run-dropout", fed.run_args(
        "--set", "rounds=7", "--set", "name=hd-dropout", "--round-timeout", "6"))
    try:
        run_dir = wait_for(lambda: [fed.state / "runs" / r for r in fed.runs() - before], 120,
                           "the run folder")[0]
        wait_for(lambda: read_json(run_dir / "progress.json", {}).get("history"), 240,
                 "round 1")
        fed.procs.crash("client-b")  # mid-federation: round 2 has started or is about to
        fed.start_client("hospital-b", "keys-b", "client-b")  # the hospital comes back
        run.wait(timeout=420)
    finally:
        fed.procs.stop("run-dropout")
    assert run.returncode == 0, fed.procs.log("run-dropout")[-2000:]
    sites = [h["sites_trained"] for h in _history(run_dir)]
    assert len(sites) == 7
    first_missing = sites.index(1)  # a round went on with one site
    assert first_missing >= 1 and 2 in sites[first_missing:]  # ... and the node rejoined
    events = [json.loads(line)["event"] for line in
              (fed.state / "audit.jsonl").read_text().splitlines()]
    assert "sites_timed_out" in events


def test_coordinator_killed_after_round_two_resume_runs_the_rest_once(fed):
    from mlflow.tracking import MlflowClient

    before = fed.runs()
    fed.procs.start("run-crash", fed.run_args("--set", "rounds=5", "--set", "name=hd-resume",
                                              "--round-timeout", "60"))
    run_dir = wait_for(lambda: [fed.state / "runs" / r for r in fed.runs() - before], 120,
                       "the run folder")[0]
    wait_for(lambda: len(read_json(run_dir / "progress.json", {}).get("history", [])) >= 2,
             300, "round 2", interval=0.05)
    fed.procs.crash("server")  # the coordinator machine goes down: SuperLink + ServerApp
    fed.procs.crash("run-crash")
    from medfed.deploy.resume import load_round

    saved = load_round(run_dir).round
    assert 2 <= saved < 5
    fed.start_server("server-restarted")
    resumed = run_cli(["run", "--resume", run_dir.name, "--state", str(fed.state),
                       "--round-timeout", "60"], fed.root)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [h["round"] for h in _history(run_dir)] == [1, 2, 3, 4, 5]
    entries = [json.loads(line) for line in (fed.state / "audit.jsonl").read_text().splitlines()]
    mine = [e for e in entries if e.get("run_id") == run_dir.name]
    finished = [e["round"] for e in mine if e["event"] == "round_finished"]
    assert finished == [1, 2, 3, 4, 5]  # no round twice, none skipped
    assert [e["from_round"] for e in mine if e["event"] == "run_resumed"] == [saved + 1]
    mlflow_run = read_json(run_dir / "mlflow.json")["mlflow_run_id"]
    steps = [m.step for m in MlflowClient().get_metric_history(mlflow_run, "train_loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5]  # the same MLflow record, continued
