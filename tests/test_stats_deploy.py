"""`medfed stats --superlink` on a real loopback federation: SuperLink + two SuperNodes (TLS,
node authentication), each a real process stopped by PID; the sites answer the statistics
query through the same ClientApp as training, and their audit logs record each reply."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.deploy_procs import Procs, free_port, run_cli, wait_for, write_heart_site

pytestmark = pytest.mark.deploy

CONFIG = """\
name: hd-stats
dataset: {name: heart-disease}
partition: {sites: 2}
strategy: {min_sites: 2}
stats: {min_count: 10}
"""


def test_stats_on_a_loopback_federation(tmp_path):
    root = tmp_path
    procs = Procs(root)
    port = free_port()
    state, certs = root / "state", root / "certs"
    (root / "hd.yaml").write_text(CONFIG)
    write_heart_site(root / "hospital-a", 120, seed=1)
    write_heart_site(root / "hospital-b", 90, seed=2)
    for args in (["certs", "init", str(certs), "--server-name", "coord.test"],
                 ["keys", "create", str(root / "keys-a")],
                 ["keys", "create", str(root / "keys-b")]):
        done = run_cli(args, root)
        assert done.returncode == 0, done.stderr
    try:
        procs.start("server", ["server", "start", "--certs", str(certs), "--state", str(state),
                               "--address", f"127.0.0.1:{port}"])
        wait_for(lambda: "Uvicorn running" in procs.log("server"), 120, "the SuperLink")
        for name in ("a", "b"):
            done = run_cli(["nodes", "add", str(root / f"keys-{name}" / "node.pub"), "--name",
                            f"hospital-{name}", "--state", str(state)], root)
            assert done.returncode == 0, done.stderr + done.stdout
            procs.start(f"client-{name}", [
                "client", "start", "--superlink", f"localhost:{port}", "--root-cert",
                str(certs / "ca.pem"), "--key", str(root / f"keys-{name}" / "node.key"),
                "--data", str(root / f"hospital-{name}"), "--runtime-port", str(free_port()),
                "--no-policy"])  # site policies: tests/test_site_policy.py
        out = root / "stats"
        done = run_cli(["stats", str(root / "hd.yaml"), "--superlink", f"localhost:{port}",
                        "--state", str(state), "--out", str(out), "--timeout", "120"], root,
                       timeout=400)
        assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-1000:]
    finally:
        procs.stop_all()
    result = json.loads((out / "stats.json").read_text())
    assert set(result["sites"]) == {"hospital-a", "hospital-b"}
    frames = [pd.read_csv(root / f"hospital-{n}" / "data.csv", na_values=["?"]) for n in "ab"]
    age = pd.concat(frames)["age"].dropna()
    pooled = result["pooled"]["variables"]["age"]
    assert pooled["n"] == len(age)
    assert pooled["mean"] == pytest.approx(age.mean(), rel=1e-12)
    assert pooled["std"] == pytest.approx(age.std(ddof=1), rel=1e-9)
    assert (out / "stats.md").is_file() and (out / "histograms.png").is_file()
    entries = [json.loads(line) for line in
               (root / "keys-a" / "audit.jsonl").read_text().splitlines()]
    sent = [e for e in entries if e["event"] == "sent_to_coordinator"
            and e["message_type"] == "query.stats"]
    assert len(sent) == 2  # pass 1 (ranges) and pass 2 (summary)
    runs = list((state / "runs").iterdir())
    assert len(runs) == 1 and json.loads((runs[0] / "status.json").read_text())[
        "status"] == "finished"
    assert not np.isnan(pooled["quantiles"]["q50"])
