"""``medfed simulate``: one federated run plus its centralized and local-only baselines."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.app import ArrayRecord

from medfed.config import RUN_EXPERIMENT, ExperimentConfig
from medfed.datasets import get_dataset
from medfed.datasets.base import DataInfo, Site
from medfed.datasets.sites import simulated_federation
from medfed.federation.messages import read_scaling
from medfed.federation.rounds import FederationResult, RoundHooks, run_federation
from medfed.models import check_options
from medfed.models.runtime import pick_device
from medfed.privacy import simulation as privacy_sim
from medfed.reports.report import build_report
from medfed.simulation.baselines import train_baselines
from medfed.simulation.evaluation import (
    central_evaluation,
    model_from_arrays,
    score_one_model,
)
from medfed.simulation.personal_arms import PersonalRun, personal_metrics
from medfed.simulation.stats import harmonisation_section
from medfed.simulation.task_report import task_extras
from medfed.strategies import build_strategy

RoundFn = Callable[[dict[str, Any]], None]


@dataclass
class SimulationResult:
    report: dict[str, Any]
    arrays: ArrayRecord


def check_config(cfg: ExperimentConfig) -> None:
    """Fail before any work on names and options that do not exist."""
    get_dataset(cfg.dataset.name)
    check_options(cfg.model.name, cfg.model_options())
    build_strategy(cfg.strategy, max(cfg.strategy.min_sites, 2))


def run_federated(cfg: ExperimentConfig, sites: list[Site], info: DataInfo,
                  on_round: RoundFn | None, extra_run_config: dict | None = None,
                  order: list[int] | None = None) -> FederationResult:
    """The federation over ``sites`` on the configured engine; ``order``: the order in which
    the in-process engine's sites train (partition indices; the result must not depend on it)."""
    from medfed.federation.client_app import app as client_app
    from medfed.simulation.engine import InProcessGrid

    if cfg.engine == "ray":
        from medfed.simulation.ray_engine import run_with_ray

        return run_with_ray(cfg, len(sites), on_round, extra_run_config=extra_run_config)
    grid = InProcessGrid(client_app, len(sites),
                         {RUN_EXPERIMENT: cfg.to_json(), **(extra_run_config or {})}, order)
    return run_federation(grid, cfg, RoundHooks(evaluate_fn=central_evaluation(cfg),
                                                on_round=on_round, seed=cfg.seed))


def _named_small_cells(small: dict[str, Any], sites: list) -> dict[str, Any]:
    """The summary's small-cell section with site names for node ids (node 1000 + i)."""
    from medfed.simulation.engine import SITE_NODE_BASE

    named = {sites[int(node) - SITE_NODE_BASE].name: entry
             for node, entry in small.get("sites", {}).items()}
    return {**small, "sites": named} if small else {}


def reproducibility(cfg: ExperimentConfig) -> dict[str, Any]:
    """``report.json`` -> ``reproducibility``: whether a rerun of this config gives the same
    numbers, and why (or why not)."""
    device = pick_device(cfg.train.device)
    why = [f"every draw comes from seed {cfg.seed} through streams per site, round and "
           "purpose; replies are aggregated in an order fixed by their content"]
    deterministic = device.type == "cpu"
    if deterministic:
        why.append("CPU with torch.use_deterministic_algorithms(True)")
    else:
        why.append(f"{device.type}: GPU kernels with atomic adds may differ in the last bits "
                   "between runs")
    if cfg.engine == "ray":
        why.append("Ray: sites are seeded by name, not by Ray's random node IDs, so scheduling "
                   "order does not matter")
        if min(cfg.strategy.fraction_train, cfg.strategy.fraction_evaluate) < 1:
            deterministic = False
            why.append("but Flower samples a fraction of Ray's random node IDs, so which sites "
                       "take part differs between runs")
    if cfg.privacy.mode == "dp-sgd" and cfg.privacy.secure_mode:
        deterministic = False
        why.append("privacy.secure_mode: DP-SGD noise from a cryptographically secure "
                   "generator, never reproducible")
    return {"seed": cfg.seed, "deterministic": deterministic, "why": "; ".join(why)}


def run_simulation(cfg: ExperimentConfig, on_round: RoundFn | None = None) -> SimulationResult:
    """Partition, federate, train baselines, evaluate everything; returns the report."""
    start = time.perf_counter()
    check_config(cfg)
    sites, info = simulated_federation(cfg.to_json())
    privacy = privacy_sim.prepare(cfg, sites)  # bad budget or ledger: exit 2 before training
    personal = PersonalRun(cfg, privacy.run_id, privacy.ledger_dir)  # personalize: site weights
    fed = run_federated(cfg, sites, info, on_round, {**privacy.run_config(),
                                                     **personal.run_config()})
    final = score_one_model(model_from_arrays(cfg, info, fed.arrays), sites, info,
                            read_scaling(fed.summary.scaling))
    baselines = train_baselines(cfg, sites, info)
    try:
        arms = personal_metrics(cfg, sites, info, fed, personal, lambda arm_cfg, run_config:
                                run_federated(arm_cfg, sites, info, None,
                                              {**privacy.run_config(), **run_config}))
    finally:
        personal.close()
    metrics = {"federated": final, **arms, **baselines.metrics}
    timing = {"total_s": time.perf_counter() - start, "federated_s": fed.seconds}
    description = get_dataset(cfg.dataset.name).description
    report = build_report(cfg, info, sites, metrics, fed.history, timing, description)
    report["reproducibility"] = reproducibility(cfg)
    report["privacy"] = privacy_sim.section(cfg, privacy, sites, fed.history,
                                            baselines.accounting)
    report["harmonisation"] = harmonisation_section(cfg)  # `medfed stats` flags, for the header
    report["small_cells"] = _named_small_cells(fed.summary.small_cells, sites)
    extras = task_extras(cfg, info, sites, fed.arrays, fed.summary.scaling)
    if extras is not None:  # e.g. the sepsis alarm table
        report["task_report"] = extras
    if cfg.model.name == "multimodal":  # image-only / clinical-only arms, modality ablations
        from medfed.simulation.multimodal_arms import multimodal_section

        report["multimodal"] = multimodal_section(cfg, sites, info, fed.arrays, final)
        report["timing"]["total_s"] = time.perf_counter() - start
    return SimulationResult(report, fed.arrays)
