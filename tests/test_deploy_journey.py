"""The README's coordinator/hospital journey on loopback, with real processes only.

Three hospitals hold UCI-format heart-disease files (tests/uci_files.py: Cleveland, Hungary,
VA); the coordinator runs the shipped ``configs/heart-disease.yaml``. One federation serves
the module, in order (issue 15):

1. ``--set partition.sites=3 --wait-timeout 60`` with one hospital offline waits for it; the
   federated scaling covers all three sites;
7. ``medfed run > log`` (no terminal) prints one line per round; Ctrl-C leaves
   ``status.json`` saying ``interrupted``;
4. a node whose key was never registered is refused at once, in one line;
6. after the coordinator crashes, stopping a hospital leaves no process of it behind, and
   its warm executor honours SIGTERM.

Hooks for more checks of the same journey: ``coordinator_audit`` / ``site_audit`` (the
audit logs, for the run id, round and refusal entries), ``run_experiment`` (any ``--set``,
e.g. an out-of-policy experiment) and ``start_hospital`` (any extra ``client start`` flag,
e.g. a site policy file).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.deploy_procs import Procs, descendants, free_port, read_json, run_cli, wait_for
from tests.uci_files import FILES, write_uci_heart

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[1]
HOSPITALS = {"hospital-a": "cleveland", "hospital-b": "hungarian", "hospital-c": "va"}


class Journey:
    """The coordinator's state and certificates, three hospitals' folders and keys."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.procs = Procs(root)
        self.port = free_port()
        self.state, self.certs = root / "state", root / "certs"
        self.superlink = f"localhost:{self.port}"
        self.watcher = DescendantWatch()

    def site(self, name: str) -> Path:
        return self.root / name

    def keys(self, name: str) -> Path:
        return self.root / f"keys-{name}"

    def runs(self) -> set[str]:
        folder = self.state / "runs"
        return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


class DescendantWatch:
    """Every process a hospital ever had below it (forked ClientApp children are short-lived:
    sampled every 50 ms), with its command line, to check none survives the hospital."""

    def __init__(self) -> None:
        self.seen: dict[str, dict[int, str]] = {}
        self.roots: dict[str, int] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def watch(self, name: str, pid: int) -> None:
        self.roots[name] = pid
        self.seen.setdefault(name, {})

    def _loop(self) -> None:
        while not self.stop.is_set():
            for name, pid in list(self.roots.items()):
                for child in descendants(pid):
                    if child not in self.seen[name]:
                        self.seen[name][child] = _cmdline(child)
            time.sleep(0.05)

    def alive(self, name: str) -> dict[int, str]:
        """Processes seen under ``name`` that still run, with the same command line."""
        return {pid: cmd for pid, cmd in self.seen.get(name, {}).items()
                if _cmdline(pid) == cmd and _state(pid) not in ("Z", "X")}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


# --- hooks ------------------------------------------------------------------------------------


def write_site_policy(journey: Journey, name: str, **rules) -> Path:
    """Hospital ``name``'s ``site-policy.yaml`` (next to its key, where `client start` looks):
    trusts its copy of the coordinator's signing key (received out of band); ``rules``
    (datasets, models, privacy, max_rounds, ...) narrow it. The journey's hospitals allow what
    configs/heart-disease.yaml runs."""
    import shutil

    import yaml

    shutil.copy(journey.state / "coordinator.pub", journey.keys(name) / "coordinator.pub")
    policy = {"trusted_keys": ["coordinator.pub"],
              "datasets": ["heart-disease"], "models": ["mlp", "logreg"], "max_rounds": 100,
              **rules}
    path = journey.keys(name) / "site-policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path



def start_hospital(journey: Journey, name: str, *extra: str, key_dir: str | None = None,
                   proc_name: str | None = None) -> subprocess.Popen:
    """`medfed client start` for hospital ``name`` (its own key unless ``key_dir``)."""
    keys = journey.root / key_dir if key_dir else journey.keys(name)
    proc = journey.procs.start(proc_name or name, [
        "client", "start", "--superlink", journey.superlink, "--root-cert",
        str(journey.certs / "ca.pem"), "--key", str(keys / "node.key"), "--data",
        str(journey.site(name)), "--runtime-port", str(free_port()), *extra])
    journey.watcher.watch(proc_name or name, proc.pid)
    return proc


def ensure_hospital(journey: Journey, name: str) -> None:
    """Start hospital ``name`` unless it runs (a test run alone, e.g. with -k)."""
    proc = journey.procs.procs.get(name)
    if proc is None or proc.poll() is not None:
        start_hospital(journey, name)


def run_experiment(journey: Journey, name: str, *args: str) -> tuple[subprocess.Popen, Path]:
    """`medfed run configs/heart-disease.yaml ARGS` in the background, stdout to a file (no
    terminal); the process and its run folder (once `medfed run` created it)."""
    before = journey.runs()
    proc = journey.procs.start(name, ["run", str(REPO / "configs" / "heart-disease.yaml"),
                                      "--state", str(journey.state), "--superlink",
                                      journey.superlink, *args])
    run_dir = wait_for(lambda: [journey.state / "runs" / r for r in journey.runs() - before],
                       120, "the run folder")[0]
    return proc, run_dir


def coordinator_audit(journey: Journey) -> list[dict]:
    """The coordinator's audit log entries (``state/audit.jsonl``)."""
    return _entries(journey.state / "audit.jsonl")


def site_audit(journey: Journey, name: str) -> list[dict]:
    """Hospital ``name``'s audit log entries (``keys-NAME/audit.jsonl``)."""
    return _entries(journey.keys(name) / "audit.jsonl")


def _entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() \
        else []


def history(run_dir: Path) -> list[dict]:
    return read_json(run_dir / "result.json", {}).get("history", [])


# --- the federation ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def journey(tmp_path_factory):
    root = tmp_path_factory.mktemp("journey")
    journey = Journey(root)
    write_uci_heart(root / "uci", seed=5)
    for name, centre in HOSPITALS.items():
        journey.site(name).mkdir()
        (journey.site(name) / FILES[centre]).write_bytes(
            (root / "uci" / "heart-disease" / FILES[centre]).read_bytes())
    steps = [["certs", "init", str(journey.certs), "--server-name", "coord.test"],
             *[["keys", "create", str(journey.keys(n))] for n in [*HOSPITALS, "intruder"]]]
    for args in steps:
        done = run_cli(args, root)
        assert done.returncode == 0, done.stderr
    try:
        journey.procs.start("server", ["server", "start", "--certs", str(journey.certs),
                                       "--state", str(journey.state), "--address",
                                       f"127.0.0.1:{journey.port}"])
        wait_for(lambda: "Uvicorn running" in journey.procs.log("server"), 120, "SuperLink")
        write_site_policy(journey, "intruder")  # a real site in every way but its key
        for name in HOSPITALS:
            write_site_policy(journey, name)
            done = run_cli(["nodes", "add", str(journey.keys(name) / "node.pub"), "--name",
                            name, "--state", str(journey.state)], root)
            assert done.returncode == 0, done.stderr + done.stdout
        for name in ("hospital-a", "hospital-b"):  # hospital-c is late
            start_hospital(journey, name)
        yield journey
    finally:
        journey.watcher.stop.set()
        journey.procs.stop_all()


def test_run_waits_for_partition_sites_and_prints_a_line_per_round(journey):
    """(1) natural scheme, partition.sites=3, one hospital offline: the run waits, then all
    three train from round 1 and the scaling counts every site; (7) one line per round."""
    run, run_dir = run_experiment(journey, "run-wait", "--set", "partition.sites=3", "--set",
                                  "rounds=2", "--wait-timeout", "60", "--round-timeout", "90",
                                  "--no-track")
    wait_for(lambda: read_json(run_dir / "status.json"), 60, "the run to start")
    time.sleep(6)  # two hospitals are online: a run that does not wait has begun by now
    assert not (run_dir / "progress.json").exists()
    assert not any(e["event"] == "round_started" for e in coordinator_audit(journey)
                   if e.get("run_id") == run_dir.name)
    start_hospital(journey, "hospital-c")
    assert run.wait(timeout=240) == 0, journey.procs.log("run-wait")[-3000:]
    rounds = history(run_dir)
    assert [h["sites_trained"] for h in rounds] == [3, 3]
    sizes = {n: [e for e in site_audit(journey, n) if e["event"] == "node_started"][-1]
             ["n_train"] for n in HOSPITALS}
    result = read_json(run_dir / "result.json")
    assert result["summary"]["n_train"] == sum(sizes.values())  # scaling over all 3 sites
    lines = [line for line in journey.procs.log("run-wait").splitlines()
             if line.startswith("round ")]
    assert [line.split(":")[0] for line in lines] == ["round 1/2", "round 2/2"]
    assert all("3 sites trained" in line and "elapsed" in line for line in lines)


def test_personal_weights_stay_on_each_hospitals_disk(journey):
    """personalize in a real federation: with perhead each hospital keeps its own head, with
    ditto its personal model, beside its key and ledger; its audit log shows they never left
    (the head's arrays are in no reply of the run; the files are on its disk, logged hash)."""
    import hashlib

    for name in HOSPITALS:
        ensure_hospital(journey, name)
    for arm in ("perhead", "ditto"):
        run, run_dir = run_experiment(journey, f"run-{arm}", "--set", "partition.sites=3",
                                      "--set", "rounds=2", "--set", f"personalize=[{arm}]",
                                      "--wait-timeout", "60", "--round-timeout", "120",
                                      "--no-track")
        assert run.wait(timeout=300) == 0, journey.procs.log(f"run-{arm}")[-3000:]
        for name in HOSPITALS:
            entries = [e for e in site_audit(journey, name) if e.get("run_id") == run_dir.name]
            kept = [e["kept"] for e in entries if e["event"] == "kept_on_site"]
            assert len(kept) >= 2, (arm, name)  # one entry a round
            files = {f: (sha, keys.split(",")) for k in kept
                     for f, sha, keys in zip(k["files"], k["sha256"], k["keys"], strict=True)}
            assert {Path(f).name.split(".")[-2] for f in files} == {arm}
            for file, (sha, _) in files.items():  # the last round's hash of each file
                assert str(journey.keys(name)) in file  # beside the site's key and ledger
                assert hashlib.sha256(Path(file).read_bytes()).hexdigest() == sha
            if arm == "perhead":
                head = {key for _, keys in files.values() for key in keys}
                sent = {a["name"] for e in entries if e["event"] == "sent_to_coordinator"
                        for record in e["arrays"].values() for a in record["arrays"]}
                assert head and sent and not head & sent, (head, sent)


def test_out_of_policy_and_foreign_signed_experiments_are_refused(journey):
    """A hospital whose policy requires DP-SGD refuses a non-private experiment before
    reading any data (the coordinator shows why, both audit logs record it, the run goes on
    with the others); an experiment signed by a key no hospital trusts is refused by all."""
    for name in HOSPITALS:
        ensure_hospital(journey, name)
    write_site_policy(journey, "hospital-a", privacy={"modes": ["dp-sgd"]})  # re-read per message
    try:
        run, run_dir = run_experiment(journey, "run-policy", "--set", "partition.sites=3",
                                      "--set", "rounds=1", "--wait-timeout", "60",
                                      "--round-timeout", "90", "--no-track")
        assert run.wait(timeout=240) == 0, journey.procs.log("run-policy")[-3000:]
    finally:
        write_site_policy(journey, "hospital-a")
    reason = "privacy.mode none, its policy requires dp-sgd"
    assert f"site hospital-a refused: {reason}" in journey.procs.log("run-policy")
    assert [h["sites_trained"] for h in history(run_dir)] == [2]
    at_coordinator = [e for e in coordinator_audit(journey) if e["event"] == "site_refused"
                      and e.get("run_id") == run_dir.name]
    assert at_coordinator and all(e["site"] == "hospital-a" for e in at_coordinator)
    at_site = [e for e in site_audit(journey, "hospital-a") if e.get("run_id") == run_dir.name]
    assert {e["event"] for e in at_site} >= {"experiment_refused"}
    assert "sent_to_coordinator" not in {e["event"] for e in at_site}

    state = journey.state  # a coordinator key the hospitals never received signs the next one
    for name in ("coordinator-signing.key", "coordinator.pub"):
        (state / name).rename(state / f"{name}.real")
    try:
        run, run_dir = run_experiment(journey, "run-foreign", "--set", "partition.sites=3",
                                      "--set", "rounds=1", "--wait-timeout", "60",
                                      "--round-timeout", "90", "--no-track")
        assert run.wait(timeout=240) == 2
    finally:
        for name in ("coordinator-signing.key", "coordinator.pub"):
            (state / f"{name}.real").replace(state / name)
    log = journey.procs.log("run-foreign")
    for name in HOSPITALS:
        assert f"site {name} refused: the experiment is signed by key" in log, log[-3000:]
        assert any(e["event"] == "experiment_refused" and "does not trust" in e["reason"]
                   for e in site_audit(journey, name) if e.get("run_id") == run_dir.name)


def test_unregistered_node_is_refused_at_once_in_one_line(journey):
    """(4) a key the coordinator never registered: one error line within seconds, not
    Flower's exit-code blocks and a retry loop meant for a rejoining node."""
    start = time.monotonic()
    intruder = start_hospital(journey, "hospital-a", key_dir="keys-intruder",
                              proc_name="intruder")
    code = intruder.wait(timeout=120)
    elapsed = time.monotonic() - start
    log = journey.procs.log("intruder")
    assert code == 2, log[-2000:]
    errors = [line for line in log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not registered" in errors[0], log[-2000:]
    assert "Exit Code" not in log and "retrying" not in log, log[-2000:]
    seen = journey.watcher.seen["intruder"].values()
    # no retry (the 50 ms sampler may miss the one short-lived SuperNode altogether)
    assert sum("medfed.deploy.supernode supernode" in cmd for cmd in seen) <= 1
    assert not any("supernode executor" in cmd for cmd in seen)  # no torch import for it
    assert elapsed < 60, f"refusal took {elapsed:.0f} s"  # one attempt; idle machine: ~10 s
    assert not journey.watcher.alive("intruder")


def test_ctrl_c_marks_the_run_interrupted(journey):
    """(7) SIGINT to `medfed run`: exit 130, status.json says interrupted and stays so."""
    for name in HOSPITALS:
        ensure_hospital(journey, name)
    run, run_dir = run_experiment(journey, "run-ctrl-c", "--set", "partition.sites=3",
                                  "--set", "rounds=40", "--no-track", "--round-timeout", "60")
    wait_for(lambda: read_json(run_dir / "progress.json", {}).get("history"), 300, "round 1")
    os.kill(run.pid, signal.SIGINT)
    assert run.wait(timeout=60) == 130, journey.procs.log("run-ctrl-c")[-2000:]
    status = read_json(run_dir / "status.json")
    assert status["status"] == "interrupted"
    time.sleep(3)  # the ServerApp is stopped meanwhile: it must not overwrite the status
    assert read_json(run_dir / "status.json")["status"] == "interrupted"
    assert f"--resume {run_dir.name}" in journey.procs.log("run-ctrl-c")


def test_every_audit_entry_names_its_run_and_round_and_the_chains_verify(journey):
    """(2) the journey's audit logs: every round entry at the coordinator and every upload at
    a hospital carries MedFed's run id and an integer round; (3) each log verifies against
    its signed head, and a copy with its last line cut is named truncated."""
    runs = journey.runs()
    started = [e for e in coordinator_audit(journey) if e["event"] == "round_started"]
    assert started and all(e["run_id"] in runs and isinstance(e["round"], int) and e["round"]
                           >= 1 for e in started)
    for name in HOSPITALS:
        sent = [e for e in site_audit(journey, name) if e["event"] == "sent_to_coordinator"]
        assert sent and all(e["run_id"] in runs and isinstance(e["round"], int) for e in sent)
    logs = [journey.state / "audit.jsonl", *(journey.keys(n) / "audit.jsonl" for n in HOSPITALS)]
    for log in logs:
        done = run_cli(["audit", "verify", str(log)], journey.root)
        assert done.returncode == 0, done.stderr
    cut = journey.root / "cut"
    cut.mkdir(exist_ok=True)
    lines = logs[1].read_text().splitlines(keepends=True)
    (cut / "audit.jsonl").write_text("".join(lines[:-1]))
    (cut / "audit.head.json").write_bytes((logs[1].parent / "audit.head.json").read_bytes())
    done = run_cli(["audit", "verify", str(cut / "audit.jsonl"), "--key",
                    str(journey.keys("hospital-a") / "audit-signing.pub")], journey.root)
    assert done.returncode == 2 and "truncated" in done.stderr, done.stderr


def test_coordinator_crash_leaves_no_process_at_the_hospitals(journey):
    """(6) SuperLink and ServerApp SIGKILLed mid-run: a hospital's executor honours SIGTERM,
    and a hospital stopped with SIGTERM leaves no descendant (forked children included)."""
    for name in HOSPITALS:
        ensure_hospital(journey, name)
    run, run_dir = run_experiment(journey, "run-crash", "--set", "partition.sites=3",
                                  "--set", "rounds=40", "--no-track", "--round-timeout", "300")
    wait_for(lambda: any(e["event"] == "run_started" and e.get("run_id") == run_dir.name
                         for e in coordinator_audit(journey)), 240, "the run to start")
    time.sleep(3)  # the hospitals are at work on it (site summaries, round 1)
    journey.procs.crash("server")
    journey.procs.crash("run-crash")
    time.sleep(3)  # the hospitals notice the SuperLink is gone
    executor = _executor_of(journey, "hospital-a")
    os.kill(executor, signal.SIGTERM)
    wait_for(lambda: _state(executor) in ("Z", "X"), 15, "the executor to honour SIGTERM")
    for name in HOSPITALS:
        proc = journey.procs.procs[name]
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=40)
        wait_for(lambda n=name: not journey.watcher.alive(n), 20,
                 f"{name}'s processes to end", interval=0.2)
    assert any("executor" in cmd for cmd in journey.watcher.seen["hospital-b"].values())


def _executor_of(journey: Journey, name: str) -> int:
    root = journey.procs.procs[name].pid
    found = [p for p in descendants(root) if "medfed.deploy.supernode executor" in _cmdline(p)
             and _parent(p) == root]
    assert found, f"no warm executor under {name}"
    return found[0]


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return -1
