"""A hospital's SuperNode with a warm ClientApp executor (Flower's process isolation mode).

Flower's default SuperNode starts a fresh ``flwr-clientapp`` process per message, and each
re-imports torch (~5 s here). In ``--isolation process`` mode the SuperNode leaves launching
to a separate executor; ours imports torch and the ClientApp ONCE, then forks a child per
message that runs Flower's own ``run_clientapp`` (same token protocol, same Runtime API), so
a message costs a fork instead of an interpreter start. The SuperNode's idle poll (3 s,
hard-coded) is shortened to ``MEDFED_NODE_POLL`` seconds (default 0.2), and the executor's
reconnects to a restarting SuperNode wait at most 0.5 s (Flower's backoff: up to 20 s).

Entry points, both started by `medfed client start`: ``python -m medfed.deploy.supernode
executor --runtime-api-address ADDR --parent-pid PID`` (the warm executor) and ``python -m
medfed.deploy.supernode supernode --parent-pid PID -- FLAGS`` (:func:`run_supernode`: Flower's
SuperNode in that process).

Every Flower internal this module changes is one function that returns True when it applied
(``tests/test_flower_patches.py`` checks each, and that the behaviour changed); each
docstring names the Flower limitation it works around. ``flwr`` is pinned to the minors
tested (``>=1.41,<1.43``). What Flower offers a supported way for is set that way:
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (the executor's task poll), ``--isolation process`` and
``--parent-pid`` (the executor's lifetime), the ``Executor.close`` hook (children stopped on
exit), ``logging`` filters on the ``flwr`` logger (exit code and node ID, never a patch).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import time
from types import SimpleNamespace

DEFAULT_NODE_POLL = 0.2
ACTIVATION_REFUSED = 75  # our exit code for Flower's 305 (exit codes are 8-bit)
HEARTBEAT_S = 10.0  # Flower's minimum; its default is 30 s
EXECUTOR_RETRY_MAX_S = 0.5  # the executor's reconnects to its own SuperNode; Flower's: 20 s


def _short_sleep(limit: float):
    def sleep(seconds: float) -> None:
        time.sleep(min(seconds, limit))

    return sleep


def patch_supernode_polling(limit: float | None = None) -> bool:
    """Cap the SuperNode's sleeps at ``limit`` s; False if Flower's layout changed.

    Works around: Flower 1.42's ``start_client_internal`` sleeps a hard-coded 3 s after
    every empty pull from the SuperLink and 0.5 s while waiting for the ClientApp's reply
    (no flag, no environment variable), so each message waits up to 3.5 s before it is
    even seen. Replaces that module's ``time`` by a copy whose ``sleep`` is capped; the
    SuperNode then polls the SuperLink every ``limit`` s (one small HTTP request).
    """
    limit = float(os.environ.get("MEDFED_NODE_POLL", DEFAULT_NODE_POLL)) if limit is None \
        else limit
    try:
        from flwr.supernode import start_client_internal as internal
    except ImportError:
        return False
    if not hasattr(internal, "time"):
        return False
    shim = SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("__")})
    shim.sleep = _short_sleep(limit)
    internal.time = shim
    return True


def fast_object_pulls(initial: float = 0.02, cap: float = 0.1) -> bool:
    """Retry not-yet-available message objects after ``initial`` s, not Flower's 1 s.

    A message's objects trail the message at every hop: the SuperNode creates the ClientApp
    task before it has pulled the objects from the SuperLink, which gets them from the
    ServerApp after the message, and replies go the same way back. Flower's first retry
    waits 1 s (doubling up to 10 s) at each of these hops. A retry every 0.1 s at most costs
    a few small requests and saved ~1 s per round (2 hospitals, bench/deployment_overhead.py:
    coordination median 5.5 s with a 0.5 s cap, 4.4 s with 0.1 s, on a loaded 2-core box).

    Works around: ``pull_objects``' backoff is a keyword default with no setting (Flower
    1.42), so its ``__kwdefaults__`` are rewritten. False if Flower's layout changed.
    """
    try:
        from flwr.supercore.inflatable import inflatable_utils
    except ImportError:
        return False
    defaults = getattr(inflatable_utils.pull_objects, "__kwdefaults__", None) or {}
    if "initial_backoff" not in defaults:
        return False
    defaults["initial_backoff"], defaults["backoff_cap"] = initial, cap
    return True


def short_executor_retries(cap: float = EXECUTOR_RETRY_MAX_S) -> bool:
    """Cap the warm executor's reconnect waits to its SuperNode at ``cap`` s.

    The executor talks to its own SuperNode's Runtime API on this machine. After a crash the
    SuperNode is restarted several times while the SuperLink still holds the old session
    (activation refused); Flower's exponential backoff (up to 20 s, jittered) then left a
    rejoined node deaf to its messages for up to 20 s, longer than a round timeout.

    Works around: the 20 s cap of Flower's retry invoker (flwrlabs/flower#4512, meant for a
    remote SuperLink) applies to the executor's loopback connection too, and
    ``run_superexec`` builds its invoker with no option. False if Flower's layout changed.
    """
    try:
        from flwr.supercore.retry.retry_invoker import exponential
        from flwr.supercore.superexec import run_superexec as superexec
    except ImportError:
        return False
    flower_invoker = getattr(superexec, "make_simple_http_retry_invoker", None)
    if flower_invoker is None:
        return False

    def local_invoker():
        invoker = flower_invoker()
        invoker.wait_gen_factory = lambda: exponential(base_delay=0.1, max_delay=cap)
        return invoker

    superexec.make_simple_http_retry_invoker = local_invoker
    return True


def short_heartbeats(interval: float = HEARTBEAT_S) -> bool:
    """Heartbeat every few seconds and declare a ``interval``-s period: a crashed node is
    marked offline after 2 x ``interval`` (not Flower's 60 s) and may then rejoin.

    Works around: the SuperNode's heartbeat period is the constant
    ``HEARTBEAT_DEFAULT_INTERVAL`` (30 s in 1.42, flwrlabs/flower#8006 proposed 60 s), with no
    flag; the SuperLink keeps a crashed node's session for 2 periods and refuses its
    restart meanwhile. True when the connection module's constant was changed.
    """
    import importlib

    applied = False
    for name in ("flwr.supercore.heartbeat", "flwr.supernode.fleet_http_connection"):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            if hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
                module.HEARTBEAT_DEFAULT_INTERVAL = interval
                applied = applied or name.endswith("fleet_http_connection")
    return applied


class FlowerLog(logging.Filter):
    """Two facts from the SuperNode's ``flwr`` log: its exit code and its node ID.

    Works around: ``flwr_exit`` logs ``Exit Code: N`` but ends the process with 1 for every
    error (Flower 1.42), and the SuperNode reports its activation only by logging
    ``SuperNode ID: N``. A filter on Flower's own logger (standard ``logging``, no patch)
    reads both; Flower's multi-line block for a refused activation (305) is dropped, since
    `medfed client start` prints one line for it. ``session_file``: where an activation is
    recorded (``record_activation``), so a later refusal can tell "never registered" from
    "a previous session may still be open".
    """

    def __init__(self, session_file: str | None = None, fingerprint: str = "") -> None:
        super().__init__()
        self.code: int | None = None
        self.node_id: str | None = None
        self.session_file, self.fingerprint = session_file, fingerprint

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        found = re.search(r"Exit Code: (\d+)", text)
        if found:
            self.code = int(found.group(1))
            return self.code != 305
        activated = re.match(r"SuperNode ID: (-?\d+)", text)
        if activated:
            self.node_id = activated.group(1)
            if self.session_file:
                record_activation(self.session_file, self.fingerprint, self.node_id)
        return True


def key_fingerprint(private_key: str | os.PathLike | None) -> str:
    """SHA-256 of the node key's public half in OpenSSH form (``insecure`` without a key)."""
    if private_key is None:
        return "insecure"
    import hashlib
    from pathlib import Path

    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(Path(private_key).read_bytes(), None)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    return hashlib.sha256(public).hexdigest()


def record_activation(session_file: str | os.PathLike, fingerprint: str, node_id: str) -> None:
    """Remember that the SuperLink activated this key (as node ``node_id``), and when."""
    from medfed.io import atomic_write_json

    atomic_write_json(session_file, {"key_sha256": fingerprint, "node_id": node_id,
                                     "activated_at": time.time()})


def last_activation(session_file: str | os.PathLike, fingerprint: str) -> dict | None:
    """This key's last recorded activation, or None when it was never activated here."""
    import json
    from pathlib import Path

    try:
        entry = json.loads(Path(session_file).read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("key_sha256") == fingerprint \
        else None


def run_supernode(argv: list[str], parent_pid: int | None = None,
                  session_file: str | None = None, fingerprint: str = "") -> None:
    """Run Flower's ``flower-supernode`` in this process with ``argv``; exits with Flower's
    own exit code (305, as ``ACTIVATION_REFUSED``: the SuperLink refused this node)."""
    from flwr.supernode.cli import flower_supernode

    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    patch_supernode_polling()
    fast_object_pulls()
    short_heartbeats()
    flower_exit = FlowerLog(session_file, fingerprint)
    logging.getLogger("flwr").addFilter(flower_exit)
    sys.argv = ["flower-supernode", *argv]
    code = 0
    try:
        flower_supernode()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    sys.stdout.flush()
    sys.stderr.flush()
    code = flower_exit.code or code
    os._exit(ACTIVATION_REFUSED if code == 305 else min(code, 255))


def _exit_with_parent(parent_pid: int) -> None:
    """Leave when the SuperNode's process is gone (also when it is a zombie nobody reaps)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.2)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


PRELOAD = ("medfed.deploy.client_app", "medfed.datasets.site_folder",
           "medfed.datasets.clinical.heart_disease",
           "medfed.datasets.clinical.csv_table", "sklearn.model_selection", "flwr.cli.install",
           "flwr.clientapp.utils", "flwr.supernode.runtime.run_clientapp", "sklearn.metrics",
           "torch._dynamo")


def _preload() -> None:
    """Import once, in the parent, what every ClientApp message would otherwise import."""
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    import torch

    # optimizers import torch._dynamo lazily on first construction (seconds): do it here
    weight = torch.nn.Parameter(torch.zeros(1))
    for optimizer in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        optimizer([weight], lr=0.1)


def _run_profiled(func, **kwargs) -> None:
    """``MEDFED_PROFILE_DIR`` set: dump a cProfile of this message's child process there."""
    folder = os.environ.get("MEDFED_PROFILE_DIR")
    if not folder:
        func(**kwargs)
        return
    import cProfile

    profile = cProfile.Profile()
    try:
        profile.runcall(func, **kwargs)
    finally:
        profile.dump_stats(os.path.join(folder, f"clientapp-{os.getpid()}.prof"))


def _die_with_parent(parent: int) -> None:
    """In a child forked by ``parent``: SIGKILL from the kernel when that executor dies
    (Linux ``PR_SET_PDEATHSIG``), so a child is never orphaned; elsewhere a watcher thread."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) != 0:  # 1 = PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        _exit_with_parent(parent)
    if os.getppid() != parent:  # the executor died between fork and prctl
        os._exit(1)


def _run_child(spec, parent: int) -> None:
    """The child forked by ``parent``: one ClientApp task with Flower's ``run_clientapp``,
    then exit."""
    code = 0
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)  # not the executor's handlers; Flower sets its own
    try:
        _die_with_parent(parent)
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        _run_profiled(run_clientapp, runtime_api_address=spec.runtime_api_address,
                      token=spec.token, insecure=spec.insecure, certificates=None,
                      parent_pid=parent, runtime_dependency_install=False)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001 - the child must never return
        code = 1
    os._exit(code)


def fork_executor_class():
    """Flower's ``SubprocessExecutor`` that forks this warm process per ClientApp task.

    ``close`` (Flower calls it when the executor exits, also on SIGTERM/SIGINT) stops the
    children still running: SIGTERM, then SIGKILL after ``grace`` s.
    """
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    class ForkExecutor(SubprocessExecutor):
        grace = 3.0

        def __init__(self) -> None:
            super().__init__()
            self.children: set[int] = set()

        def launch(self, spec):
            if spec.task_type != TaskType.CLIENT_APP:
                return super().launch(spec)
            parent = os.getpid()
            pid = os.fork()
            if pid == 0:
                _run_child(spec, parent)
            self.children = {p for p in self.children if _alive(p)} | {pid}
            return LaunchResult.accepted()

        def close(self) -> None:
            super().close()
            _stop_children(self.children, self.grace)
            self.children = set()

    return ForkExecutor


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_children(pids: set[int], grace: float) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def use_fork_executor() -> bool:
    """Make Flower's SuperExec loop launch ClientApp tasks with ``fork_executor_class()``.

    Works around: Flower starts a fresh ``flwr-clientapp`` process per message, importing
    torch each time (~5 s here; flwrlabs/flower#3670 "non-ephemeral ClientApp", open); its
    warm executor pools exist only for the Kubernetes executor, and ``run_superexec`` takes
    an ``ExecutorType`` enum (subprocess or kubernetes), not an executor object, so its
    module's ``get_executor`` is replaced. False if Flower's layout changed.
    """
    try:
        from flwr.supercore.superexec import run_superexec as superexec
    except ImportError:
        return False
    if not hasattr(superexec, "get_executor"):
        return False
    executor_class = fork_executor_class()
    superexec.get_executor = lambda *args, **kwargs: executor_class()
    return True


def run_warm_executor(runtime_api_address: str, parent_pid: int | None) -> None:
    """Flower's SuperExec loop, launching ClientApp tasks by fork from this warm process."""
    from flwr.supercore.superexec import run_superexec as superexec

    _preload()
    fast_object_pulls()
    short_executor_retries()
    use_fork_executor()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    superexec.run_superexec(runtime_api_address=runtime_api_address, insecure=True,
                            parent_pid=parent_pid, runtime_dependency_install=False)


EXECUTOR_FALLBACK_S = 15.0  # start the executor anyway if no activation was seen by then


def supervise(node_cmd: list[str], executor_cmd: list[str], env: dict[str, str],
              session_file: str | os.PathLike | None, fingerprint: str, rejoin_wait: float,
              say) -> int:
    """Run the SuperNode, start the warm executor once the SuperLink activated the node, and
    return the SuperNode's exit code (``ACTIVATION_REFUSED`` at once for a key never activated
    here; a key that was active before is retried for ``rejoin_wait`` s, as right after a
    crash the SuperLink still holds its old session). ``say``: prints one line for the user.
    The caller's KeyboardInterrupt stops both children."""
    import subprocess
    from datetime import UTC, datetime

    first = time.monotonic()
    node, executor = None, None
    try:
        while True:
            started = time.time()
            node = subprocess.Popen(node_cmd, env=env)
            code = None
            while code is None:
                try:
                    code = node.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    if executor is None and (_activated_since(session_file, fingerprint, started)
                                             or time.time() - started > EXECUTOR_FALLBACK_S):
                        executor = subprocess.Popen(executor_cmd, env=env)
            before = last_activation(session_file, fingerprint) if session_file else None
            if code != ACTIVATION_REFUSED or before is None \
                    or time.monotonic() - first > rejoin_wait:
                return code
            since = datetime.fromtimestamp(before["activated_at"], UTC).strftime("%H:%M:%S")
            say(f"activation refused; this node was last activated at {since} UTC and the "
                "SuperLink may still hold that session; retrying in 2 s")
            time.sleep(2)
    finally:
        stop_processes(node, executor)


def _activated_since(session_file, fingerprint: str, since: float) -> bool:
    entry = last_activation(session_file, fingerprint) if session_file else None
    return entry is not None and float(entry.get("activated_at", 0)) >= since - 1.0


def stop_processes(*procs, grace: float = 15.0) -> None:
    """Terminate the still-running ``procs`` (``subprocess.Popen``); kill one that is not gone
    within ``grace`` s."""
    import subprocess

    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.terminate()
    for proc in procs:
        if proc is not None:
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m medfed.deploy.supernode")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("executor", help="warm ClientApp executor for a SuperNode")
    ex.add_argument("--runtime-api-address", required=True)
    ex.add_argument("--parent-pid", type=int, default=None)
    node = sub.add_parser("supernode", help="Flower's SuperNode, tuned (FLAGS after --)")
    node.add_argument("--parent-pid", type=int, default=None)
    node.add_argument("--session-file", default=None, help="where an activation is recorded")
    node.add_argument("--key-sha256", default="", help="the node key's fingerprint")
    node.add_argument("flags", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "supernode":
        flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
        run_supernode(flags, args.parent_pid, args.session_file, args.key_sha256)
    if args.command == "executor":
        os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
        run_warm_executor(args.runtime_api_address, args.parent_pid)


if __name__ == "__main__":
    main()
