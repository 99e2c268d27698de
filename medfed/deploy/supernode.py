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
    """Cap the SuperNode's idle sleeps at ``limit`` s; False if Flower's layout changed."""
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


def fast_object_pulls(initial: float = 0.05, cap: float = 0.5) -> bool:
    """Retry not-yet-available message objects after ``initial`` s, not Flower's 1 s.

    A message's arrays reach the SuperNode (or the ServerApp's replies reach the SuperLink)
    a moment after the message itself; Flower's first retry waits 1 s (up to 10 s). On a
    LAN a short backoff costs a few extra requests and saves about a second per message.
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
    rejoined node deaf to its messages for up to 20 s, longer than a round timeout. False if
    Flower's layout changed.
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


def short_heartbeats(interval: float = HEARTBEAT_S) -> None:
    """Heartbeat every few seconds and declare a ``interval``-s period: a crashed node is
    marked offline after 2 x ``interval`` (not Flower's 60 s) and may then rejoin."""
    import importlib

    for name in ("flwr.supercore.heartbeat", "flwr.supernode.fleet_http_connection"):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(name)
            if hasattr(module, "HEARTBEAT_DEFAULT_INTERVAL"):
                module.HEARTBEAT_DEFAULT_INTERVAL = interval


class FlowerExitCode(logging.Handler):
    """Remembers the exit code Flower logs (its process may end with another one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.code: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        found = re.search(r"Exit Code: (\d+)", record.getMessage())
        if found:
            self.code = int(found.group(1))


def run_supernode(argv: list[str], parent_pid: int | None = None) -> None:
    """Run Flower's ``flower-supernode`` in this process with ``argv``; exits with Flower's
    own exit code (305: the SuperLink refused to activate this node)."""
    from flwr.supernode.cli import flower_supernode

    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    patch_supernode_polling()
    fast_object_pulls()
    short_heartbeats()
    flower_exit = FlowerExitCode()
    logging.getLogger("flwr").addHandler(flower_exit)
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


def run_warm_executor(runtime_api_address: str, parent_pid: int | None) -> None:
    """Flower's SuperExec loop, launching ClientApp tasks by fork from this warm process."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec import run_superexec as superexec
    from flwr.supercore.superexec.executor import LaunchResult
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    _preload()
    fast_object_pulls()
    short_executor_retries()

    class ForkExecutor(SubprocessExecutor):
        def launch(self, spec):
            if spec.task_type != TaskType.CLIENT_APP:
                return super().launch(spec)
            pid = os.fork()
            if pid == 0:  # child: one message, then exit without running parent handlers
                code = 0
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                try:
                    _run_profiled(run_clientapp, runtime_api_address=spec.runtime_api_address,
                                  token=spec.token, insecure=spec.insecure, certificates=None,
                                  parent_pid=None, runtime_dependency_install=False)
                except SystemExit as exc:
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:  # noqa: BLE001 - the child must never return
                    code = 1
                os._exit(code)
            return LaunchResult.accepted()

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    if parent_pid is not None:
        _exit_with_parent(parent_pid)
    superexec.get_executor = lambda *args, **kwargs: ForkExecutor()
    superexec.run_superexec(runtime_api_address=runtime_api_address, insecure=True,
                            parent_pid=parent_pid, runtime_dependency_install=False)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m medfed.deploy.supernode")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("executor", help="warm ClientApp executor for a SuperNode")
    ex.add_argument("--runtime-api-address", required=True)
    ex.add_argument("--parent-pid", type=int, default=None)
    node = sub.add_parser("supernode", help="Flower's SuperNode, tuned (FLAGS after --)")
    node.add_argument("--parent-pid", type=int, default=None)
    node.add_argument("flags", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "supernode":
        flags = args.flags[1:] if args.flags[:1] == ["--"] else args.flags
        run_supernode(flags, args.parent_pid)
    if args.command == "executor":
        os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "0.05")
        run_warm_executor(args.runtime_api_address, args.parent_pid)


if __name__ == "__main__":
    main()
