"""The coordinator's round loop over Flower's Strategy API (configure/aggregate per round).

The same loop runs in-process, under Flower's Simulation Engine and under the Deployment
Engine: it only talks to a ``Grid``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from medfed.config import ExperimentConfig
from medfed.datasets.scaling import combine_moments
from medfed.errors import MedFedError
from medfed.models import build_model
from medfed.privacy.central import wrap_strategy
from medfed.privacy.compat import maybe_dp_ready
from medfed.strategies import build_strategy
from medfed.tasks import get_task

log = logging.getLogger("medfed.server")
EvaluateFn = Callable[[int, ArrayRecord, ConfigRecord], dict[str, Any]]
RoundFn = Callable[[dict[str, Any]], None]
# (grid, messages, timeout) -> replies; the Deployment Engine passes a faster poller
ExchangeFn = Callable[[Grid, list[Message], float], list[Message]]
# called after every completed round: (round, global arrays, strategy, summary, history)
CheckpointFn = Callable[[int, ArrayRecord, Any, "FederationSummary", list[dict[str, Any]]], None]


@dataclass
class FederationSummary:
    """What the server learnt from the sites' summaries: shapes, label space, scaling."""

    task: str
    input_shape: tuple[int, ...]
    n_classes: int
    n_train: int
    scaling: ConfigRecord = field(default_factory=ConfigRecord)


@dataclass
class FederationResult:
    arrays: ArrayRecord
    history: list[dict[str, Any]]
    summary: FederationSummary
    seconds: float


def wait_for_sites(grid: Grid, needed: int, timeout: float = 300.0,
                   expected: int | None = None) -> list[int]:
    """Node IDs once ``expected`` sites are connected, or ``needed`` of them at the timeout."""
    deadline = time.monotonic() + timeout
    expected = max(expected or needed, needed)
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline and len(nodes) >= needed:
            return nodes
        if time.monotonic() > deadline:
            raise MedFedError(f"only {len(nodes)} of the {needed} sites needed (strategy."
                              f"min_sites) connected within {timeout:.0f} s")
        time.sleep(1.0)


def ok_replies(replies, what: str) -> list[Message]:
    good = []
    for reply in replies:
        if reply.has_error():
            log.warning("site %s failed %s: %s", reply.metadata.src_node_id, what,
                        reply.error.reason)
        else:
            good.append(reply)
    return good


def summarise_sites(grid: Grid, nodes: list[int], timeout: float,
                    exchange: ExchangeFn | None = None) -> FederationSummary:
    """Ask every site for its summary; combine feature moments into federated scaling."""
    messages = [Message(RecordDict({"config": ConfigRecord()}), dst_node_id=node,
                        message_type="query.site_summary") for node in nodes]
    replies = ok_replies((exchange or default_exchange)(grid, messages, timeout), "site summary")
    if not replies:
        raise MedFedError("no site answered the site-summary query; check the clients' logs")
    first = replies[0].content["summary"]
    summary = FederationSummary(task=str(first["task"]),
                                input_shape=tuple(int(v) for v in first["input-shape"]),
                                n_classes=int(first["n-classes"]),
                                n_train=sum(int(r.content["metrics"]["num-examples"])
                                            for r in replies))
    if bool(first["standardize"]):
        moments = [(int(r.content["metrics"]["num-examples"]),
                    np.asarray(r.content["metrics"]["feature-sum"]),
                    np.asarray(r.content["metrics"]["feature-sumsq"])) for r in replies]
        mean, std = combine_moments(moments)
        summary.scaling = ConfigRecord({"feature-mean": mean.tolist(),
                                        "feature-std": std.tolist()})
    return summary


def initial_arrays(cfg: ExperimentConfig, summary: FederationSummary) -> ArrayRecord:
    torch.manual_seed(cfg.seed)
    task = get_task(summary.task)
    model = build_model(cfg.model.name, summary.input_shape, task.n_outputs(summary.n_classes),
                        **cfg.model_options())
    return ArrayRecord(maybe_dp_ready(model, cfg.privacy.mode).state_dict())


def default_exchange(grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
    return list(grid.send_and_receive(messages, timeout=timeout))


@dataclass
class ResumePoint:
    """Where a resumed run picks up: the last completed round and everything it produced."""

    round: int
    arrays: ArrayRecord
    summary: FederationSummary
    history: list[dict[str, Any]]
    strategy_state: dict[str, Any] = field(default_factory=dict)


def run_federation(grid: Grid, cfg: ExperimentConfig, *, evaluate_fn: EvaluateFn | None = None,
                   on_round: RoundFn | None = None, timeout: float = 3600.0,
                   wait_timeout: float = 300.0, exchange: ExchangeFn | None = None,
                   resume: ResumePoint | None = None, on_checkpoint: CheckpointFn | None = None,
                   restore_strategy: Callable[[Any, dict[str, Any]], None] | None = None,
                   min_replies: int = 0) -> FederationResult:
    """Run ``cfg.rounds`` rounds; ``evaluate_fn`` (simulation) scores the global model.

    Deployment hooks: ``exchange`` sends and collects messages, ``resume`` continues after
    its round, ``on_checkpoint`` persists each completed round, and a round with fewer than
    ``min_replies`` answering sites stops the run (the last checkpoint stays resumable).
    """
    start = time.perf_counter()
    send = exchange or default_exchange
    need = min(cfg.strategy.min_sites, cfg.partition.sites)
    # natural partitions have as many sites as the data has hospitals, not partition.sites
    expected = None if cfg.partition.scheme == "natural" else cfg.partition.sites
    nodes = wait_for_sites(grid, need, wait_timeout, expected=expected)
    if resume is not None:
        summary, arrays, history = resume.summary, resume.arrays, list(resume.history)
    else:
        summary = summarise_sites(grid, nodes, timeout, send)
        arrays = initial_arrays(cfg, summary)
        history = []
    strategy = wrap_strategy(build_strategy(cfg.strategy, len(nodes)), cfg, len(nodes))
    if resume is not None and restore_strategy is not None:
        restore_strategy(strategy, resume.strategy_state)
    first = resume.round + 1 if resume is not None else 1
    for rnd in range(first, cfg.rounds + 1):
        replies = send(grid, list(strategy.configure_train(
            rnd, arrays, ConfigRecord(dict(summary.scaling)), grid)), timeout)
        replies = [r for r in replies if not r.has_error()] if min_replies else list(replies)
        if len(replies) < min_replies:
            raise MedFedError(f"round {rnd}: only {len(replies)} site(s) answered within "
                              f"{timeout:.0f} s, strategy.min_sites is {min_replies}; bring the "
                              f"sites back, then resume (round {rnd - 1} is saved)")
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
        arrays = new_arrays if new_arrays is not None else arrays
        record: dict[str, Any] = {"round": rnd, "sites_trained": sum(
            1 for r in replies if not r.has_error())}
        record.update(refusals(rnd, replies))
        if train_metrics is not None:
            record["train_loss"] = float(train_metrics.get("train_loss", float("nan")))
        if rnd % cfg.evaluate_every == 0 or rnd == cfg.rounds:
            record.update(evaluate_round(grid, strategy, rnd, arrays, summary, cfg, timeout,
                                         evaluate_fn, send))
        history.append(record)
        if on_checkpoint:
            on_checkpoint(rnd, arrays, strategy, summary, history)
        if on_round:
            on_round(record)
    return FederationResult(arrays, history, summary, time.perf_counter() - start)


def refusals(rnd: int, replies: list[Message]) -> dict[str, Any]:
    """Sites that refused to train (e.g. privacy budget spent): logged and kept in history."""
    from medfed.privacy.site import BUDGET_EXHAUSTED_CODE

    refused = {str(r.metadata.src_node_id): r.error.reason for r in replies
               if r.has_error() and r.error.code == BUDGET_EXHAUSTED_CODE}
    for node, reason in refused.items():
        log.warning("round %d: node %s did not train: %s", rnd, node, reason)
    return {"sites_refused": refused} if refused else {}


def evaluate_round(grid: Grid, strategy, rnd: int, arrays: ArrayRecord,
                   summary: FederationSummary, cfg: ExperimentConfig, timeout: float,
                   evaluate_fn: EvaluateFn | None,
                   exchange: ExchangeFn | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if cfg.strategy.fraction_evaluate > 0:
        replies = (exchange or default_exchange)(grid, list(strategy.configure_evaluate(
            rnd, arrays, ConfigRecord(dict(summary.scaling)), grid)), timeout)
        metrics: MetricRecord | None = strategy.aggregate_evaluate(rnd, list(replies))
        if metrics is not None:
            out["federated_eval"] = {k: float(v) for k, v in metrics.items()}
    if evaluate_fn is not None:
        out.update(evaluate_fn(rnd, arrays, summary.scaling))
    return out
