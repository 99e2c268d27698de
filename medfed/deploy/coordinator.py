"""The coordinator of a real federation on Flower's Deployment Engine: the main of
``medfed.deploy.server_app``.

Run config keys (written by `medfed run`): ``experiment`` (ExperimentConfig JSON),
``state-dir`` (this run's folder under the coordinator's state folder), ``run-id``,
``resume`` (continue after the last completed round), ``round-timeout`` and
``wait-timeout`` (seconds), ``poll-interval`` (seconds between reply polls).

The run folder receives, atomically: ``round.safetensors`` after every round (resume),
``progress.json`` (live history), ``best.safetensors``/``final.safetensors`` with
``result.json`` at the end, and ``status.json``. The coordinator's hash-chained audit log
(``<state>/audit.jsonl``, its head signed after every entry) records runs, rounds, nodes
joining and leaving; every entry of a run carries its ``run_id`` and ``round`` (0 before
round 1). Each round's history record names the nodes that trained and evaluated in it.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, Message
from flwr.serverapp import Grid

from medfed.config import RUN_EXPERIMENT, ExperimentConfig, config_from_json
from medfed.deploy import audit, flower
from medfed.deploy.participation import RoundParticipation
from medfed.deploy.policy import record_refusal
from medfed.deploy.resume import load_round, restore_strategy, save_round
from medfed.deploy.state import was_interrupted
from medfed.deploy.supernode import fast_object_pulls
from medfed.federation import messages
from medfed.federation.checkpoint import arrays_to_bytes
from medfed.federation.rounds import (
    ExchangeFn,
    FederationResult,
    ResumePoint,
    RoundHooks,
    run_federation,
)
from medfed.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger("medfed.server")
HIGHER_IS_BETTER = ("auroc", "auprc", "balanced_accuracy", "accuracy", "c_index", "dice")


class SiteLedger:
    """Per-node facts the model card needs: training sizes, last metrics, privacy spent;
    per round, which nodes trained and evaluated and what each reported
    (``medfed.deploy.participation``)."""

    def __init__(self) -> None:
        self.sites: dict[str, dict[str, Any]] = {}
        self.rounds = RoundParticipation()

    def record(self, reply: Message, rnd: int = 0) -> None:
        node = str(reply.metadata.src_node_id)
        site = self.sites.setdefault(node, {})
        kind = reply.metadata.message_type.split(".")[0]
        self.rounds.record(reply, rnd)
        for name, metrics in reply.content.metric_records.items():
            values = {k: (v if not isinstance(v, list) else None) for k, v in metrics.items()}
            values = {k: float(v) for k, v in values.items() if isinstance(v, int | float)}
            if kind == "train":
                site["n_train"] = int(values.get(messages.NUM_EXAMPLES, site.get("n_train", 0)))
                privacy = {k: v for k, v in values.items()
                           if k.startswith(("dp_", "epsilon", "delta", "privacy"))}
                if privacy:
                    site["privacy"] = privacy
            elif kind == "evaluate" and name == messages.METRICS:
                site["n_test"] = int(values.pop(messages.NUM_EXAMPLES, 0))
                site["metrics"] = values


def make_exchange(poll: float, ledger: SiteLedger, audit_path: Path,
                  run_id: str) -> ExchangeFn:
    """Send messages, then poll for replies every ``poll`` s until all arrived or timeout."""

    def exchange(grid: Grid, batch: list[Message], timeout: float) -> list[Message]:
        if not batch:
            return []
        first, rnd = batch[0].metadata, audit.message_round(batch[0])
        if first.message_type == "train":
            audit.append(audit_path, "round_started", run_id=run_id, round=rnd,
                         nodes=sorted(str(m.metadata.dst_node_id) for m in batch))
        replies, missing = push_and_pull(grid, batch, timeout, poll)
        for reply in replies:
            if reply.has_error() and reply.error.code == messages.POLICY_REFUSED:
                record_refusal(audit_path, run_id, reply)
            elif reply.has_error():
                log.warning("site %s failed: %s", reply.metadata.src_node_id, reply.error.reason)
            else:
                ledger.record(reply, rnd)
        if missing:
            log.warning("no reply within %.0f s from node(s) %s", timeout, ", ".join(missing))
            audit.append(audit_path, "sites_timed_out", run_id=run_id, round=rnd,
                         nodes=missing, message_type=first.message_type)
        return replies

    return exchange


def push_and_pull(grid: Grid, batch: list[Message], timeout: float,
                  poll: float) -> tuple[list[Message], list[str]]:
    """Send ``batch``; the replies within ``timeout`` s and the node IDs that sent none."""
    pending = set(grid.push_messages(batch))
    targets = {m.metadata.message_id: m.metadata.dst_node_id for m in batch}
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending -= {r.metadata.reply_to_message_id for r in got}
        if pending:
            time.sleep(poll)
    return replies, sorted(str(targets.get(m, "?")) for m in pending)


def primary_score(record: dict[str, Any]) -> float | None:
    metrics = record.get("federated_eval") or {}
    for key in HIGHER_IS_BETTER:
        value = metrics.get(key)
        if value is not None and not math.isnan(value):
            return float(value)
    return None


class RoundWriter:
    """After each round: checkpoint, progress, best model, audit entries for nodes."""

    def __init__(self, run_dir: Path, audit_path: Path, run_id: str, grid: Grid,
                 best: float | None, ledger: SiteLedger | None = None) -> None:
        self.run_dir, self.audit_path, self.run_id, self.grid = run_dir, audit_path, run_id, grid
        self.best, self.ledger = best, ledger or SiteLedger()
        self.nodes: set[int] = set()
        self.round = 0  # the last completed round (the resumed one at first)

    def nodes_changed(self) -> None:
        now = set(self.grid.get_node_ids())
        for node in sorted(now - self.nodes):
            audit.append(self.audit_path, "node_joined", run_id=self.run_id, round=self.round,
                         node_id=str(node))
        for node in sorted(self.nodes - now):
            audit.append(self.audit_path, "node_left", run_id=self.run_id, round=self.round,
                         node_id=str(node))
        self.nodes = now

    def __call__(self, rnd: int, arrays: ArrayRecord, strategy, summary, history) -> None:
        self.round = rnd
        history[-1].update(self.ledger.rounds.facts(rnd))  # who trained/evaluated, when
        save_round(self.run_dir, rnd, arrays, strategy, summary, history)
        record = history[-1]
        score = primary_score(record)
        if score is not None and (self.best is None or score > self.best):
            self.best = score
            atomic_write_bytes(self.run_dir / "best.safetensors", arrays_to_bytes(arrays))
            atomic_write_json(self.run_dir / "best.json", {"round": rnd, "score": score})
        atomic_write_json(self.run_dir / "progress.json", {"history": history})
        audit.append(self.audit_path, "round_finished", run_id=self.run_id, round=rnd,
                     sites_trained=record.get("sites_trained"),
                     metrics=record.get("federated_eval") or {})
        self.nodes_changed()


def deployment_main(grid: Grid, context: Context) -> None:
    """Run (or resume) one deployed federation; every outcome lands in the run folder."""
    fast_object_pulls()
    conf = context.run_config
    cfg: ExperimentConfig = config_from_json(str(conf[RUN_EXPERIMENT]))
    run_dir = Path(str(conf[flower.RUN_STATE_DIR]))
    run_id = str(conf.get(flower.RUN_DEPLOY_ID, run_dir.name))
    audit_path = run_dir.parent.parent / "audit.jsonl"
    resume = load_round(run_dir) if bool(_setting(context, flower.RUN_RESUME)) else None
    best = _best_score(run_dir) if resume is not None else None
    _record_start(run_dir, audit_path, run_id, str(context.run_id), cfg.rounds, resume)
    ledger = SiteLedger()
    writer = RoundWriter(run_dir, audit_path, run_id, grid, best, ledger)
    writer.round = resume.round if resume is not None else 0
    hooks = _round_hooks(context, cfg, resume, writer, make_exchange(
        float(_setting(context, flower.RUN_POLL_INTERVAL)), ledger, audit_path, run_id))
    try:
        writer.nodes_changed()
        result = run_federation(grid, cfg, hooks)
    except Exception as exc:
        _record_failure(run_dir, audit_path, run_id, exc, min(writer.round + 1, cfg.rounds))
        raise
    _record_result(run_dir, run_id, result, ledger)
    atomic_write_json(run_dir / "status.json", {"status": "finished", "run_id": run_id})
    audit.append(audit_path, "run_finished", run_id=run_id, round=cfg.rounds, rounds=cfg.rounds)


def _setting(context: Context, key: str) -> Any:
    """A run config value of `medfed run`, with the app's default when it is absent."""
    return context.run_config.get(key, flower.DEPLOY_RUN_CONFIG[key])


def _best_score(run_dir: Path) -> float | None:
    path = run_dir / "best.json"
    return json.loads(path.read_text())["score"] if path.is_file() else None


def _record_start(run_dir: Path, audit_path: Path, run_id: str, flower_run_id: str,
                  rounds: int, resume: ResumePoint | None) -> None:
    if resume is not None:
        _record_checkpointed_rounds(audit_path, run_id, resume)
    audit.append(audit_path, "run_resumed" if resume else "run_started", run_id=run_id,
                 round=resume.round if resume else 0, flower_run_id=flower_run_id,
                 rounds=rounds, from_round=(resume.round + 1) if resume else 1)
    atomic_write_json(run_dir / "status.json", {"status": "running", "run_id": run_id,
                                                "flower_run_id": flower_run_id})


def _record_checkpointed_rounds(audit_path: Path, run_id: str, resume: ResumePoint) -> None:
    """A crash between a round's checkpoint and its audit entry leaves a finished round
    unlogged, and resume will not run it again: log it now, from the checkpoint."""
    logged = {e.get("round") for e in audit.entries(audit_path)
              if e.get("run_id") == run_id and e.get("event") == "round_finished"}
    for record in resume.history:
        if record.get("round") not in logged and record.get("round", 0) <= resume.round:
            audit.append(audit_path, "round_finished", run_id=run_id, round=record["round"],
                         sites_trained=record.get("sites_trained"),
                         metrics=record.get("federated_eval") or {},
                         recorded="on resume, from the round's checkpoint")


def _record_failure(run_dir: Path, audit_path: Path, run_id: str, exc: Exception,
                    rnd: int = 0) -> None:
    if not was_interrupted(run_dir):  # `medfed run` stopped it: the failure is the stop
        atomic_write_json(run_dir / "status.json", {"status": "failed", "run_id": run_id,
                                                    "error": str(exc)})
    audit.append(audit_path, "run_failed", run_id=run_id, round=rnd, error=str(exc)[:300])


def _round_hooks(context: Context, cfg: ExperimentConfig, resume: ResumePoint | None,
                 writer: RoundWriter, exchange: ExchangeFn) -> RoundHooks:
    """A real federation's round loop: fast polling, timeouts, checkpoints, resume."""
    return RoundHooks(exchange=exchange, timeout=float(_setting(context, flower.RUN_ROUND_TIMEOUT)),
                      wait_timeout=float(_setting(context, flower.RUN_WAIT_TIMEOUT)), resume=resume,
                      on_checkpoint=writer, restore_strategy=restore_strategy,
                      min_replies=min(cfg.strategy.min_sites, cfg.partition.sites),
                      expected_sites=cfg.partition.sites)  # hospitals, whatever the scheme


def _record_result(run_dir: Path, run_id: str, result: FederationResult,
                   ledger: SiteLedger) -> None:
    """The final model and ``result.json`` (history, per-site facts, the data's shape)."""
    atomic_write_bytes(run_dir / "final.safetensors", arrays_to_bytes(result.arrays))
    atomic_write_json(run_dir / "result.json", {
        "run_id": run_id, "history": result.history, "sites": ledger.sites,
        "summary": {"task": result.summary.task, "input_shape": list(result.summary.input_shape),
                    "n_classes": result.summary.n_classes, "n_train": result.summary.n_train,
                    # the model card's preprocessing: `medfed predict` scales rows with it
                    "scaling": {k: list(v) for k, v in result.summary.scaling.items()},
                    # what each site withheld from the scaling (small cells) or noised
                    "small_cells": result.summary.small_cells},
        "federated_s": result.seconds})
