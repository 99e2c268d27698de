"""MedFed as a Flower app: the ``pyproject.toml`` handed to ``flwr run``, and the environment
of every Flower process MedFed starts.

medfed is installed where the app runs, so the app ships no files: its pyproject names the
ServerApp and ClientApp by module path and lists the run config keys with their defaults.
The Ray simulation uses this package's apps (the defaults below); a real federation names
its own (``medfed.deploy``).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

SERVER_APP = "medfed.federation.server_app:app"
CLIENT_APP = "medfed.federation.client_app:app"
APP_PYPROJECT_HEAD = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "medfed-app"
version = "1.0.0"
description = "MedFed's Flower app: the medfed package's ServerApp and ClientApp"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "medfed"

[tool.flwr.app.components]
serverapp = "{serverapp}"
clientapp = "{clientapp}"

[tool.flwr.app.config]
"""


def app_pyproject(run_config: dict[str, Any], serverapp: str = SERVER_APP,
                  clientapp: str = CLIENT_APP) -> str:
    """The Flower app's pyproject.toml: ``serverapp``/``clientapp`` ("module:attribute") and
    the run config keys ``flwr run --run-config`` may override, with their defaults."""
    head = APP_PYPROJECT_HEAD.format(serverapp=serverapp, clientapp=clientapp)
    return head + "".join(f"{k} = {json.dumps(v)}\n" for k, v in run_config.items())


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment for every Flower process MedFed starts: telemetry and runtime
    dependency installation off (it would download a CUDA torch), this Python's bin first."""
    env = dict(os.environ)
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "PYTHONUNBUFFERED": "1"})
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.1")
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def apply_flower_env() -> None:
    """Make this process's environment the Flower one (for Flower code run in-process)."""
    os.environ.update(flower_env())


def free_port() -> int:
    """A loopback TCP port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
