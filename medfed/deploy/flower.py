"""Wrappers around Flower's Deployment Engine: SuperLink, SuperNodes and ``flwr`` runs.

Every Flower process gets ``medfed.federation.app.flower_env`` (telemetry and runtime
dependency installation off). TLS is on unless ``insecure`` is asked for explicitly. The
coordinator's state folder holds everything Flower and MedFed keep between commands:

    state/server.json        address, certificate folder (written by `server start`)
    state/superlink.db       Flower's own persistent state (--database)
    state/flwr-home/         FLWR_HOME: config.toml with the SuperLink connection
    state/app/pyproject.toml the Flower app (medfed.deploy's ServerApp/ClientApp; no files)
    state/nodes.json         registered hospitals: name, node id, key fingerprint
    state/audit.jsonl        the coordinator's hash-chained audit log
    state/runs/RUN_ID/       one run: config, checkpoints, progress, models, status
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

from medfed.config import NODE_DATA_PATH, RUN_EXPERIMENT, RUN_ID
from medfed.errors import MedFedError
from medfed.federation.app import app_pyproject, flower_env
from medfed.io import atomic_write_json, atomic_write_text

DEFAULT_PORT = 9093
SERVER_APP = "medfed.deploy.server_app:app"
CLIENT_APP = "medfed.deploy.client_app:app"

# run config keys of a deployed run besides RUN_EXPERIMENT (written by `medfed run`, read by
# the coordinator), and the node config key of a hospital's audit log (`medfed client start`)
RUN_STATE_DIR = "state-dir"  # the run's folder under the coordinator's state folder
RUN_DEPLOY_ID = "run-id"  # that folder's name (not medfed.config.RUN_ID)
RUN_RESUME = "resume"
RUN_ROUND_TIMEOUT = "round-timeout"
RUN_WAIT_TIMEOUT = "wait-timeout"
RUN_POLL_INTERVAL = "poll-interval"
RUN_JOB = "job"  # "train" (`medfed run`) or "stats" (`medfed stats --superlink`)
RUN_SIGNATURE = "experiment-signature"  # the coordinator's signature (medfed.deploy.policy)
NODE_AUDIT_LOG = "audit-log"
DEPLOY_RUN_CONFIG: dict[str, Any] = {RUN_EXPERIMENT: "", RUN_STATE_DIR: "", RUN_DEPLOY_ID: "",
                                     RUN_RESUME: False, RUN_ROUND_TIMEOUT: 600.0,
                                     RUN_WAIT_TIMEOUT: 300.0, RUN_POLL_INTERVAL: 0.1,
                                     RUN_JOB: "train", RUN_SIGNATURE: "", RUN_ID: ""}
APP_PYPROJECT = app_pyproject(DEPLOY_RUN_CONFIG, serverapp=SERVER_APP, clientapp=CLIENT_APP)


def parse_address(text: str, what: str = "--superlink") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MedFedError(f"{what} {text!r}: expected HOST:PORT, e.g. coord.example.org:"
                          f"{DEFAULT_PORT}")
    return host.strip("[]"), int(port)


def check_reachable(address: str, root_cert: Path | None, timeout: float = 5.0) -> None:
    """TLS handshake with the SuperLink: unreachable, or wrong/expired certificate -> 1 line."""
    host, port = parse_address(address)
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise MedFedError(f"{address}: SuperLink unreachable ({reason}); check the address and "
                          "that `medfed server start` runs there with this port open") from None
    if root_cert is None:
        sock.close()
        return
    context = ssl.create_default_context(cafile=str(root_cert))
    try:
        with context.wrap_socket(sock, server_hostname=host):
            pass
    except ssl.SSLCertVerificationError as exc:
        raise MedFedError(f"{address}: the SuperLink's certificate failed verification with "
                          f"{root_cert} ({exc.verify_message}); use the coordinator's current "
                          "ca.pem and a --superlink name listed in its certificate") from None
    except (ssl.SSLError, OSError) as exc:
        raise MedFedError(f"{address}: TLS handshake failed ({exc.__class__.__name__}); is "
                          "the SuperLink started with TLS (`medfed server start --certs`)?") \
            from None
    finally:
        sock.close()


# --- coordinator ----------------------------------------------------------------------------


def superlink_args(certs: Path | None, state: Path, host: str, port: int,
                   insecure: bool = False) -> list[str]:
    """``flower-superlink`` flags: TLS, node authentication, persistent state."""
    args = ["--host", host, "--port", str(port), "--database", str(state / "superlink.db"),
            "--disable-runtime-dependency-installation"]
    if insecure:
        return ["--insecure", *args]
    assert certs is not None
    return ["--ssl-ca-certfile", str(certs / "ca.pem"), "--ssl-certfile",
            str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
            "--enable-supernode-auth", *args]


def write_flwr_home(state: Path, address: str, root_cert: Path | None,
                    insecure: bool = False) -> Path:
    """FLWR_HOME/config.toml with one SuperLink connection named ``medfed``."""
    home = state / "flwr-home"
    lines = ["[superlink]", 'default = "medfed"', "", "[superlink.medfed]",
             f'address = "{address}"']
    lines.append("insecure = true" if insecure else
                 f'root-certificates = "{Path(root_cert).resolve()}"')
    atomic_write_text(home / "config.toml", "\n".join(lines) + "\n")
    return home


def write_app_dir(state: Path) -> Path:
    app = state / "app"
    atomic_write_text(app / "pyproject.toml", APP_PYPROJECT)
    return app


def flwr(args: list[str], home: Path, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the ``flwr`` CLI against ``home``'s connection; raises a one-line error on failure."""
    exe = shutil.which("flwr", path=flower_env()["PATH"]) or "flwr"
    try:
        done = subprocess.run([exe, *args], env=flower_env(home), capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MedFedError(f"`flwr {args[0]}` did not answer within {timeout:.0f} s; is the "
                          "SuperLink running (`medfed server start`)?") from None
    if done.returncode != 0:
        raise MedFedError(f"`flwr {' '.join(args[:2])}` failed: {_flwr_reason(done)}")
    return done


def _flwr_reason(done: subprocess.CompletedProcess) -> str:
    text = (done.stdout or "") + "\n" + (done.stderr or "")
    try:
        payload = json.loads(done.stdout)
        if isinstance(payload, dict) and payload.get("error-message"):
            return str(payload["error-message"]).splitlines()[0]
    except (json.JSONDecodeError, TypeError):
        pass
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else f"exit code {done.returncode}"


def _json_out(done: subprocess.CompletedProcess) -> dict[str, Any]:
    start = done.stdout.find("{")
    return json.loads(done.stdout[start:]) if start >= 0 else {}


def register_node(state: Path, public_key: Path, name: str, key_bytes: bytes) -> dict[str, Any]:
    """Authorise a hospital's public key on the SuperLink; record it in nodes.json."""
    nodes_path = state / "nodes.json"
    nodes = json.loads(nodes_path.read_text()) if nodes_path.is_file() else {}
    if name in nodes:
        raise MedFedError(f"{nodes_path}: a node named {name!r} is already registered "
                          f"(node {nodes[name]['node_id']}); choose another --name")
    home = state / "flwr-home"
    done = flwr(["supernode", "register", str(public_key), "--name", name, "--format", "json"],
                home)
    payload = _json_out(done)
    if not payload.get("success", False):
        raise MedFedError(f"{public_key}: the SuperLink refused the key: "
                          f"{payload.get('error-message', 'unknown reason')}")
    entry = {"node_id": str(payload["node-id"]),
             "key_sha256": hashlib.sha256(key_bytes.strip()).hexdigest(),
             "public_key": key_bytes.decode().strip()}
    nodes[name] = entry
    atomic_write_json(nodes_path, nodes)
    return entry


def submit_run(state: Path, run_dir: Path) -> str:
    """``flwr run`` the MedFed app with ``run_dir/run_config.toml``; the Flower run ID."""
    app = write_app_dir(state)
    done = flwr(["run", str(app), "medfed", "--run-config", str(run_dir / "run_config.toml"),
                 "--format", "json"], state / "flwr-home", timeout=300.0)
    payload = _json_out(done)
    if not payload.get("success", True) or "run-id" not in payload:
        raise MedFedError(f"`flwr run` did not start the run: "
                          f"{payload.get('error-message', done.stdout.strip()[:200])}")
    return str(payload["run-id"])


def flower_run_status(state: Path, flower_run_id: str) -> str:
    """Flower's status of a run, e.g. ``running``, ``finished:completed``, ``finished:failed``."""
    try:
        done = flwr(["list", "--run-id", flower_run_id, "--format", "json"],
                    state / "flwr-home", timeout=30.0)
    except MedFedError:
        return "unknown"
    runs = _json_out(done).get("runs") or []
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def stop_run(state: Path, flower_run_id: str) -> None:
    with contextlib.suppress(MedFedError):
        flwr(["stop", flower_run_id], state / "flwr-home", timeout=30.0)


def run_config_toml(values: dict[str, Any]) -> str:
    """A flat TOML table of run config values (strings JSON-escaped, as TOML allows)."""
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = json.dumps(str(value))
        lines.append(f'"{key}" = {text}')
    return "\n".join(lines) + "\n"


# --- hospital ---------------------------------------------------------------------------------


def supernode_args(superlink: str, root_cert: Path | None, key: Path | None, data: Path,
                   runtime_port: int, audit_log: Path, insecure: bool = False,
                   min_count: int | None = None,
                   extra_config: dict[str, str] | None = None) -> list[str]:
    """``flower-supernode`` flags: TLS to the SuperLink, node key, site data as node config
    (and the site's own small-cell floor for statistics queries, when it sets one;
    ``extra_config``: more node config strings, e.g. the site policy)."""
    from medfed.federation.stats import NODE_MIN_COUNT

    node_config = f'{NODE_DATA_PATH}="{data.resolve()}" {NODE_AUDIT_LOG}="{audit_log.resolve()}"'
    if min_count is not None:
        node_config += f" {NODE_MIN_COUNT}={int(min_count)}"
    for name, value in (extra_config or {}).items():
        node_config += f' {name}="{value}"'
    args = ["--superlink", superlink, "--isolation", "process", "--port", str(runtime_port),
            "--node-config", node_config]
    if insecure:
        return ["--insecure", *args]
    args += ["--root-certificates", str(root_cert)]
    if key is not None:
        args += ["--auth-supernode-private-key", str(key)]
    return args


def executor_command(runtime_port: int, parent_pid: int) -> list[str]:
    """The warm ClientApp executor serving the SuperNode's Runtime API on ``runtime_port``."""
    return [sys.executable, "-m", "medfed.deploy.supernode", "executor", "--runtime-api-address",
            f"127.0.0.1:{runtime_port}", "--parent-pid", str(parent_pid)]


def supernode_command(flags: list[str], parent_pid: int, session_file: Path | None = None,
                      key_sha256: str = "") -> list[str]:
    """Flower's SuperNode with ``flags`` (see ``supernode_args``), tuned by MedFed; it records
    each activation of the key ``key_sha256`` in ``session_file``."""
    session = ["--session-file", str(session_file), "--key-sha256", key_sha256] \
        if session_file is not None else []
    return [sys.executable, "-m", "medfed.deploy.supernode", "supernode", "--parent-pid",
            str(parent_pid), *session, "--", *flags]

