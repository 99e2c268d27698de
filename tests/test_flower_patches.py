"""Every Flower internal MedFed changes (medfed/deploy/supernode.py) still applies AND still
changes Flower's behaviour, so a Flower release that moves a patched name fails the test
named after it instead of slowing rounds back to 4-15 s (flwr is pinned >=1.41,<1.43).

Patches mutate Flower's modules, so each check runs in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.deploy_procs import descendants, free_port

CHECKS = r'''
import inspect, json, logging, os, tempfile, time
from medfed.deploy import supernode as sn

out = {}

# 1. the SuperNode's hard-coded sleeps (3 s idle poll, 0.5 s reply wait)
from flwr.supernode import start_client_internal as internal
source = inspect.getsource(internal)
flower_sleeps = "time.sleep(3)" in source and "time.sleep(0.5)" in source
applied = sn.patch_supernode_polling(0.05)
t0 = time.perf_counter(); internal.time.sleep(3); slept = time.perf_counter() - t0
out["supernode_polling"] = {"applied": applied, "changed": slept < 0.5,
                            "flower_code": flower_sleeps}

# 2. pull_objects' first retry (Flower: 1 s)
from flwr.supercore.inflatable import inflatable_utils as iu
before = dict(iu.pull_objects.__kwdefaults__)
applied = sn.fast_object_pulls(0.05, 0.5)
after = iu.pull_objects.__kwdefaults__
out["object_pulls"] = {"applied": applied, "changed": before["initial_backoff"] >= 1.0
                       and after["initial_backoff"] == 0.05 and after["backoff_cap"] == 0.5,
                       "flower_code": True}

# 3. the executor's reconnect backoff (Flower: up to 20 s)
from flwr.supercore.superexec import run_superexec as superexec
src = inspect.getsource(superexec.run_superexec)
waits = superexec.make_simple_http_retry_invoker().wait_gen_factory()
long_before = max(next(waits) for _ in range(10)) > 10
applied = sn.short_executor_retries(0.5)
waits = superexec.make_simple_http_retry_invoker().wait_gen_factory()
out["executor_retries"] = {"applied": applied,
                           "changed": long_before and max(next(waits) for _ in range(10)) <= 0.5,
                           "flower_code": "make_simple_http_retry_invoker()" in src}

# 4. the heartbeat period the SuperNode declares (Flower: 30 s)
from flwr.supernode import fleet_http_connection as fleet
before = fleet.HEARTBEAT_DEFAULT_INTERVAL
applied = sn.short_heartbeats(10.0)
conn_src = inspect.getsource(fleet)
out["heartbeats"] = {"applied": applied,
                     "changed": before == 30 and fleet.HEARTBEAT_DEFAULT_INTERVAL == 10.0,
                     "flower_code":
                         conn_src.count("heartbeat_interval=HEARTBEAT_DEFAULT_INTERVAL") >= 2}

# 5. the fork executor replacing Flower's subprocess executor
from flwr.supercore.constant import ExecutorType
default = superexec.get_executor(ExecutorType.SUBPROCESS)
applied = sn.use_fork_executor()
mine = superexec.get_executor(ExecutorType.SUBPROCESS)
out["fork_executor"] = {"applied": applied,
                        "changed": type(mine).__name__ == "ForkExecutor"
                        and type(default).__name__ == "SubprocessExecutor",
                        "flower_code": "executor = get_executor(" in src}

# 6. the exit code and node ID read from Flower's log (flwr_exit ends with 1 for any error)
from flwr.common.logger import log
from flwr.supercore.exit import flwr_exit
seen = []
class Keep(logging.Handler):
    def emit(self, record):
        seen.append(record.getMessage())
logging.getLogger("flwr").addHandler(Keep())
folder = tempfile.mkdtemp()
session = os.path.join(folder, "node-session.json")
flower_log = sn.FlowerLog(session, "abc")
logging.getLogger("flwr").addFilter(flower_log)
log(logging.INFO, "SuperNode ID: %s", 4242)
exit_code = None
try:
    flwr_exit(305, "Failed to initialize the connection to the SuperLink.", emit_telemetry=False)
except SystemExit as exc:
    exit_code = exc.code
activation = sn.last_activation(session, "abc")
out["flower_log"] = {"applied": flower_log.code == 305 and flower_log.node_id == "4242",
                     "changed": exit_code == 1 and not any("Exit Code" in m for m in seen)
                     and activation is not None and activation["node_id"] == "4242"
                     and sn.last_activation(session, "other-key") is None,
                     "flower_code": "SuperNode ID: %s" in source}
print("REPORT" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-c", CHECKS], capture_output=True, text=True,
                          timeout=180, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT")]
    assert lines, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("REPORT"):])


def _proven(report: dict, name: str) -> None:
    entry = report[name]
    assert entry["flower_code"], f"{name}: the Flower code this patch targets is gone or moved"
    assert entry["applied"], f"{name}: the patch no longer applies (returned False)"
    assert entry["changed"], f"{name}: the patch applied but Flower's behaviour did not change"


def test_supernode_poll_patch_applies(report):
    _proven(report, "supernode_polling")


def test_object_pull_backoff_patch_applies(report):
    _proven(report, "object_pulls")


def test_executor_retry_cap_patch_applies(report):
    _proven(report, "executor_retries")


def test_heartbeat_patch_applies(report):
    _proven(report, "heartbeats")


def test_fork_executor_patch_applies(report):
    _proven(report, "fork_executor")


def test_flower_log_filter_reads_exit_code_and_node_id(report):
    _proven(report, "flower_log")


FORK = textwrap.dedent("""
    import os, sys, time
    from medfed.deploy import supernode as sn
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import ExecutionSpec
    executor = sn.fork_executor_class()()
    spec = ExecutionSpec(task_type=TaskType.CLIENT_APP, runtime_api_address="127.0.0.1:{port}",
                         token="t", insecure=True, root_certificates_path=None,
                         runtime_dependency_install=False, parent_pid=None,
                         suppress_output=True, task_id=1)
    for _ in range(2):
        executor.launch(spec)  # children retry the closed Runtime API port: they stay alive
    print("CHILDREN", *sorted(executor.children), flush=True)
    if sys.argv[1] == "close":
        time.sleep(1.0)
        executor.close()
        print("CLOSED", flush=True)
    time.sleep(120)
""")


def _start_fork_script(mode: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", FORK.format(port=free_port()), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**os.environ, "FLWR_TELEMETRY_ENABLED": "0"})
    line = proc.stdout.readline()
    assert line.startswith("CHILDREN"), line
    return proc, [int(p) for p in line.split()[1:]]


def _gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(os.path.exists(f"/proc/{p}") and "Z" not in _state(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"


def test_fork_executor_children_stop_on_close_and_die_with_the_executor():
    """Flower calls ``close`` on exit (SIGTERM included): the forked ClientApp children stop;
    an executor killed outright (SIGKILL) takes its children with it: none is orphaned."""
    proc, children = _start_fork_script("close")
    try:
        assert len(children) == 2 and set(children) <= set(descendants(proc.pid))
        assert proc.stdout.readline().startswith("CLOSED")
        assert _gone(children, 5), "close() left forked children running"
    finally:
        proc.kill()
        proc.wait()
    proc, children = _start_fork_script("kill")
    try:
        assert all(os.path.exists(f"/proc/{p}") for p in children)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _gone(children, 5), "children outlived a SIGKILLed executor (orphaned)"
    finally:
        for pid in children:
            if os.path.exists(f"/proc/{pid}"):
                os.kill(pid, signal.SIGKILL)
