"""Aggregation strategies by name: Flower's own classes, configured from the experiment YAML."""

from __future__ import annotations

import inspect
import math
from typing import Any

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from medfed.config import StrategyConfig
from medfed.errors import MedFedError, warn
from medfed.strategies.partial import FedAvgPartial

STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
    "fedavgm": FedAvgM,
    "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "fedavg-partial": FedAvgPartial,  # uneven sites: each array over the sites that sent it
}
# set by MedFed itself; not for the YAML
_MANAGED = {"fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes",
            "min_available_nodes", "weighted_by_key", "arrayrecord_key", "configrecord_key",
            "train_metrics_aggr_fn", "evaluate_metrics_aggr_fn"}


def weighted_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """Example-weighted mean of each metric over the sites where it is defined (not NaN)."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for record in records:
        for metrics in record.metric_records.values():
            w = float(metrics[weight_key])
            for key, value in metrics.items():
                if key == weight_key or isinstance(value, list) or math.isnan(float(value)):
                    continue
                sums[key] = sums.get(key, 0.0) + w * float(value)
                weights[key] = weights.get(key, 0.0) + w
    return MetricRecord({k: sums[k] / weights[k] for k in sums if weights[k] > 0})


def strategy_params(name: str) -> list[str]:
    if name not in STRATEGIES:
        raise MedFedError(f"strategy.name: unknown strategy {name!r}; choose one of "
                          f"{', '.join(STRATEGIES)}")
    params = inspect.signature(STRATEGIES[name].__init__).parameters
    return [p for p in params if p != "self" and p not in _MANAGED]


def build_strategy(cfg: StrategyConfig, n_sites: int) -> Strategy:
    """Instantiate Flower's strategy ``cfg.name`` with the YAML's extra keys as arguments."""
    allowed = strategy_params(cfg.name)
    options: dict[str, Any] = dict(cfg.model_extra or {})
    foreign = sorted(k for k in set(options) - set(allowed)
                     if any(k in strategy_params(other) for other in STRATEGIES))
    if foreign:  # e.g. fedadam's eta after `--set strategy.name=fedavg`
        warn(f"strategy option(s) {foreign} belong to another strategy; dropped",
             where=f"strategy {cfg.name!r}", fix=f"{cfg.name} takes {allowed}")
        options = {k: v for k, v in options.items() if k not in foreign}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise MedFedError(f"strategy: unknown option(s) {unknown} for {cfg.name!r}; "
                          f"allowed: {allowed}")
    need = min(cfg.min_sites, n_sites)
    try:
        return STRATEGIES[cfg.name](
            fraction_train=cfg.fraction_train, fraction_evaluate=cfg.fraction_evaluate,
            min_train_nodes=need, min_evaluate_nodes=need if cfg.fraction_evaluate else 0,
            min_available_nodes=need, train_metrics_aggr_fn=weighted_metrics,
            evaluate_metrics_aggr_fn=weighted_metrics, **options)
    except (TypeError, ValueError, AssertionError) as exc:
        raise MedFedError(f"strategy: {cfg.name} rejected its options {options}: {exc}") from None
