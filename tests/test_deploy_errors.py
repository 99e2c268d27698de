"""Bad input for a real federation: one clear line, exit 2, nothing half-written.

Certificates (expired, mismatched, from another CA), wrong key files, an unreachable
SuperLink, a site folder that fails its check, a tampered audit log; plus the checkpoint
round trip of FedAdam's moments that resume relies on.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.deploy_procs import free_port, run_cli, write_heart_site

pytestmark = pytest.mark.deploy


def one_line_error(done, *needles: str) -> str:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    from medfed.deploy.certs import create_node_keys, init_certs

    root = tmp_path_factory.mktemp("material")
    init_certs(root / "good", ["localhost", "127.0.0.1"])
    init_certs(root / "other", ["localhost", "127.0.0.1"])
    init_certs(root / "expired", ["localhost"], days=1,
               not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=10))
    create_node_keys(root / "keys")
    write_heart_site(root / "site", 120, seed=3)
    return root


def test_expired_certificate_refused_and_state_untouched(material, tmp_path):
    state = tmp_path / "state"
    done = run_cli(["server", "start", "--certs", str(material / "expired"), "--state",
                    str(state), "--address", f"127.0.0.1:{free_port()}"], tmp_path)
    one_line_error(done, "expired", "ca.pem")
    assert not state.exists()


def test_mismatched_key_and_foreign_ca_refused(material, tmp_path):
    mixed = tmp_path / "mixed"
    shutil.copytree(material / "good", mixed)
    shutil.copy(material / "other" / "server.key", mixed / "server.key")
    done = run_cli(["server", "start", "--certs", str(mixed), "--state", str(tmp_path / "s")],
                   tmp_path)
    one_line_error(done, "does not match", "server.key")
    shutil.copy(material / "other" / "server.pem", mixed / "server.pem")
    done = run_cli(["server", "start", "--certs", str(mixed), "--state", str(tmp_path / "s")],
                   tmp_path)
    one_line_error(done, "not signed by")
    assert not (tmp_path / "s").exists()


def _tls_server(certs: Path) -> tuple[int, threading.Thread]:
    """A TLS listener with ``certs``' server certificate: enough for the client's check."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certs / "server.pem", certs / "server.key")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]

    def serve() -> None:
        with sock:
            conn, _ = sock.accept()
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return port, thread


def test_client_rejects_superlink_certificate_from_another_ca(material, tmp_path):
    port, thread = _tls_server(material / "other")
    done = run_cli(["client", "start", "--superlink", f"localhost:{port}", "--root-cert",
                    str(material / "good" / "ca.pem"), "--key",
                    str(material / "keys" / "node.key"), "--data", str(material / "site")],
                   tmp_path)
    one_line_error(done, "certificate failed verification")
    thread.join(timeout=10)


def test_wrong_key_files_and_unreachable_superlink(material, tmp_path):
    base = ["client", "start", "--root-cert", str(material / "good" / "ca.pem"), "--data",
            str(material / "site")]
    port = free_port()
    done = run_cli([*base, "--superlink", f"127.0.0.1:{port}", "--key",
                    str(material / "keys" / "node.pub")], tmp_path)
    one_line_error(done, "not a node private key", "node.pub")
    done = run_cli([*base, "--superlink", f"127.0.0.1:{port}", "--key",
                    str(material / "good" / "server.key")], tmp_path)
    one_line_error(done, "not a node private key")
    done = run_cli([*base, "--superlink", f"127.0.0.1:{port}", "--key",
                    str(material / "keys" / "node.key")], tmp_path)
    one_line_error(done, "unreachable")
    done = run_cli(["nodes", "add", str(material / "keys" / "node.key"), "--name", "x",
                    "--state", str(tmp_path / "state")], tmp_path)
    one_line_error(done, "not an OpenSSH public key")


def test_run_against_unreachable_superlink_writes_no_run(material, tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (state / "server.json").write_text(json.dumps({
        "address": f"127.0.0.1:{free_port()}", "certs": str(material / "good"),
        "insecure": False}))
    config = tmp_path / "hd.yaml"
    config.write_text("dataset: {name: heart-disease}\npartition: {sites: 2}\nrounds: 2\n")
    done = run_cli(["run", str(config), "--state", str(state), "--no-track"], tmp_path)
    one_line_error(done, "unreachable")
    assert not (state / "runs").exists()
    done = run_cli(["run", "--resume", "nope", "--state", str(state)], tmp_path)
    one_line_error(done, "no such run")


def test_site_folder_that_fails_its_check(material, tmp_path):
    two = tmp_path / "two-files"
    write_heart_site(two, 60, seed=4)
    shutil.copy(two / "data.csv", two / "copy.csv")
    args = ["client", "start", "--superlink", "127.0.0.1:1", "--root-cert",
            str(material / "good" / "ca.pem"), "--key", str(material / "keys" / "node.key")]
    one_line_error(run_cli([*args, "--data", str(two)], tmp_path), "exactly one table file")
    single = tmp_path / "one-class"
    write_heart_site(single, 60, seed=5)
    lines = (single / "data.csv").read_text().splitlines()
    rows = [",".join([*line.split(",")[:-1], "0"]) for line in lines[1:]]
    (single / "data.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    done = run_cli([*args, "--data", str(single)], tmp_path)  # skewed sites are data:
    assert done.returncode == 2 and "Traceback" not in done.stderr  # it passes the site check
    assert "warning:" in done.stderr and "single class" in done.stderr  # (with a warning)
    assert "127.0.0.1:1" in done.stderr.splitlines()[-1]  # and stops at the unreachable link


def test_audit_log_tampering_is_detected(tmp_path):
    from medfed.deploy import audit

    log = tmp_path / "audit.jsonl"
    for rnd in range(1, 4):
        audit.append(log, "round_finished", round=rnd)
    assert run_cli(["audit", "verify", str(log)], tmp_path).returncode == 0
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"round": 2', '"round": 5')
    log.write_text("\n".join(lines) + "\n")
    one_line_error(run_cli(["audit", "verify", str(log)], tmp_path), "line 2", "edited")
    log.write_text("\n".join([lines[0], lines[2]]) + "\n")
    one_line_error(run_cli(["audit", "verify", str(log)], tmp_path), "chain broken")


def test_round_checkpoint_keeps_fedadam_moments(tmp_path):
    import torch
    from flwr.app import ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAdam

    from medfed.deploy.resume import load_round, restore_strategy, save_round
    from medfed.federation.rounds import FederationSummary

    strategy = FedAdam()
    strategy.m_t = {"weight": np.full((1, 3), 0.5, np.float32)}
    strategy.v_t = {"weight": np.full((1, 3), 0.25, np.float32)}
    arrays = ArrayRecord({"weight": torch.arange(3.0).reshape(1, 3), "bias": torch.ones(1)})
    summary = FederationSummary("binary", (3,), 2, 50, ConfigRecord({"feature-mean": [1.0]}))
    save_round(tmp_path, 4, arrays, strategy, summary, [{"round": r} for r in range(1, 5)])
    point = load_round(tmp_path)
    fresh = FedAdam()
    restore_strategy(fresh, point.strategy_state)
    assert point.round == 4 and list(point.arrays.keys()) == ["weight", "bias"]
    np.testing.assert_array_equal(fresh.m_t["weight"], strategy.m_t["weight"])
    np.testing.assert_array_equal(fresh.v_t["weight"], strategy.v_t["weight"])
    assert point.summary.scaling["feature-mean"] == [1.0]


def test_model_not_in_registry(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # sqlite:///mlflow.db in tmp_path
    done = run_cli(["model", "download", "no-such-model", "-o", str(tmp_path / "out")], tmp_path)
    one_line_error(done, "no-such-model", "not in the registry")
    assert not (tmp_path / "out").exists()


def test_unreachable_registry_is_not_a_missing_model(tmp_path, monkeypatch):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    done = run_cli(["model", "download", "hd-fedadam", "-o", str(tmp_path / "out")], tmp_path)
    line = one_line_error(done, f"cannot reach the model registry at {uri}", "MLFLOW_TRACKING_URI")
    assert "not in the registry" not in line
    assert not (tmp_path / "out").exists()
    one_line_error(run_cli(["model", "list"], tmp_path),
                   f"cannot reach the model registry at {uri}", "MLFLOW_TRACKING_URI")


def test_deployment_app_and_warm_executor_name_modules_that_exist():
    import importlib.util
    import tomllib

    from medfed.deploy.flower import APP_PYPROJECT
    from medfed.deploy.supernode import PRELOAD

    components = tomllib.loads(APP_PYPROJECT)["tool"]["flwr"]["app"]["components"]
    assert components == {"serverapp": "medfed.deploy.server_app:app",
                          "clientapp": "medfed.deploy.client_app:app"}
    modules = [spec.split(":")[0] for spec in components.values()] + list(PRELOAD)
    assert [name for name in modules if importlib.util.find_spec(name) is None] == []


def test_warm_executor_reconnect_cap_still_applies_to_flower():
    """The executor's reconnect cap patches a Flower internal: fail loudly when it stops
    applying (a rejoined node would again wait up to Flower's 20 s before taking messages)."""
    code = (
        "import inspect\n"
        "from flwr.supercore.superexec import run_superexec as superexec\n"
        "from medfed.deploy.supernode import short_executor_retries\n"
        "assert 'make_simple_http_retry_invoker()' in inspect.getsource(superexec.run_superexec)\n"
        "before = superexec.make_simple_http_retry_invoker().wait_gen_factory()\n"
        "assert max(next(before) for _ in range(8)) > 10\n"
        "assert short_executor_retries(0.5)\n"
        "waits = superexec.make_simple_http_retry_invoker().wait_gen_factory()\n"
        "assert max(next(waits) for _ in range(8)) <= 0.5\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
