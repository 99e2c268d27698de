"""Real processes for the deployment tests: start by command, stop by PID (and their children).

Every process gets its own session; stopping it also stops every descendant found under
/proc (Flower's SuperExec and ServerApp run in sessions of their own), first with SIGTERM,
then SIGKILL. ``crash`` SIGKILLs a process and all its descendants at once (a machine loss).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MEDFED = [sys.executable, "-m", "medfed.cli"]
UCI_COLUMNS = ["age", "sex", "cp", "trestbps", "chol", "fbs", "restecg", "thalach", "exang",
               "oldpeak", "slope", "ca", "thal", "num"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """All live descendants of ``pid`` (children first found, grandchildren after)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


class Procs:
    """The processes one test module started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs: dict[str, subprocess.Popen] = {}
        self.known: dict[str, set[int]] = {}

    def start(self, name: str, args: list[str], cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([*MEDFED, *args], stdout=log, stderr=subprocess.STDOUT,
                                cwd=cwd or self.root, start_new_session=True, env=test_env())
        self.procs[name] = proc
        self.known[name] = set()
        return proc

    def log(self, name: str) -> str:
        return (self.root / f"{name}.log").read_text(errors="replace")

    def remember_children(self) -> None:
        for name, proc in self.procs.items():
            self.known[name] |= set(descendants(proc.pid))

    def crash(self, name: str) -> None:
        """SIGKILL the process and every descendant at once."""
        proc = self.procs[name]
        pids = [proc.pid, *descendants(proc.pid)]
        for pid in pids:
            _kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.known[name] |= set(pids[1:])

    def stop(self, name: str, grace: float = 10.0) -> None:
        proc = self.procs[name]
        children = set(descendants(proc.pid)) | self.known.get(name, set())
        if proc.poll() is None:
            _kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        for pid in sorted(children):
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists():
                _kill(pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def test_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "PYTHONUNBUFFERED": "1",
                "COLUMNS": "200"})
    return env


def run_cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*MEDFED, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=test_env())


def write_heart_site(folder: Path, n: int, seed: int) -> Path:
    """A hospital export in the heart-disease format: header row, 14 UCI columns, '?' gaps."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        sick = rng.random() < 0.45
        num = int(rng.integers(1, 5)) if sick else 0
        row = [rng.normal(58 if sick else 50, 8), float(rng.random() < 0.7),
               float(4 if sick and rng.random() < 0.7 else rng.integers(1, 4)),
               rng.normal(134, 18), rng.normal(250, 50), float(rng.random() < 0.15),
               float(rng.integers(0, 3)), rng.normal(135 if sick else 158, 20),
               float(rng.random() < (0.55 if sick else 0.15)),
               abs(rng.normal(1.6 if sick else 0.6, 1.0)), float(rng.integers(1, 4)),
               float(rng.integers(0, 4)), float(rng.choice([3, 6, 7])), num]
        cells = [f"{v:.1f}" for v in row[:-1]] + [str(num)]
        if rng.random() < 0.05:
            cells[11] = "?"  # ca: dropped by the preprocessing anyway
        rows.append(",".join(cells))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.csv").write_text(",".join(UCI_COLUMNS) + "\n" + "\n".join(rows) + "\n")
    return folder


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default
