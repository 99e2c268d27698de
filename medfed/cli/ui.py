"""`medfed ui`: MLflow's web UI on the project's tracking store, on loopback only."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import typer

HOST = "127.0.0.1"  # loopback: the store holds per-site results; never on the network


def server_command(uri: str, port: int) -> list[str]:
    """``python -m mlflow server`` on ``uri``, loopback, one worker."""
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
            "--host", HOST, "--port", str(port), "--workers", "1"]


def check_ui_installed() -> None:
    """The server needs full ``mlflow`` (Flask and the built UI), not ``mlflow-skinny``."""
    from medfed.errors import MedFedError

    spec = importlib.util.find_spec("mlflow")
    ui = Path(spec.origin).parent / "server" / "js" / "build" / "index.html" if spec and \
        spec.origin else None
    if importlib.util.find_spec("flask") is None or ui is None or not ui.is_file():
        raise MedFedError("the MLflow UI needs the full mlflow package (this environment has "
                          "only mlflow-skinny, which has no server)", where="medfed ui",
                          fix="pip install 'medfed[ui]'")


def check_store(uri: str) -> None:
    """A SQLite store that does not exist yet is a typo or a wrong folder, not an empty UI."""
    from medfed.errors import MedFedError

    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        if not path.is_file():
            raise MedFedError("no MLflow tracking store here", where=str(path.resolve()),
                              fix="run `medfed simulate` or `medfed benchmark` in this folder "
                              "first, or set MLFLOW_TRACKING_URI to your store")


def ui(
    port: int = typer.Option(5000, min=1, max=65535, help="Port on 127.0.0.1."),
) -> None:
    """Browse runs in MLflow's UI: simulations, benchmarks (parent run, a child per cell),
    metrics per round and per site, plots.

    Serves the tracking store `medfed simulate` and `medfed benchmark` log to
    (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db in this folder) on http://127.0.0.1:PORT
    until Ctrl-C. Needs `pip install 'medfed[ui]'` (full mlflow).
    """
    from medfed.cli.use import check_port_free
    from medfed.reports.tracking import tracking_uri

    check_ui_installed()
    uri = tracking_uri()
    check_store(uri)
    check_port_free(HOST, port)
    print(f"MLflow UI on http://{HOST}:{port} (store {uri}); Ctrl-C stops it", flush=True)
    command = server_command(uri, port)
    # MLflow's job runner (GenAI evaluation jobs, a dozen worker processes) is not needed here
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    os.execve(command[0], command, env)  # the server replaces this process: Ctrl-C reaches it
