"""A coordinator that crashed between a round's checkpoint and its audit entry: resume logs
the round from the checkpoint, once, and the chain stays intact."""

from __future__ import annotations

from flwr.app import ArrayRecord

from medfed.deploy import audit
from medfed.deploy.coordinator import _record_start
from medfed.federation.rounds import FederationSummary, ResumePoint


def _resume_point(rounds: int) -> ResumePoint:
    history = [{"round": r, "sites_trained": 3, "federated_eval": {"auroc": 0.8}}
               for r in range(1, rounds + 1)]
    summary = FederationSummary(task="binary", input_shape=(4,), n_classes=2)
    return ResumePoint(round=rounds, arrays=ArrayRecord(), summary=summary, history=history)


def _finished(log) -> list[int]:
    return [e["round"] for e in audit.entries(log) if e["event"] == "round_finished"
            and e["run_id"] == "run-1"]


def test_resume_logs_a_checkpointed_round_the_crash_left_unlogged(tmp_path):
    log = tmp_path / "audit.jsonl"
    run_dir = tmp_path / "runs" / "run-1"
    run_dir.mkdir(parents=True)
    audit.append(log, "run_started", run_id="run-1", rounds=5)
    audit.append(log, "round_finished", run_id="run-1", round=1)
    audit.append(log, "round_finished", run_id="other-run", round=2)  # another run's round 2
    # crash: round 2's checkpoint was saved, its audit entry was not
    _record_start(run_dir, log, "run-1", "flwr-7", 5, _resume_point(2))
    assert _finished(log) == [1, 2]
    recovered = [e for e in audit.entries(log) if e.get("recorded")]
    assert [e["round"] for e in recovered] == [2]
    assert audit.entries(log)[-1]["event"] == "run_resumed"
    assert audit.verify_log(log) == 5
    _record_start(run_dir, log, "run-1", "flwr-8", 5, _resume_point(2))  # a second resume
    assert _finished(log) == [1, 2]  # nothing logged twice
