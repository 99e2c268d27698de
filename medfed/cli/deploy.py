"""`medfed` commands for a real federation: certificates, coordinator, hospitals and runs
(Flower's Deployment Engine underneath). The registry's commands are in ``medfed.cli.model``,
the audit logs' in ``medfed.cli.audit``."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from medfed.config import NODE_LEDGER_DIR
from medfed.deploy.supernode import ACTIVATION_REFUSED
from medfed.errors import MedFedError

out_console = Console()
err_console = Console(stderr=True)

certs_app = typer.Typer(help="TLS certificates for the coordinator (CA + server).",
                        no_args_is_help=True)
server_app = typer.Typer(help="The coordinator's SuperLink.", no_args_is_help=True)
nodes_app = typer.Typer(help="Hospitals allowed to join (node authentication).",
                        no_args_is_help=True)
keys_app = typer.Typer(help="A hospital's node key pair.", no_args_is_help=True)
client_app = typer.Typer(help="A hospital's SuperNode.", no_args_is_help=True)

STATE_HELP = "The coordinator's state folder (Flower database, runs, checkpoints, audit log)."


def register(app: typer.Typer) -> None:
    """Attach the deployment commands (certs, server, nodes, keys, client, run) to `medfed`."""
    for sub, name in ((certs_app, "certs"), (server_app, "server"), (nodes_app, "nodes"),
                      (keys_app, "keys"), (client_app, "client")):
        app.add_typer(sub, name=name)
    app.command("run")(run)


def _quiet() -> None:
    for name in ("flwr", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


# --- certificates and keys --------------------------------------------------------------------


@certs_app.command("init")
def certs_init(
    folder: Path = typer.Argument(..., help="Empty folder for ca.pem, ca.key, server.pem, "
                                  "server.key."),
    server_name: list[str] = typer.Option(..., "--server-name", help="Host name or IP the "
                                          "hospitals dial (repeatable); localhost and "
                                          "127.0.0.1 are always added."),
    days: int = typer.Option(825, min=1, max=36500, help="Validity in days (1 or more)."),
) -> None:
    """Create the federation's CA and the coordinator's server certificate (SANs from
    --server-name). Send ca.pem to every hospital; keep the .key files secret."""
    from medfed.deploy.certs import init_certs
    from medfed.io import check_output_dir

    check_output_dir(folder, "FOLDER")
    names = list(dict.fromkeys([*server_name, "localhost", "127.0.0.1"]))
    paths = init_certs(folder, names, days=days)
    out_console.print(f"CA {paths['ca_cert']} and server certificate {paths['server_cert']} "
                      f"for {', '.join(names)} (valid {days} days). Send ca.pem to the "
                      "hospitals.", highlight=False)


@keys_app.command("create")
def keys_create(folder: Path = typer.Argument(..., help="Folder for node.key and node.pub.")
                ) -> None:
    """Create this hospital's node key pair. Send node.pub to the coordinator (who runs
    `medfed nodes add`); node.key never leaves the hospital."""
    from medfed.deploy.certs import create_node_keys
    from medfed.io import check_output_dir

    paths = create_node_keys(check_output_dir(folder, "FOLDER"))
    out_console.print(f"Node key {paths['private']} (keep it here) and public key "
                      f"{paths['public']} (send it to the coordinator).", highlight=False)


# --- coordinator ------------------------------------------------------------------------------


@server_app.command("start")
def server_start(
    certs: Path | None = typer.Option(None, help="Folder from `medfed certs init`."),
    state: Path = typer.Option(Path("state"), help=STATE_HELP),
    address: str = typer.Option("0.0.0.0:9093", help="HOST:PORT to listen on (one port "
                                "for hospitals, `medfed run` and `medfed nodes`)."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS and no node "
                                  "authentication. Only for a trial on one machine."),
) -> None:
    """Start the coordinator's SuperLink: TLS, node authentication, persistent state.
    Runs in the foreground until stopped (Ctrl-C)."""
    from medfed.deploy import flower
    from medfed.federation.app import apply_flower_env

    host, port = flower.parse_address(address, "--address")
    _check_server_certs(certs, insecure)
    _check_port_free(host, port)
    local = f"127.0.0.1:{port}" if host in ("0.0.0.0", "::") else f"{host}:{port}"
    _init_state(state, certs, address, local, insecure)
    mode = "INSECURE" if insecure else "TLS, node authentication on"
    out_console.print(f"SuperLink on {address} ({mode}); state in {state}", highlight=False)
    apply_flower_env()
    sys.argv = ["flower-superlink", *flower.superlink_args(certs, state, host, port, insecure)]
    from flwr.superlink.cli import flower_superlink

    from medfed.deploy.join_watch import watch_refused_joins

    watch_refused_joins(state)  # refused SuperNodes -> `join_refused` in the audit log

    flower_superlink()


def _check_server_certs(certs: Path | None, insecure: bool) -> None:
    from medfed.deploy.certs import check_server_certs

    if insecure:
        err_console.print("[yellow]warning:[/yellow] --insecure: traffic is NOT encrypted and "
                          "ANY node may join; never use this with patient data")
    elif certs is None:
        raise MedFedError("no certificates", where="server start --certs",
                          fix="give --certs (the folder from `medfed certs init`), or "
                          "--insecure for a local trial")
    else:
        check_server_certs(certs)


def _init_state(state: Path, certs: Path | None, address: str, local: str,
                insecure: bool) -> None:
    """server.json, FLWR_HOME, the signing key and the audit entry of a SuperLink listening
    on ``address`` (``local``: the address this machine's `medfed` commands dial)."""
    from medfed.deploy import audit, flower
    from medfed.deploy.signing import ensure_signing_key
    from medfed.io import atomic_write_json

    state.mkdir(parents=True, exist_ok=True)
    atomic_write_json(state / "server.json", {
        "address": local, "certs": str(certs.resolve()) if certs else None,
        "insecure": insecure, "pid": os.getpid()})
    flower.write_flwr_home(state, local, certs / "ca.pem" if certs else None, insecure)
    ensure_signing_key(state)
    audit.append(state / "audit.jsonl", "server_started", address=address, tls=not insecure,
                 node_auth=not insecure)


def _check_port_free(host: str, port: int) -> None:
    import socket

    with socket.socket() as sock:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            raise MedFedError(f"cannot listen ({exc.strerror})", where=f"--address "
                              f"{host}:{port}", fix="is a SuperLink already running? Choose "
                              "another --address port") from None


@nodes_app.command("add")
def nodes_add(
    public_key: Path = typer.Argument(..., help="The hospital's node.pub."),
    name: str = typer.Option(..., help="A name for the hospital, e.g. hospital-a."),
    state: Path = typer.Option(Path("state"), help=STATE_HELP),
) -> None:
    """Authorise a hospital's public key: only registered keys may join the federation."""
    from medfed.deploy import audit, flower
    from medfed.deploy.certs import check_node_public_key
    from medfed.deploy.state import read_nodes, read_server

    key_bytes = check_node_public_key(public_key)
    read_server(state)
    read_nodes(state)  # a damaged registry is refused before the SuperLink is asked
    entry = flower.register_node(state, public_key, name, key_bytes)
    audit.append(state / "audit.jsonl", "node_registered", name=name, node_id=entry["node_id"],
                 key_sha256=entry["key_sha256"])
    out_console.print(f"{name}: registered as node {entry['node_id']}", highlight=False)


@nodes_app.command("list")
def nodes_list(state: Path = typer.Option(Path("state"), help=STATE_HELP)) -> None:
    """Registered hospitals (name, node id, key fingerprint)."""
    from medfed.deploy.state import read_nodes

    nodes = read_nodes(state)
    table = Table(title=f"Registered nodes ({state / 'nodes.json'})")
    for column in ("name", "node id", "key sha256"):
        table.add_column(column)
    for name, entry in nodes.items():
        table.add_row(name, entry.node_id, entry.key_sha256[:16])
    out_console.print(table)


# --- runs -------------------------------------------------------------------------------------


def run(
    config: Path | None = typer.Argument(None, help="Experiment YAML (omit with --resume)."),
    superlink: str | None = typer.Option(None, help="SuperLink HOST:PORT (default: the "
                                         "address in STATE/server.json)."),
    state: Path = typer.Option(Path("state"), help=STATE_HELP),
    certs: Path | None = typer.Option(None, help="Certificate folder with ca.pem (default: "
                                      "the one `server start` used)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key (repeatable)."),
    resume: str | None = typer.Option(None, "--resume", help="RUN_ID to continue after its "
                                      "last completed round."),
    round_timeout: float = typer.Option(600.0, help="Seconds to wait for the sites' replies "
                                        "in a round; late sites are left out of it."),
    wait_timeout: float = typer.Option(300.0, help="Seconds to wait for partition.sites "
                                       "hospitals to connect before starting."),
    track: bool = typer.Option(True, help="Log to MLflow and register the final and best "
                               "models (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)."),
) -> None:
    """Launch (or --resume) a federated run on the SuperLink; live progress per round.
    Ctrl-C stops the run; its last completed round stays resumable."""
    from medfed.deploy import flower
    from medfed.deploy.state import read_server

    _quiet()
    server = read_server(state).model_dump()
    insecure = bool(server.get("insecure"))
    address = superlink or server["address"]
    root = _root_cert(server, certs)
    cfg, run_dir, resuming = _prepare_run(config, set_, resume, state)
    flower.check_reachable(address, root)
    flower.write_flwr_home(state, address, root, insecure)
    _write_run(run_dir, cfg, resuming, round_timeout, wait_timeout)
    client, mlflow_run = _open_tracking(run_dir, cfg) if track else (None, None)
    flower_run = flower.submit_run(state, run_dir)
    _remember(run_dir, flower_run)
    err_console.print(f"run {run_dir.name} (Flower run {flower_run})"
                      + (f", resuming after round {resuming}" if resuming else ""),
                      highlight=False)
    # Ctrl-C stops the run even when it was started with SIGINT ignored (a script's
    # background job inherits SIG_IGN, and Python then never raises KeyboardInterrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        history = _watch(state, run_dir, flower_run, cfg.rounds, client, mlflow_run)
    except KeyboardInterrupt:
        from medfed.deploy.state import mark_interrupted

        mark_interrupted(run_dir)  # before the stop: the ServerApp then keeps it
        flower.stop_run(state, flower_run)
        err_console.print(f"stopped; continue with `medfed run --resume {run_dir.name} "
                          f"--state {state}`", highlight=False)
        raise typer.Exit(130) from None
    if client is not None:
        _register_models(run_dir, cfg, state, client, mlflow_run)
    last = history[-1] if history else {}
    shown = " ".join(f"{k} {v:.3f}" for k, v in (last.get("federated_eval") or {}).items()
                     if k in ("auroc", "accuracy"))
    out_console.print(f"run {run_dir.name} finished: {len(history)} rounds; {shown}",
                      highlight=False)


def _root_cert(server: dict, certs: Path | None) -> Path | None:
    """The CA certificate `medfed run` checks the SuperLink with (None: --insecure server)."""
    if server.get("insecure"):
        return None
    root = (certs or Path(server["certs"])) / "ca.pem"
    from medfed.deploy.certs import check_root_cert

    check_root_cert(root)
    return root


def _register_models(run_dir: Path, cfg, state: Path, client, mlflow_run: str) -> None:
    from medfed.deploy.registry import register_run

    for entry in register_run(run_dir, cfg, state, client, mlflow_run):
        out_console.print(f"registered {entry['name']} version {entry['version']} "
                          f"({entry['kind']})", highlight=False)
    client.set_terminated(mlflow_run, status="FINISHED")


def _prepare_run(config: Path | None, overrides: list[str], resume: str | None,
                 state: Path):
    """(config, run folder, last completed round or 0); nothing is written here."""
    from medfed.config import config_from_json, load_config

    if resume:
        run_dir = state / "runs" / resume
        if not (run_dir / "config.json").is_file():
            raise MedFedError(f"no such run {resume!r}", where=str(run_dir),
                              fix=f"pick a run folder listed in {state / 'runs'}")
        from medfed.deploy.resume import load_round
        from medfed.deploy.state import read_json_file, read_status

        status = read_status(run_dir)
        if status is not None and status.status == "finished":
            raise MedFedError("run already finished; nothing to resume",
                              where=str(run_dir / "status.json"),
                              fix="start a new run with `medfed run CONFIG`")
        cfg_path = run_dir / "config.json"
        cfg = config_from_json(json.dumps(read_json_file(
            cfg_path, "run config", "restore config.json from a backup or start a new run")),
            str(cfg_path))
        point = load_round(run_dir)
        if point.round >= cfg.rounds:
            raise MedFedError(f"all {cfg.rounds} rounds are done; nothing to resume",
                              where=str(run_dir / "round.safetensors"),
                              fix="start a new run with `medfed run CONFIG`")
        return cfg, run_dir, point.round
    if config is None:
        raise MedFedError("no experiment config", where="medfed run",
                          fix="give an experiment CONFIG, or --resume RUN_ID")
    cfg = load_config(config, overrides)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_id = f"{cfg.name or config.stem}-{stamp}"
    return cfg, state / "runs" / run_id, 0


def _write_run(run_dir: Path, cfg, resuming: int, round_timeout: float,
               wait_timeout: float) -> None:
    from medfed.config import RUN_EXPERIMENT, RUN_ID
    from medfed.deploy import flower
    from medfed.deploy.policy import sign_experiment
    from medfed.deploy.signing import ensure_signing_key
    from medfed.io import atomic_write_text

    atomic_write_text(run_dir / "config.json", cfg.to_json())
    signature = sign_experiment(cfg.to_json(), ensure_signing_key(run_dir.parent.parent))
    atomic_write_text(run_dir / "run_config.toml", flower.run_config_toml({
        flower.RUN_SIGNATURE: signature,
        RUN_EXPERIMENT: cfg.to_json(), flower.RUN_STATE_DIR: str(run_dir.resolve()),
        flower.RUN_DEPLOY_ID: run_dir.name, RUN_ID: run_dir.name,  # sites key ledgers/audit
        flower.RUN_RESUME: bool(resuming),
        flower.RUN_ROUND_TIMEOUT: round_timeout, flower.RUN_WAIT_TIMEOUT: wait_timeout}))


def _open_tracking(run_dir: Path, cfg):
    from medfed.deploy.registry import open_tracking

    return open_tracking(run_dir, cfg)


def _remember(run_dir: Path, flower_run: str) -> None:
    from medfed.io import atomic_write_json

    path = run_dir / "flower_runs.json"
    runs = _read_json(path, [])
    atomic_write_json(path, [*runs, flower_run])


def _watch(state: Path, run_dir: Path, flower_run: str, rounds: int, client,
           mlflow_run: str | None) -> list[dict]:
    """Follow progress.json/status.json until the run ends; log rounds to MLflow."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    history: list[dict] = []
    check_flower = _FlowerCheck(state, run_dir.name, flower_run)
    if not (out_console.is_terminal and err_console.is_terminal):  # a log file, nohup
        return _watch_plain(run_dir, rounds, client, mlflow_run, check_flower)
    columns = [TextColumn("[bold]round"), MofNCompleteColumn(), BarColumn(),
               TextColumn("{task.description}")]
    with Progress(*columns, console=err_console, transient=False) as progress:
        bar = progress.add_task("waiting for sites", total=rounds)
        shown: set[str] = set()
        while True:
            _show_refusals(progress.console, run_dir, shown)
            history = _read_json(run_dir / "progress.json", {}).get("history", history)
            if history:
                _show_round(progress, bar, history[-1])
                if client is not None:
                    from medfed.deploy.registry import log_new_rounds

                    log_new_rounds(client, mlflow_run, run_dir, history)
            final = _ended(run_dir, history, check_flower,
                           lambda: _show_refusals(progress.console, run_dir, shown))
            if final is not None:
                return final
            time.sleep(0.3)


def _ended(run_dir: Path, history: list[dict], check_flower, show) -> list[dict] | None:
    """The final history, None while the run goes on, or the error that ended it: the
    coordinator's own (status.json) before Flower's, which may be seen first when a status
    check is slow. ``show`` (new refusals) runs either way."""
    try:
        final = _final_history(run_dir, history)
        if final is None:
            try:
                check_flower()
            except MedFedError:
                final = _final_history(run_dir, history)
                if final is None:
                    raise
        return final
    finally:
        show()


def _show_refusals(console, run_dir: Path, shown: set[str]) -> None:
    """Print each new ``site NAME refused: REASON`` (a site's policy) the coordinator logged."""
    from medfed.deploy.policy import REFUSALS_FILE

    for refusal in _read_json(run_dir / REFUSALS_FILE, []):
        line = str(refusal.get("line", "")) if isinstance(refusal, dict) else ""
        if line and line not in shown:
            shown.add(line)
            console.print(line, style="yellow", highlight=False, markup=False, soft_wrap=True)


def _watch_plain(run_dir: Path, rounds: int, client, mlflow_run: str | None,
                 check_flower) -> list[dict]:
    """``_watch`` without a terminal: one line per completed round on stdout."""
    from medfed.deploy.progress import round_line

    history: list[dict] = []
    shown, start = 0, time.monotonic()
    refusals: set[str] = set()
    while True:
        _show_refusals(err_console, run_dir, refusals)
        history = _read_json(run_dir / "progress.json", {}).get("history", history)
        for record in history[shown:]:
            out_console.print(round_line(record, rounds, time.monotonic() - start),
                              highlight=False, soft_wrap=True)
        shown = max(shown, len(history))
        if history and client is not None:
            from medfed.deploy.registry import log_new_rounds

            log_new_rounds(client, mlflow_run, run_dir, history)
        final = _ended(run_dir, history, check_flower,
                       lambda: _show_refusals(err_console, run_dir, refusals))
        if final is not None:
            return final
        time.sleep(0.3)


def _show_round(progress, bar, last: dict) -> None:
    auroc = (last.get("federated_eval") or {}).get("auroc")
    progress.update(bar, completed=last["round"], description=(
        f"sites {last.get('sites_trained')}"
        + (f" auroc {auroc:.3f}" if auroc is not None else "")))


def _final_history(run_dir: Path, history: list[dict]) -> list[dict] | None:
    """The finished run's history (``history`` if result.json has none); None while it runs."""
    status = _read_json(run_dir / "status.json", {})
    if status.get("status") == "finished" and status.get("run_id") == run_dir.name \
            and (run_dir / "result.json").is_file():
        return _read_json(run_dir / "result.json", {}).get("history", history)
    if status.get("status") == "failed":
        raise MedFedError(f"run failed: {status.get('error')}",
                          where=str(run_dir / "status.json"),
                          fix="fix the cause, then `medfed run --resume "
                          f"{run_dir.name}`")
    return None


class _FlowerCheck:
    """Every 5 s, Flower's status of the run: ends the wait when the SuperLink stopped
    answering (6 checks in a row) or Flower finished the run without completing it."""

    def __init__(self, state: Path, run_id: str, flower_run: str) -> None:
        self.state, self.run_id, self.flower_run = state, run_id, flower_run
        self.last_check, self.unknown = time.monotonic(), 0

    def __call__(self) -> None:
        from medfed.deploy import flower

        if time.monotonic() - self.last_check <= 5:
            return
        self.last_check = time.monotonic()
        status = flower.flower_run_status(self.state, self.flower_run)
        self.unknown = self.unknown + 1 if status == "unknown" else 0
        if self.unknown >= 6:
            raise MedFedError("the SuperLink stopped answering", where=f"run {self.run_id}",
                              fix=f"restart `medfed server start`, then `medfed run --resume "
                              f"{self.run_id}`")
        if status.startswith("finished") and not status.endswith("completed"):
            raise MedFedError(f"Flower reports {status}", where=f"run {self.run_id}",
                              fix=f"see `flwr log {self.flower_run}`; resume with `medfed run "
                              f"--resume {self.run_id}`")


def _read_json(path: Path, default):
    """A file the coordinator is rewriting (atomically) while we poll: ``default`` when it is
    missing, unreadable or of another shape than ``default`` (the next poll reads it again)."""
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return default
    return value if isinstance(value, type(default)) else default


# --- hospital ---------------------------------------------------------------------------------


@client_app.command("start")
def client_start(
    superlink: str = typer.Option(..., help="The coordinator's HOST:PORT."),
    data: Path = typer.Option(..., help="This hospital's site folder (one table file)."),
    root_cert: Path | None = typer.Option(None, help="The coordinator's ca.pem."),
    key: Path | None = typer.Option(None, help="node.key from `medfed keys create`."),
    dataset: str = typer.Option("heart-disease", help="Format of the site table: "
                                "heart-disease (UCI processed format) or csv."),
    label_column: str = typer.Option("label", help="For --dataset csv: the label column (as "
                                     "dataset.options.label in the coordinator's config)."),
    audit_log: Path | None = typer.Option(None, help="Site audit log (default: "
                                          "audit.jsonl next to the node key)."),
    ledger_dir: Path | None = typer.Option(None, help="This hospital's privacy ledgers (and "
                                           "its personal weights under personal/) (default: "
                                           "privacy/ next to the node key). The site's own: "
                                           "an experiment cannot move it."),
    runtime_port: int = typer.Option(9094, help="Local port of the SuperNode's Runtime API "
                                     "(loopback only; change it to run two nodes on one "
                                     "machine)."),
    insecure: bool = typer.Option(False, "--insecure", help="No TLS, no node key. Only for a "
                                  "trial against an --insecure SuperLink."),
    min_count: int | None = typer.Option(None, min=1, help="This hospital's small-cell floor "
                                         "for `medfed stats`: any count below it leaves as "
                                         "'<k' (default 10; a query can raise it, never "
                                         "lower it)."),
    rejoin_wait: float = typer.Option(30.0, help="Seconds to keep retrying when the SuperLink "
                                      "refuses to activate this node (right after a crash its "
                                      "old session is still open for up to 20 s)."),
    policy: Path | None = typer.Option(None, help="This hospital's site-policy.yaml (default: "
                                       "site-policy.yaml in the site state folder, the folder "
                                       "of --key). Without one the node does not start: "
                                       "nothing runs on patient data that the hospital has "
                                       "not agreed to."),
    no_policy: bool = typer.Option(False, "--no-policy", help="Run every experiment the "
                                   "coordinator sends, signed or not (a trial without patient "
                                   "data; recorded in the audit log)."),
) -> None:
    """Join the federation: checks the site folder, the CA, the key, the site policy and
    the connection, then runs this hospital's SuperNode (foreground; Ctrl-C leaves).

    The policy is checked on every message before any data is read: the experiment must be
    signed by a trusted coordinator key and stay within the policy, else the site refuses
    it and the coordinator shows why. A site-policy.yaml:

    ```
    trusted_keys: [coordinator.pub]   # the coordinator's signing key (PEM)
    datasets: [heart-disease]         # leave a list out to allow any
    tasks: [binary]
    models: [logreg, mlp]
    privacy: {modes: [dp-sgd], max_epsilon_per_run: 1.0, max_epsilon_total: 3.0,
              min_count: 10}
    max_rounds: 100
    max_local_epochs: 5
    require_approval: true            # new experiments wait for `medfed client approve`
    ```
    """
    from medfed.datasets.site_folder import check_site_folder
    from medfed.deploy import audit, flower

    flower.parse_address(superlink)
    summary = check_site_folder(data, dataset,
                                {"label": label_column} if dataset == "csv" else None)
    _check_node_credentials(root_cert, key, insecure)
    flower.check_reachable(superlink, None if insecure else root_cert)
    log_path = audit_log or ((key.parent if key else data) / "audit.jsonl")
    site_config, min_count = _site_policy(policy, no_policy, key.parent if key else
                                          log_path.parent, min_count)
    site_state = key.parent if key else log_path.parent
    site_config[NODE_LEDGER_DIR] = str((ledger_dir or site_state / "privacy").resolve())
    audit.append(log_path, "node_started", superlink=superlink, site=data.name,
                 n_train=summary["n_train"], n_test=summary["n_test"],
                 policy=site_config["site-policy"])
    out_console.print(f"site {data}: {summary['n_train']} training and {summary['n_test']} "
                      f"test rows; joining {superlink}", highlight=False)
    code = _supervise_node(flower.supernode_args(superlink, root_cert, key, data, runtime_port,
                                                 log_path, insecure, min_count, site_config),
                           runtime_port,
                           rejoin_wait, key, log_path.parent / "node-session.json")
    audit.append(log_path, "node_stopped", exit_code=code)
    _check_node_exit(code, superlink, key)


def _site_policy(policy: Path | None, no_policy: bool, state: Path,
                 min_count: int | None) -> tuple[dict[str, str], int | None]:
    """The policy's node config (checked now, re-read on every message) and the site's
    small-cell floor (the larger of --min-count and the policy's ``privacy.min_count``)."""
    from medfed.deploy.policy import POLICY_FILE, load_policy
    from medfed.deploy.policy_mod import NO_POLICY, NODE_POLICY, NODE_SITE_STATE

    if no_policy:
        if policy is not None:
            raise MedFedError("both --policy and --no-policy", where="client start",
                              fix="give one of them")
        err_console.print("[yellow]warning:[/yellow] --no-policy: this site runs every "
                          "experiment the coordinator sends; never use it with patient data")
        return {NODE_POLICY: NO_POLICY, NODE_SITE_STATE: str(state.resolve())}, min_count
    path = policy or state / POLICY_FILE
    if policy is None and not path.is_file():
        raise MedFedError("no site policy", where=str(path),
                          fix="write site-policy.yaml there (see `medfed client start --help`) "
                          "or give --policy PATH; --no-policy only for a trial without "
                          "patient data")
    rules, _ = load_policy(path)
    floor = max(min_count or 0, rules.privacy.min_count)
    return {NODE_POLICY: str(path.resolve()), NODE_SITE_STATE: str(state.resolve())}, floor


@client_app.command("approve")
def client_approve(
    state: Path = typer.Option(..., help="The site state folder (the folder of node.key, "
                               "where site-policy.yaml is)."),
    yes: bool = typer.Option(False, "--yes", help="Approve without asking (scripts)."),
) -> None:
    """Review and approve the experiments this site refused for want of approval (policy
    `require_approval: true`): shows each one's config and its diff to the last approved
    one, then records the approval. The site takes part from its next message on."""
    from medfed.deploy import policy

    waiting = policy.pending(state)
    if not waiting:
        out_console.print(f"no experiment waits for approval in {state / policy.PENDING_DIR}",
                          highlight=False)
        return
    for entry in waiting:
        _review(state, entry, yes)


def _review(state: Path, entry: dict, yes: bool) -> None:
    """Show one pending experiment (config, or diff to the last approved); approve it."""
    from medfed.deploy import audit, policy

    previous = policy.approvals(state)
    last = previous[-1]["experiment"] if previous else None
    signed = entry.get("signature", {})
    out_console.print(f"experiment {entry['experiment_sha256'][:12]} "
                      f"({entry['experiment'].get('name') or 'unnamed'}), received "
                      f"{entry['received']}, signed by key {signed.get('key_id')} (MedFed "
                      f"{signed.get('medfed_version')})", highlight=False)
    title = "changes from the last approved experiment" if last else "config (nothing " \
        "approved before)"
    out_console.print(f"{title}:", highlight=False)
    for line in policy.config_diff(last, entry["experiment"]):
        style = "green" if line.startswith("+") else "red" if line.startswith("-") else None
        out_console.print(line, style=style, highlight=False, markup=False)
    if not yes and not typer.confirm("approve this experiment for this site?", default=False):
        out_console.print("not approved", highlight=False)
        return
    who = os.environ.get("USER", "unknown")
    policy.record_approval(state, entry, who)
    audit.append(state / "audit.jsonl", "experiment_approved",
                 experiment_sha256=entry["experiment_sha256"], by=who,
                 key_id=signed.get("key_id"))
    out_console.print(f"approved {entry['experiment_sha256'][:12]}", highlight=False)


def _check_node_credentials(root_cert: Path | None, key: Path | None, insecure: bool) -> None:
    from medfed.deploy.certs import check_node_key, check_root_cert

    if insecure:
        err_console.print("[yellow]warning:[/yellow] --insecure: updates travel unencrypted "
                          "and the node is not authenticated")
        return
    if root_cert is None or key is None:
        raise MedFedError("no TLS credentials", where="client start --root-cert/--key",
                          fix="give --root-cert (the coordinator's ca.pem) and --key (node.key "
                          "from `medfed keys create`)")
    check_root_cert(root_cert)
    check_node_key(key)


def _check_node_exit(code: int, superlink: str, key: Path | None) -> None:
    """A one-line error for a SuperNode that stopped with an error exit code."""
    if code == ACTIVATION_REFUSED:
        from medfed.deploy.supernode import key_fingerprint

        raise MedFedError(f"the SuperLink refused this node: its key {key} (public key "
                          f"sha256 {key_fingerprint(key)[:16]}) is not registered there, or "
                          "is online elsewhere", where=superlink,
                          fix="send node.pub to the coordinator (`medfed nodes add`)")
    if code:
        raise MedFedError(f"the SuperNode stopped with Flower exit code {code}",
                          where=superlink, fix="see https://flower.ai/docs/framework/"
                          f"ref-exit-codes/{code}.html")


def _supervise_node(flags: list[str], runtime_port: int, rejoin_wait: float,
                    key: Path | None = None, session_file: Path | None = None) -> int:
    """SuperNode + warm executor as children (``medfed.deploy.supernode.supervise``): a key
    never activated here is refused at once; a rejoining one is retried ``rejoin_wait`` s."""
    from medfed.deploy import flower
    from medfed.deploy.supernode import key_fingerprint, supervise
    from medfed.federation.app import flower_env

    def leave(*_args) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, leave)  # stop the children on a plain `kill` too
    fingerprint = key_fingerprint(key)
    try:
        return supervise(flower.supernode_command(flags, os.getpid(), session_file, fingerprint),
                         flower.executor_command(runtime_port, os.getpid()), flower_env(),
                         session_file, fingerprint, rejoin_wait,
                         lambda line: err_console.print(line, highlight=False))
    except KeyboardInterrupt:
        return 0
