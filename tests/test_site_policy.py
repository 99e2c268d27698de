"""Hospitals approve what runs on their data: the coordinator's signature and the site policy.

Unit tests call the site's policy mod exactly as the ClientApp does (a Flower Message and
Context): every refusal reason, signature checks, approval. The loopback test runs the real
processes (SuperLink, two SuperNodes with policies, `medfed run`): an out-of-policy and a
foreign-signed experiment are refused with the reason shown at the coordinator and audit
entries at both ends, and an approved one runs.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, Message, RecordDict
from typer.testing import CliRunner

from medfed.config import NODE_DATA_PATH, RUN_EXPERIMENT, RUN_ID, validate
from medfed.deploy import audit, policy
from medfed.deploy.flower import NODE_AUDIT_LOG, RUN_JOB, RUN_SIGNATURE
from medfed.deploy.policy_mod import NO_POLICY, NODE_POLICY, NODE_SITE_STATE, policy_mod
from medfed.deploy.signing import ensure_signing_key
from medfed.errors import MedFedError
from medfed.federation import messages
from medfed.privacy.ledger import Ledger, Spend

BASE = {"dataset": {"name": "heart-disease"}, "model": {"name": "logreg"}, "rounds": 3,
        "privacy": {"mode": "dp-sgd", "epsilon": 1.0}}
POLICY = {"trusted_keys": ["coordinator.pub"], "datasets": ["heart-disease"],
          "tasks": ["binary"], "models": ["logreg", "mlp"],
          "privacy": {"modes": ["dp-sgd"], "max_epsilon_per_run": 1.0,
                      "max_epsilon_total": 2.0},
          "max_rounds": 10, "max_local_epochs": 2}


class Site:
    """A hospital's state folder with a policy, a trusted coordinator key and its ledger."""

    def __init__(self, root: Path, **changes) -> None:
        self.state = root / "site"
        self.state.mkdir()
        self.coordinator = ensure_signing_key(root / "coordinator")
        shutil.copy(root / "coordinator" / "coordinator.pub", self.state / "coordinator.pub")
        self.write_policy(**changes)
        self.ledgers = root / "ledgers"
        self.log = self.state / "audit.jsonl"

    def write_policy(self, **changes) -> None:
        (self.state / policy.POLICY_FILE).write_text(json.dumps({**POLICY, **changes}))

    def context(self, cfg_json: str, signature: str | None, where: str | None = None,
                job: str = "train") -> Context:
        run_config = {RUN_EXPERIMENT: cfg_json, RUN_ID: "run-1", RUN_JOB: job}
        if signature is not None:
            run_config[RUN_SIGNATURE] = signature
        return Context(run_id=5, node_id=1, state=RecordDict(), run_config=run_config,
                       node_config={NODE_POLICY: where or str(self.state / policy.POLICY_FILE),
                                    NODE_SITE_STATE: str(self.state),
                                    NODE_DATA_PATH: str(self.state / "hospital-a"),
                                    NODE_AUDIT_LOG: str(self.log),
                                    "privacy-ledger-dir": str(self.ledgers)})

    def send(self, cfg: dict | None = None, key: Ed25519PrivateKey | None = None,
             signed: bool = True, tamper: bool = False, where: str | None = None,
             job: str = "train"):
        """(reply, whether a handler ran) for one train message of experiment ``cfg``."""
        cfg_json = validate({**BASE, **(cfg or {})}).to_json()
        signature = policy.sign_experiment(cfg_json, key or self.coordinator) if signed else None
        if tamper:
            cfg_json = cfg_json.replace('"rounds":3', '"rounds":4')
        ran = []

        def handler(msg: Message, context: Context) -> Message:
            ran.append(msg.metadata.message_type)
            return Message(RecordDict({"metrics": ConfigRecord({"ok": 1})}), reply_to=msg)

        from flwr.supercore.task_identity import TaskIdentity

        # a server-side identity, as the in-process engine sets it
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 5, 1, 0
        msg = Message(RecordDict({messages.CONFIG: ConfigRecord()}), dst_node_id=1,
                      message_type="train")
        return policy_mod(msg, self.context(cfg_json, signature, where, job), handler), bool(ran)


def refusal(reply: Message, ran: bool) -> str:
    assert not ran, "the handler ran although the site refused"
    assert reply.has_error() and reply.error.code == messages.POLICY_REFUSED
    return reply.error.reason


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDFED_PRIVACY_DIR", str(tmp_path / "default-ledgers"))
    return Site(tmp_path)


def test_in_policy_signed_experiment_runs_and_is_logged(site):
    reply, ran = site.send()
    assert ran and not reply.has_error()
    accepted = [e for e in audit.entries(site.log) if e["event"] == "experiment_accepted"]
    assert len(accepted) == 1 and len(accepted[0]["experiment_sha256"]) == 64
    assert accepted[0]["key_id"] == policy.key_id(site.coordinator.public_key())


@pytest.mark.parametrize(("change", "reason"), [
    ({"privacy": {"mode": "none"}}, "privacy.mode none, its policy requires dp-sgd"),
    ({"dataset": {"name": "breast-cancer"}},
     "dataset.name breast-cancer, its policy allows heart-disease"),
    ({"model": {"name": "cox"}}, "model.name cox, its policy allows logreg, mlp"),
    ({"rounds": 11}, "rounds 11, its policy allows at most 10"),
    ({"train": {"local_epochs": 3}}, "train.local_epochs 3, its policy allows at most 2"),
    ({"privacy": {"mode": "dp-sgd", "epsilon": 2.5}},
     "privacy.epsilon 2.5 (the total this site's ledger may reach), its policy allows 2 in "
     "total"),
    ({"privacy": {"mode": "dp-sgd", "epsilon": 1.5}},
     "this run may spend epsilon 1.5 (privacy.epsilon 1.5 minus 0 already spent here), its "
     "policy allows 1 per run"),
])
def test_each_policy_rule_refuses_with_its_reason_and_an_audit_entry(site, change, reason):
    reply, ran = site.send(change)
    assert refusal(reply, ran) == reason
    (entry,) = [e for e in audit.entries(site.log) if e["event"] == "experiment_refused"]
    assert entry["reason"] == reason and entry["message_type"] == "train"
    assert audit.verify_log(site.log) >= 1


def test_task_rule_and_epsilon_caps_without_a_mode_rule(site):
    site.write_policy(tasks=["survival"])
    assert refusal(*site.send()) == "task binary, its policy allows survival"
    site.write_policy(privacy={"max_epsilon_total": 2.0})  # no mode rule, but epsilon capped
    assert "privacy.mode none spends an unbounded epsilon" in refusal(
        *site.send({"privacy": {"mode": "none"}}))


def test_per_run_epsilon_counts_what_the_ledger_already_spent(site):
    """privacy.epsilon 2 after 1.36 spent elsewhere: this run may spend 0.64 <= 1, accepted;
    with nothing spent it could spend 2 > 1, refused."""
    assert "its policy allows 1 per run" in refusal(
        *site.send({"privacy": {"mode": "dp-sgd", "epsilon": 2.0}}))
    spent = Ledger.open(site.ledgers, "hospital-a")
    spent.record(Spend(run_id="earlier", round=1, steps=50, sample_rate=0.1,
                       noise_multiplier=2.5, max_grad_norm=1.0, epsilon_after=0.0, delta=1e-5,
                       accountant="rdp"))
    before = spent.epsilon(1e-5)
    assert 1.0 <= before < 2.0  # the earlier run really spent between 1 and 2
    reply, ran = site.send({"privacy": {"mode": "dp-sgd", "epsilon": 2.0}})
    assert ran and not reply.has_error()


def test_a_statistics_query_is_checked_for_signature_and_dataset_only(site):
    """`medfed stats` trains nothing: the training rules (mode, rounds, epsilon) do not
    apply, its own noise and floor do; the signature and the dataset rule still do."""
    reply, ran = site.send({"privacy": {"mode": "none"}, "rounds": 50}, job="stats")
    assert ran and not reply.has_error()
    assert "dataset.name breast-cancer" in refusal(
        *site.send({"dataset": {"name": "breast-cancer"}}, job="stats"))
    assert "not signed" in refusal(*site.send(signed=False, job="stats"))


def test_signature_checks(site, tmp_path):
    assert refusal(*site.send(signed=False)) == "the experiment is not signed by the coordinator"
    foreign = Ed25519PrivateKey.generate()
    reason = refusal(*site.send(key=foreign))
    assert reason == (f"the experiment is signed by key {policy.key_id(foreign.public_key())}, "
                      "which its policy does not trust")
    assert "does not match its config" in refusal(*site.send(tamper=True))
    # a second trusted key (e.g. during a key rotation) is accepted
    other = ensure_signing_key(tmp_path / "rotated")
    shutil.copy(tmp_path / "rotated" / "coordinator.pub", site.state / "rotated.pub")
    site.write_policy(trusted_keys=["coordinator.pub", "rotated.pub"])
    reply, ran = site.send(key=other)
    assert ran and not reply.has_error()


def test_no_policy_mode_runs_anything_but_logs_it(site):
    reply, ran = site.send({"privacy": {"mode": "none"}}, signed=False, where=NO_POLICY)
    assert ran and not reply.has_error()
    (entry,) = [e for e in audit.entries(site.log) if e["event"] == "experiment_accepted"]
    assert entry["policy"].startswith("none")


def test_a_broken_policy_refuses_everything(site):
    (site.state / policy.POLICY_FILE).write_text("trusted_keys: [coordinator.pub]\nmodel: [x]\n")
    assert "'model': extra inputs are not permitted" in refusal(*site.send())
    with pytest.raises(MedFedError, match="site policy key 'model'"):
        policy.load_policy(site.state / policy.POLICY_FILE)
    (site.state / policy.POLICY_FILE).write_text("trusted_keys: [missing.pub]\n")
    with pytest.raises(MedFedError, match="public key not found"):
        policy.load_policy(site.state / policy.POLICY_FILE)


def test_approval_pending_then_approved_with_diff(site):
    from medfed.cli.deploy import client_app

    site.write_policy(require_approval=True)
    reason = refusal(*site.send())
    assert "is not approved at this site yet" in reason and "medfed client approve" in reason
    (pending,) = policy.pending(site.state)
    runner = CliRunner()
    shown = runner.invoke(client_app, ["approve", "--state", str(site.state)], input="n\n")
    assert shown.exit_code == 0 and "not approved" in shown.output
    assert '+  "rounds": 3' in shown.output  # nothing approved before: the whole config
    assert refusal(*site.send())  # still refused
    done = runner.invoke(client_app, ["approve", "--state", str(site.state), "--yes"])
    assert done.exit_code == 0 and f"approved {pending['experiment_sha256'][:12]}" in done.output
    reply, ran = site.send()
    assert ran and not reply.has_error()
    assert [e["event"] for e in audit.entries(site.log)].count("experiment_approved") == 1
    # a changed experiment waits again; the diff shows only what changed
    assert refusal(*site.send({"rounds": 5}))
    diff = runner.invoke(client_app, ["approve", "--state", str(site.state), "--yes"])
    assert '-  "rounds": 3,' in diff.output and '+  "rounds": 5,' in diff.output
    assert "changes from the last approved experiment" in diff.output
    assert "heart-disease" not in diff.output  # unchanged keys far from the change: left out
    assert not policy.pending(site.state)


def test_client_start_without_a_policy_stops_with_one_line(tmp_path):
    from medfed.cli.deploy import _site_policy

    with pytest.raises(MedFedError, match="no site policy") as err:
        _site_policy(None, False, tmp_path, None)
    assert "--no-policy" in str(err.value)
    config, floor = _site_policy(None, True, tmp_path, None)
    assert config[NODE_POLICY] == NO_POLICY and floor is None
    site = Site(tmp_path)
    site.write_policy(privacy={"min_count": 25})
    config, floor = _site_policy(None, False, site.state, 12)
    assert floor == 25 and config[NODE_POLICY].endswith(policy.POLICY_FILE)


def test_signing_is_fast_enough_for_every_message(site):
    cfg_json = validate(BASE).to_json()
    signature = policy.sign_experiment(cfg_json, site.coordinator)
    keys = [site.coordinator.public_key()]
    start = time.perf_counter()
    for _ in range(200):
        policy.verify_experiment(cfg_json, signature, keys)
    assert (time.perf_counter() - start) / 200 < 0.01


# --- loopback: real coordinator and hospitals -------------------------------------------------

LOOPBACK_CONFIG = """\
name: hd-policy
dataset: {name: heart-disease}
partition: {sites: 2}
model: {name: logreg}
strategy: {name: fedavg, min_sites: 1}
train: {lr: 0.05, batch_size: 16}
rounds: 2
seed: 3
"""


@pytest.fixture(scope="module")
def policed(tmp_path_factory):
    """A coordinator and two hospitals with site-policy.yaml next to their node keys:
    hospital-a requires DP-SGD, hospital-b requires approval of every new experiment."""
    from tests.deploy_procs import Procs, free_port, run_cli, wait_for, write_heart_site

    root = tmp_path_factory.mktemp("policed")
    procs, port = Procs(root), free_port()
    state, certs = root / "state", root / "certs"
    (root / "hd.yaml").write_text(LOOPBACK_CONFIG)
    for name, n, seed in (("a", 200, 1), ("b", 160, 2)):
        write_heart_site(root / f"hospital-{name}", n, seed=seed)
    for args in (["certs", "init", str(certs), "--server-name", "coord.test"],
                 ["keys", "create", str(root / "keys-a")],
                 ["keys", "create", str(root / "keys-b")]):
        done = run_cli(args, root)
        assert done.returncode == 0, done.stderr
    policies = {"a": {"trusted_keys": ["coordinator.pub"], "privacy": {"modes": ["dp-sgd"]}},
                "b": {"trusted_keys": ["coordinator.pub"], "require_approval": True}}
    try:
        procs.start("server", ["server", "start", "--certs", str(certs), "--state", str(state),
                               "--address", f"127.0.0.1:{port}"])
        wait_for(lambda: "Uvicorn running" in procs.log("server"), 120, "the SuperLink")
        for name in ("a", "b"):
            done = run_cli(["nodes", "add", str(root / f"keys-{name}" / "node.pub"), "--name",
                            f"hospital-{name}", "--state", str(state)], root)
            assert done.returncode == 0, done.stderr + done.stdout
            shutil.copy(state / "coordinator.pub", root / f"keys-{name}" / "coordinator.pub")
            (root / f"keys-{name}" / policy.POLICY_FILE).write_text(json.dumps(policies[name]))
            procs.start(f"client-{name}", [  # the policy is found next to node.key
                "client", "start", "--superlink", f"localhost:{port}", "--root-cert",
                str(certs / "ca.pem"), "--key", str(root / f"keys-{name}" / "node.key"),
                "--data", str(root / f"hospital-{name}"), "--runtime-port", str(free_port())])
        yield root, state, port
    finally:
        procs.stop_all()


def _run(root: Path, state: Path, port: int, *extra: str):
    from tests.deploy_procs import run_cli

    return run_cli(["run", str(root / "hd.yaml"), "--state", str(state), "--superlink",
                    f"localhost:{port}", "--round-timeout", "60", "--no-track", *extra], root,
                   timeout=400)


def _events(log: Path, event: str) -> list[dict]:
    return [e for e in audit.entries(log) if e["event"] == event]


@pytest.mark.deploy
def test_loopback_out_of_policy_refused_foreign_refused_approved_runs(policed):
    root, state, port = policed
    mode_refusal = "site hospital-a refused: privacy.mode none, its policy requires dp-sgd"
    # 1. privacy.mode none: hospital-a's policy requires DP-SGD, hospital-b has not approved
    first = _run(root, state, port)
    assert first.returncode == 2, first.stderr[-2000:]
    assert mode_refusal in first.stderr
    assert "site hospital-b refused: experiment" in first.stderr
    assert "is not approved at this site yet" in first.stderr
    refused = _events(state / "audit.jsonl", "site_refused")
    assert {e["site"] for e in refused} == {"hospital-a", "hospital-b"}
    (site_a,) = {e["reason"] for e in _events(root / "keys-a" / "audit.jsonl",
                                              "experiment_refused")}
    assert site_a == "privacy.mode none, its policy requires dp-sgd"
    assert not _events(root / "keys-a" / "audit.jsonl", "sent_to_coordinator")
    # 2. hospital-b approves it; the same experiment now trains at b, a still refuses
    approved = run_cli_approve(root / "keys-b")
    assert approved.returncode == 0 and "approved" in approved.stdout, approved.stderr
    second = _run(root, state, port)
    assert second.returncode == 0, second.stderr[-2000:]
    assert mode_refusal in second.stderr
    run_dir = max((state / "runs").iterdir(), key=lambda p: p.stat().st_mtime)
    history = json.loads((run_dir / "result.json").read_text())["history"]
    assert [h["sites_trained"] for h in history] == [1, 1]
    assert all("policy requires dp-sgd" in next(iter(h["sites_refused"].values()))
               for h in history)
    assert _events(root / "keys-b" / "audit.jsonl", "sent_to_coordinator")
    # 3. a coordinator key the hospitals never trusted signs the next experiment
    for name in ("coordinator-signing.key", "coordinator.pub"):
        (state / name).rename(state / f"{name}.real")
    try:
        foreign = _run(root, state, port)
        new_key = policy.key_id(policy.load_public_key(state / "coordinator.pub"))
    finally:
        for name in ("coordinator-signing.key", "coordinator.pub"):
            (state / f"{name}.real").replace(state / name)
    assert foreign.returncode == 2
    for name in ("a", "b"):
        assert (f"site hospital-{name} refused: the experiment is signed by key {new_key}, "
                "which its policy does not trust") in foreign.stderr
        reasons = [e["reason"] for e in _events(root / f"keys-{name}" / "audit.jsonl",
                                                "experiment_refused")]
        assert any(new_key in r for r in reasons)
    for log in (state / "audit.jsonl", root / "keys-a" / "audit.jsonl",
                root / "keys-b" / "audit.jsonl"):
        assert audit.verify_log(log) > 0


def run_cli_approve(site_state: Path):
    from tests.deploy_procs import run_cli

    return run_cli(["client", "approve", "--state", str(site_state), "--yes"], site_state)
