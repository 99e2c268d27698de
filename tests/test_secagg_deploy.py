"""Secure aggregation on a real loopback federation: SuperLink, three SuperNodes, TLS.

Every command is the `medfed` CLI in its own process (tests/deploy_procs.py); what left each
hospital is read from its own audit log, what the coordinator aggregated from the run's
history.
"""

from __future__ import annotations

import json

import pytest

from tests.deploy_procs import Procs, free_port, read_json, run_cli, wait_for, write_heart_site

pytestmark = pytest.mark.deploy

CONFIG = """\
name: hd-secagg
dataset: {name: heart-disease}
partition: {sites: 3}
model: {name: logreg}
strategy: {name: fedavg, min_sites: 3, secure: secagg+, fraction_evaluate: 1.0}
train: {lr: 0.05, batch_size: 16}
rounds: 2
seed: 7
"""
SITES = {"a": (220, 1), "b": (180, 2), "c": (160, 3)}


def test_secure_aggregation_on_loopback_federation(tmp_path):
    root, procs, port = tmp_path, Procs(tmp_path), free_port()
    state, certs = root / "state", root / "certs"
    (root / "hd.yaml").write_text(CONFIG)
    for name, (rows, seed) in SITES.items():
        write_heart_site(root / f"hospital-{name}", rows, seed=seed)
    setup = [["certs", "init", str(certs), "--server-name", "coord.test"]]
    setup += [["keys", "create", str(root / f"keys-{name}")] for name in SITES]
    for args in setup:
        done = run_cli(args, root)
        assert done.returncode == 0, done.stderr
    try:
        procs.start("server", ["server", "start", "--certs", str(certs), "--state", str(state),
                               "--address", f"127.0.0.1:{port}"])
        wait_for(lambda: "Uvicorn running" in procs.log("server"), 120, "the SuperLink")
        for name in SITES:
            done = run_cli(["nodes", "add", str(root / f"keys-{name}" / "node.pub"), "--name",
                            f"hospital-{name}", "--state", str(state)], root)
            assert done.returncode == 0, done.stderr + done.stdout
            procs.start(f"client-{name}", [
                "client", "start", "--superlink", f"localhost:{port}", "--root-cert",
                str(certs / "ca.pem"), "--key", str(root / f"keys-{name}" / "node.key"),
                "--data", str(root / f"hospital-{name}"), "--runtime-port", str(free_port()),
                "--no-policy"])
        done = run_cli(["run", str(root / "hd.yaml"), "--state", str(state), "--superlink",
                        f"localhost:{port}", "--round-timeout", "90", "--no-track"], root)
        assert done.returncode == 0, done.stderr[-2000:]
    finally:
        procs.stop_all()
    (run_dir,) = (state / "runs").iterdir()
    history = read_json(run_dir / "result.json", {})["history"]
    assert [h["secure_aggregation"]["sites"] for h in history] == [3, 3]
    assert history[-1]["federated_eval"]["auroc"] > 0.6
    for name in SITES:  # what left the hospital for training: the masked int64 vector only
        entries = [json.loads(line) for line in
                   (root / f"keys-{name}" / "audit.jsonl").read_text().splitlines()]
        sent = [e for e in entries if e["event"] == "sent_to_coordinator"
                and e["message_type"] == "train"]
        assert len(sent) == 2
        for entry in sent:
            assert set(entry["arrays"]) == {"secagg-masked"}
            (vector,) = entry["arrays"]["secagg-masked"]["arrays"]
            assert vector["dtype"] == "int64"
