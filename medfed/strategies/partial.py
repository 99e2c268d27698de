"""``fedavg-partial``: FedAvg over uneven sites, each array averaged over the sites that sent it.

Flower's FedAvg averages every array over every reply. In a multimodal federation a
clinical-only hospital cannot train the image branch and sends only the arrays it trained
(tabular branch and head); this strategy averages each array over the sites that sent it,
weighted by their examples, and keeps the current global value of an array nobody sent.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Strategy


def partial_average(current: ArrayRecord | None, updates: list[tuple[ArrayRecord, float]]
                    ) -> ArrayRecord:
    """Per key: example-weighted mean over the updates holding it; else ``current``'s value.

    Keys keep ``current``'s order (then any new key), dtypes keep the sender's (integer
    buffers are rounded back).
    """
    keys = list(current.keys()) if current is not None else []
    for record, _ in updates:
        keys += [k for k in record if k not in keys]
    out: dict[str, Array] = {}
    for key in keys:
        held = [(record[key].numpy(), w) for record, w in updates if key in record]
        total = sum(w for _, w in held)
        if not held or total <= 0:
            out[key] = current[key]
            continue
        mean = sum(a.astype(np.float64) * (w / total) for a, w in held)
        dtype = held[0][0].dtype
        value = np.rint(mean) if np.issubdtype(dtype, np.integer) else mean
        out[key] = Array(np.asarray(value, dtype=dtype))
    return ArrayRecord(out)


class FedAvgPartial(FedAvg):
    """FedAvg whose aggregation tolerates replies holding a subset of the arrays."""

    _current: ArrayRecord | None = None

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._current = arrays  # arrays no site updates this round stay as they are
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        # validate=False: Flower's check demands the same keys in every reply
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        updates = []
        for content in contents:
            weight = float(next(iter(content.metric_records.values()))[self.weighted_by_key])
            updates.append((content[self.arrayrecord_key], weight))
        arrays = partial_average(self._current, updates)
        return arrays, self.train_metrics_aggr_fn(contents, self.weighted_by_key)


def fill_missing(strategy: Strategy) -> Strategy:
    """Let any strategy aggregate replies that leave out site-local arrays (fedbn, perhead).

    Each reply's missing keys get the round's current global value before the strategy sees
    it, so FedAvg keeps them as they are and FedOpt sees a zero update for them. Only the
    server-side copy is filled: what the sites sent is unchanged on the wire.
    """
    configure, aggregate = strategy.configure_train, strategy.aggregate_train
    current: dict[str, ArrayRecord] = {}

    def configure_train(server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        current["arrays"] = arrays
        return configure(server_round, arrays, config, grid)

    def aggregate_train(server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        for msg in replies:
            if msg.has_error() or "arrays" not in current:
                continue
            for name, record in list(msg.content.array_records.items()):
                missing = [k for k in current["arrays"] if k not in record]
                if missing:
                    msg.content[name] = ArrayRecord(
                        {**{k: current["arrays"][k] for k in current["arrays"]},
                         **{k: record[k] for k in record}})
        return aggregate(server_round, replies)

    strategy.configure_train = configure_train  # type: ignore[method-assign]
    strategy.aggregate_train = aggregate_train  # type: ignore[method-assign]
    return strategy
