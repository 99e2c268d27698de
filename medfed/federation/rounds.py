"""The coordinator's round loop: one Flower Strategy driving the sites through a ``Grid``.

The same loop runs in-process, under Flower's Simulation Engine and under the Deployment
Engine: it only talks to a ``Grid``. Each round follows Flower's ``Strategy.start`` step for
step (configure_train -> send -> aggregate_train -> configure_evaluate -> send ->
aggregate_evaluate -> central evaluation). It does not call ``Strategy.start`` itself
because Flower 1.42's ``start`` always begins at round 1 (a resumed run must continue at round
k + 1: the round number keys the privacy ledgers and the seeds), evaluates every round (MedFed
evaluates every ``evaluate_every`` rounds), drops the error replies of sites that refused to
train (the report lists them) and has no hook after a round to checkpoint it or to stop when
fewer than ``strategy.min_sites`` answered.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from medfed.config import ExperimentConfig
from medfed.datasets.base import DataInfo, DataShape
from medfed.datasets.scaling import combine_moments
from medfed.errors import MedFedError
from medfed.federation import messages
from medfed.federation.secagg import secure_train
from medfed.models import for_experiment
from medfed.privacy.central import wrap_strategy
from medfed.seeds import globals_seeded
from medfed.strategies import build_strategy
from medfed.strategies.partial import fill_missing

log = logging.getLogger("medfed.server")
EvaluateFn = Callable[[int, ArrayRecord, ConfigRecord], dict[str, Any]]
RoundFn = Callable[[dict[str, Any]], None]
# (grid, messages, timeout) -> replies; the Deployment Engine passes a faster poller
ExchangeFn = Callable[[Grid, list[Message], float], list[Message]]
# called after every completed round: (round, global arrays, strategy, summary, history)
CheckpointFn = Callable[[int, ArrayRecord, Any, "FederationSummary", list[dict[str, Any]]], None]


@dataclass(frozen=True)
class FederationSummary(DataShape):
    """What the server learnt from the sites' summaries: the data's shape and label space
    (``DataShape``), the training rows of all sites and the federated feature scaling."""

    n_train: int = 0
    scaling: ConfigRecord = field(default_factory=ConfigRecord)
    small_cells: dict[str, Any] = field(default_factory=dict)  # what sites withheld/noised

    @property
    def info(self) -> DataInfo:
        """The ``DataInfo`` a model is built from (standardised iff there is a scaling)."""
        return DataInfo(self.task, self.input_shape, self.n_classes,
                        standardize=messages.FEATURE_MEAN in self.scaling)


@dataclass
class FederationResult:
    arrays: ArrayRecord
    history: list[dict[str, Any]]
    summary: FederationSummary
    seconds: float


@dataclass
class ResumePoint:
    """Where a resumed run picks up: the last completed round and everything it produced."""

    round: int
    arrays: ArrayRecord
    summary: FederationSummary
    history: list[dict[str, Any]]
    strategy_state: dict[str, Any] = field(default_factory=dict)


def default_exchange(grid: Grid, batch: list[Message], timeout: float) -> list[Message]:
    return list(grid.send_and_receive(batch, timeout=timeout))


@dataclass
class RoundHooks:
    """What differs between a simulation and a real federation; every field is optional.

    Simulation: ``evaluate_fn`` scores the global model on the virtual sites, ``on_round``
    shows progress. Deployment: ``exchange`` polls faster than Flower's default, ``resume``
    continues after its round, ``on_checkpoint`` persists each round, ``restore_strategy``
    puts the strategy's state (e.g. FedAdam's moments) back, and a round with fewer than
    ``min_replies`` answering sites stops the run (the last checkpoint stays resumable).
    """

    evaluate_fn: EvaluateFn | None = None
    on_round: RoundFn | None = None
    exchange: ExchangeFn = default_exchange
    timeout: float = 3600.0
    wait_timeout: float = 300.0
    resume: ResumePoint | None = None
    on_checkpoint: CheckpointFn | None = None
    restore_strategy: Callable[[Any, dict[str, Any]], None] | None = None
    min_replies: int = 0
    # sites to wait for before the first round (a real federation: partition.sites, also
    # with scheme natural); None: partition.sites unless the scheme is natural
    expected_sites: int | None = None
    # simulation: the experiment seed for what Flower's strategies draw from Python's and
    # numpy's global generators (site sampling, central-DP noise); None in a real federation,
    # where noise drawn from a known seed could be subtracted
    seed: int | None = None


def exchange(grid: Grid, batch: list[Message], hooks: RoundHooks) -> list[Message]:
    """Send ``batch``; in simulation, the replies in an order fixed by their content, not by
    who answered first: aggregation is a float sum, and its order changes the last bits. A
    real federation (no seed) claims no bit-reproducibility and skips hashing the weights."""
    for message in batch:  # Flower's group_id names the round: both ends and replies see it
        message.metadata.group_id = message.metadata.group_id or str(message_round(message))
    replies = hooks.exchange(grid, batch, hooks.timeout)
    return replies if hooks.seed is None else sorted(replies, key=reply_key)


def message_round(message: Message) -> int:
    """The round a message belongs to: the ``server-round`` that Flower's strategies write
    into its config; 0 for the site summary before round 1."""
    for record in message.content.config_records.values():
        if isinstance(record.get(messages.SERVER_ROUND), int):
            return int(record[messages.SERVER_ROUND])
    return 0


def reply_key(reply: Message) -> bytes:
    digest = hashlib.sha256()
    if reply.has_error():
        digest.update(f"error {reply.error.code} {reply.error.reason}".encode())
        return b"\x01" + digest.digest()  # error replies last
    for name, record in sorted(reply.content.items()):
        digest.update(name.encode())
        if isinstance(record, ArrayRecord):
            for key, array in record.items():
                digest.update(key.encode() + array.data)
        else:
            digest.update(repr(sorted(record.items())).encode())
    return b"\x00" + digest.digest()


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
            log.warning("starting with %d of the %d sites expected (partition.sites): the "
                        "wait timed out after %.0f s", len(nodes), expected, timeout)
            return nodes
        if time.monotonic() > deadline:
            raise MedFedError(f"only {len(nodes)} of the {needed} sites needed (strategy."
                              f"min_sites) connected within {timeout:.0f} s")
        time.sleep(0.5)


def ok_replies(replies: list[Message], what: str) -> list[Message]:
    good = []
    for reply in replies:
        if reply.has_error():
            log.warning("site %s failed %s: %s", reply.metadata.src_node_id, what,
                        reply.error.reason)
        else:
            good.append(reply)
    return good


def summarise_sites(grid: Grid, nodes: list[int], hooks: RoundHooks) -> FederationSummary:
    """Ask every site for its summary; combine feature moments into federated scaling."""
    batch = [Message(RecordDict({messages.CONFIG: ConfigRecord()}), dst_node_id=node,
                     message_type=messages.SITE_SUMMARY) for node in nodes]
    replies = ok_replies(exchange(grid, batch, hooks), "site summary")
    if not replies:
        raise MedFedError("no site answered the site-summary query; check the clients' logs")
    first = replies[0].content[messages.SUMMARY]
    counts = [r.content[messages.METRICS] for r in replies]
    scaling = ConfigRecord()
    if bool(first[messages.STANDARDIZE]):
        # FEATURE_N: rows per feature, 0 where a site withheld a small cell
        moments = [(np.asarray(c.get(messages.FEATURE_N, c[messages.NUM_EXAMPLES])),
                    np.asarray(c[messages.FEATURE_SUM]),
                    np.asarray(c[messages.FEATURE_SUMSQ])) for c in counts]
        scaling = messages.scaling_record(combine_moments(moments))
    return FederationSummary(task=str(first[messages.TASK]),
                             input_shape=tuple(int(v) for v in first[messages.INPUT_SHAPE]),
                             n_classes=int(first[messages.N_CLASSES]),
                             n_train=sum(int(c[messages.NUM_EXAMPLES]) for c in counts),
                             scaling=scaling, small_cells=small_cells(replies))


def small_cells(replies: list[Message]) -> dict[str, Any]:
    """What the sites withheld from the scaling (feature indexes per site) or noised, and the
    features no site sent (left unscaled): report.json's ``small_cells``."""
    sites, unsent = {}, None
    for reply in replies:
        metrics = reply.content[messages.METRICS]
        if messages.FEATURE_N not in metrics:
            continue
        n = np.asarray(metrics[messages.FEATURE_N])
        unsent = (n == 0) if unsent is None else unsent & (n == 0)
        sites[str(reply.metadata.src_node_id)] = {
            "min_count": int(metrics[messages.MIN_COUNT]),
            "withheld_features": np.flatnonzero(n == 0).tolist(),
            "count_like_sums_noised": bool(metrics[messages.NOISED])}
    if not sites:
        return {}
    return {"sites": sites, "unscaled_features": np.flatnonzero(unsent).tolist()}


def initial_arrays(cfg: ExperimentConfig, summary: FederationSummary) -> ArrayRecord:
    return ArrayRecord(for_experiment(cfg, summary.info, seed=cfg.seed).state_dict())


def run_federation(grid: Grid, cfg: ExperimentConfig,
                   hooks: RoundHooks | None = None) -> FederationResult:
    """Run rounds up to ``cfg.rounds`` (from the hooks' resume point, if any)."""
    hooks = hooks or RoundHooks()
    start = time.perf_counter()
    need = min(cfg.strategy.min_sites, cfg.partition.sites)
    # natural partitions have as many sites as the data has hospitals, not partition.sites
    expected = None if cfg.partition.scheme == "natural" else cfg.partition.sites
    expected = hooks.expected_sites or expected
    nodes = wait_for_sites(grid, need, hooks.wait_timeout, expected=expected)
    if hooks.resume is not None:
        point = hooks.resume
        summary, arrays, history = point.summary, point.arrays, list(point.history)
    else:
        summary = summarise_sites(grid, nodes, hooks)
        arrays, history = initial_arrays(cfg, summary), []
    strategy = wrap_strategy(build_strategy(cfg.strategy, len(nodes)), cfg, len(nodes))
    if {"fedbn", "perhead"} & set(cfg.personalize):  # replies leave out site-local layers
        strategy = fill_missing(strategy)
    if hooks.resume is not None and hooks.restore_strategy is not None:
        hooks.restore_strategy(strategy, hooks.resume.strategy_state)
    first = hooks.resume.round + 1 if hooks.resume is not None else 1
    for rnd in range(first, cfg.rounds + 1):
        arrays, record = run_round(grid, strategy, rnd, arrays, summary, cfg, hooks)
        history.append(record)
        if hooks.on_checkpoint:
            hooks.on_checkpoint(rnd, arrays, strategy, summary, history)
        if hooks.on_round:
            hooks.on_round(record)
    return FederationResult(arrays, history, summary, time.perf_counter() - start)


def run_round(grid: Grid, strategy: Any, rnd: int, arrays: ArrayRecord,
              summary: FederationSummary, cfg: ExperimentConfig,
              hooks: RoundHooks) -> tuple[ArrayRecord, dict[str, Any]]:
    """One round: train, aggregate, and (every ``evaluate_every`` rounds) evaluate."""
    with globals_seeded(hooks.seed, rnd, "configure-train"):  # Flower samples sites here
        batch = list(strategy.configure_train(rnd, arrays, ConfigRecord(dict(summary.scaling)),
                                              grid))
    secure: dict[str, Any] = {}
    if cfg.strategy.secure == "none":
        replies = exchange(grid, batch, hooks)
    else:  # SecAgg+: the strategy gets each survivor's metrics with the sum's mean only
        result = secure_train(batch, lambda msgs: exchange(grid, msgs, hooks), rnd, arrays,
                              cfg.strategy.secagg, summary.n_train)
        replies, secure = result.replies, result.record
    refused = refusals(rnd, replies)  # before the error replies are dropped below
    if hooks.min_replies:
        replies = [r for r in replies if not r.has_error()]
        if len(replies) < hooks.min_replies:
            raise MedFedError(f"round {rnd}: only {len(replies)} site(s) answered within "
                              f"{hooks.timeout:.0f} s, strategy.min_sites is "
                              f"{hooks.min_replies}; bring the sites back, then resume "
                              f"(round {rnd - 1} is saved)")
    with globals_seeded(hooks.seed, rnd, "aggregate-train"):  # central DP adds noise here
        new_arrays, train_metrics = strategy.aggregate_train(rnd, replies)
    arrays = new_arrays if new_arrays is not None else arrays
    record: dict[str, Any] = {"round": rnd,
                              "sites_trained": sum(1 for r in replies if not r.has_error())}
    record.update(refused)
    record.update(secure)
    if train_metrics is not None:
        record["train_loss"] = float(train_metrics.get("train_loss", float("nan")))
    if rnd % cfg.evaluate_every == 0 or rnd == cfg.rounds:
        record.update(evaluate_round(grid, strategy, rnd, arrays, summary, cfg, hooks))
    return arrays, record


def refusals(rnd: int, replies: list[Message]) -> dict[str, Any]:
    """Sites that refused to train (privacy budget spent, or the experiment is outside their
    policy): logged and kept in history."""
    refused = {str(r.metadata.src_node_id): r.error.reason for r in replies
               if r.has_error() and r.error.code in (messages.BUDGET_EXHAUSTED,
                                                     messages.POLICY_REFUSED)}
    for node, reason in refused.items():
        log.warning("round %d: node %s did not train: %s", rnd, node, reason)
    return {"sites_refused": refused} if refused else {}


def evaluate_round(grid: Grid, strategy: Any, rnd: int, arrays: ArrayRecord,
                   summary: FederationSummary, cfg: ExperimentConfig,
                   hooks: RoundHooks) -> dict[str, Any]:
    """The sites' own evaluation (aggregated by the strategy), then the central one."""
    out: dict[str, Any] = {}
    if cfg.strategy.fraction_evaluate > 0:
        with globals_seeded(hooks.seed, rnd, "configure-evaluate"):
            batch = list(strategy.configure_evaluate(
                rnd, arrays, ConfigRecord(dict(summary.scaling)), grid))
        metrics: MetricRecord | None = strategy.aggregate_evaluate(
            rnd, exchange(grid, batch, hooks))
        if metrics is not None:
            out["federated_eval"] = {k: float(v) for k, v in metrics.items()}
    if hooks.evaluate_fn is not None:
        out.update(hooks.evaluate_fn(rnd, arrays, summary.scaling))
    return out
