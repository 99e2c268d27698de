"""The hospital's Flower ClientApp: site summary, local training and evaluation.

Only model arrays and aggregate numbers leave the site: counts, feature sums for scaling,
losses and metrics. Never rows, identifiers or file paths.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from medfed.config import (
    NODE_DATA_PATH,
    NODE_PARTITION_ID,
    RUN_AUDIT_CANARIES,
    RUN_EXPERIMENT,
    ExperimentConfig,
    config_from_json,
)
from medfed.datasets.base import DataInfo, Site
from medfed.datasets.scaling import standardize
from medfed.datasets.sites import hospital_site, simulated_federation
from medfed.errors import MedFedError
from medfed.federation import messages, personalize, secagg
from medfed.federation.stats import NODE_MIN_COUNT, stats_query
from medfed.federation.train import predict, train_local
from medfed.models import for_experiment, site_state_dict
from medfed.models.runtime import on_device, pick_device
from medfed.privacy.central import central_clipping_mod
from medfed.privacy.site_stats import StatsBudgetExhausted
from medfed.privacy.small_cells import site_summary_moments, small_test_metrics
from medfed.seeds import derive_seed
from medfed.tasks import get_task


def experiment_config(context: Context) -> ExperimentConfig:
    if RUN_EXPERIMENT not in context.run_config:
        raise MedFedError("run config has no 'experiment' entry; launch runs with `medfed run` "
                          "or `medfed simulate`")
    return _parsed(str(context.run_config[RUN_EXPERIMENT]))


@lru_cache(maxsize=8)
def _parsed(experiment_json: str) -> ExperimentConfig:
    return config_from_json(experiment_json)


def load_site(context: Context) -> tuple[Site, DataInfo]:
    """This node's site: ``partition-id`` in simulation, ``data-path`` in a real federation."""
    experiment_json = str(context.run_config[RUN_EXPERIMENT])
    if NODE_PARTITION_ID in context.node_config:
        sites, info = simulated_federation(experiment_json)
        site = sites[int(context.node_config[NODE_PARTITION_ID])]
        if RUN_AUDIT_CANARIES in context.run_config:  # `medfed privacy audit`: canaries join
            from medfed.privacy.audit import with_canaries

            site = with_canaries(site, info.n_classes, str(context.run_config[RUN_AUDIT_CANARIES]))
        return site, info
    if NODE_DATA_PATH in context.node_config:
        return hospital_site(experiment_json, str(context.node_config[NODE_DATA_PATH]))
    raise MedFedError("node config has neither 'partition-id' (simulation) nor 'data-path' "
                      "(a hospital's site folder)")


@lru_cache(maxsize=8)
def _template(experiment_json: str, info: DataInfo) -> torch.nn.Module:
    """The architecture, built once per process (its weights are overwritten every message)."""
    return for_experiment(_parsed(experiment_json), info)


_node_models: dict[tuple, torch.nn.Module] = {}  # a cache of model instances, not a channel
CPU = torch.device("cpu")


def _model(context: Context, info: DataInfo, arrays: ArrayRecord) -> torch.nn.Module:
    """The global model of this message. Without DP-SGD each node reuses one instance (every
    weight and buffer is overwritten by ``load_state_dict``); Opacus wraps and hooks its model,
    so DP-SGD gets a fresh copy each time."""
    experiment_json = str(context.run_config[RUN_EXPERIMENT])
    template = _template(experiment_json, info)
    if _parsed(experiment_json).privacy.mode == "dp-sgd":
        model = copy.deepcopy(template)
    else:
        key = (context.node_id, experiment_json, info)
        if key not in _node_models:
            if len(_node_models) > 64:
                _node_models.clear()  # a long-lived process serving many runs
            _node_models[key] = copy.deepcopy(template)
        model = _node_models[key]
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def _scaled(x: np.ndarray, info: DataInfo, config: ConfigRecord) -> np.ndarray:
    """Apply the federation's feature scaling (sent by the server) to this site's rows."""
    scaling = messages.read_scaling(config) if info.standardize else None
    return x if scaling is None else standardize(x, *scaling)


def _reply(msg: Message, records: dict) -> Message:
    return Message(RecordDict(records), reply_to=msg)


def site_summary(msg: Message, context: Context) -> Message:
    """Sizes, label space and per-feature sums: what the server needs to build and scale."""
    site, info = load_site(context)
    config = ConfigRecord({messages.TASK: info.task, messages.INPUT_SHAPE: list(info.input_shape),
                           messages.N_CLASSES: info.n_classes,
                           messages.STANDARDIZE: info.standardize})
    metrics = MetricRecord({messages.NUM_EXAMPLES: site.n_train, messages.N_TEST: site.n_test})
    if info.standardize:  # tabular only: images are normalised by their transforms
        try:
            metrics.update(_moments(msg, context, site))
        except StatsBudgetExhausted as exc:
            return Message(error=Error(messages.BUDGET_EXHAUSTED, str(exc)), reply_to=msg)
    return _reply(msg, {messages.SUMMARY: config, messages.METRICS: metrics})


def _moments(msg: Message, context: Context, site: Site) -> dict[str, list]:
    """Feature moments with small cells withheld (and noised under a privacy mode)."""
    cfg = experiment_config(context)
    k = site_min_count(context, cfg)
    simulated = NODE_PARTITION_ID in context.node_config
    moments = site_summary_moments(site.x_train.reshape(site.n_train, -1), cfg, k, context,
                                   site.name, msg.metadata.message_id,
                                   derive_seed(cfg.seed, site.name, 0, "summary")
                                   if simulated else None)
    return {messages.FEATURE_N: moments.n.tolist(), messages.FEATURE_SUM: moments.sums.tolist(),
            messages.FEATURE_SUMSQ: moments.squares.tolist(),
            messages.MIN_COUNT: k, messages.NOISED: int(cfg.privacy.mode != "none")}


def site_min_count(context: Context, cfg: ExperimentConfig) -> int:
    """k: the experiment's ``privacy.min_count``, or the site's own floor when higher."""
    return max(cfg.privacy.min_count, int(context.node_config.get(NODE_MIN_COUNT, 0)))


def train(msg: Message, context: Context) -> Message:
    cfg = experiment_config(context)
    site, info = load_site(context)
    config = msg.content[messages.CONFIG]
    model = _model(context, info, msg.content[messages.ARRAYS])
    personalize.overlay_local(model, cfg, context, site.name)  # fedbn/perhead: own layers
    server_round = int(config.get(messages.SERVER_ROUND, 1))
    seed = derive_seed(cfg.seed, site.name, server_round, "train")  # not the node id: random
    if cfg.privacy.mode == "dp-sgd":
        from medfed.privacy.site import BudgetExhausted, train_round

        simulated = NODE_PARTITION_ID in context.node_config  # real sites: unseeded noise
        try:
            stats = train_round(model, _scaled(site.x_train, info, config), site.y_train,
                                get_task(info.task), cfg, site=site.name, context=context,
                                server_round=server_round, seed=seed if simulated else None,
                                device=pick_device(cfg.train.device),
                                units=site.units_train, data_unit=site.unit)
        except BudgetExhausted as exc:  # the server logs it; the run goes on with the others
            return Message(error=Error(messages.BUDGET_EXHAUSTED, str(exc)), reply_to=msg)
        stats.update(_ditto(msg, context, cfg, site, info, seed if simulated else None))
        metrics = MetricRecord({**stats, messages.NUM_EXAMPLES: site.n_train})
        return _reply(msg, {messages.ARRAYS: _shared(model, cfg, context, site),
                            messages.METRICS: metrics})
    stats = train_local(model, _scaled(site.x_train, info, config), site.y_train,
                        get_task(info.task), cfg.train, epochs=cfg.train.local_epochs, seed=seed,
                        proximal_mu=float(config.get(messages.PROXIMAL_MU, 0.0)),
                        device=pick_device(cfg.train.device))
    stats.update(_ditto(msg, context, cfg, site, info, seed))
    metrics = MetricRecord({**stats, messages.NUM_EXAMPLES: site.n_train})
    return _reply(msg, {messages.ARRAYS: _shared(model, cfg, context, site),
                        messages.METRICS: metrics})


def _shared(model, cfg: ExperimentConfig, context: Context, site: Site) -> ArrayRecord:
    """The arrays the reply carries: all but the site-local ones (fedbn/perhead keep theirs
    on the site's disk)."""
    state = site_state_dict(on_device(model, CPU), site.x_train)
    return ArrayRecord(personalize.shared_state(state, model, cfg, context, site.name))


def _ditto(msg: Message, context: Context, cfg: ExperimentConfig, site: Site, info: DataInfo,
           seed: int | None) -> dict[str, float]:
    """Ditto's personal update beside the global one (none unless `personalize: [ditto]`)."""
    if not personalize.runs_ditto(cfg, context):
        return {}
    server_round = int(msg.content[messages.CONFIG].get(messages.SERVER_ROUND, 1))
    return personalize.train_ditto(
        _template(str(context.run_config[RUN_EXPERIMENT]), info), msg.content[messages.ARRAYS],
        _scaled(site.x_train, info, msg.content[messages.CONFIG]), site.y_train,
        get_task(info.task), cfg, context=context, site=site.name, server_round=server_round,
        seed=None if seed is None else derive_seed(seed, "ditto"),
        device=pick_device(cfg.train.device), units=site.units_train, data_unit=site.unit)


def evaluate_site(model, site: Site, info: DataInfo, config: ConfigRecord) -> dict[str, float]:
    task = get_task(info.task)
    scores = predict(model, _scaled(site.x_test, info, config), task)
    # NaN (e.g. AUROC on a one-class test split) is kept: every site sends the same keys,
    # and the server's weighted mean skips NaN
    return {k: float(v) for k, v in task.metrics(site.y_test, scores).items()}


def evaluate(msg: Message, context: Context) -> Message:
    cfg = experiment_config(context)
    site, info = load_site(context)
    model = _model(context, info, msg.content[messages.ARRAYS])
    personalize.overlay_local(model, cfg, context, site.name)  # fedbn/perhead: own layers
    model = model.to(pick_device(cfg.train.device))
    metrics = small_test_metrics(evaluate_site(model, site, info, msg.content[messages.CONFIG]),
                                 site.n_test, site_min_count(context, cfg))
    metrics[messages.NUM_EXAMPLES] = site.n_test
    return _reply(msg, {messages.METRICS: MetricRecord(metrics)})


def build_app(mods: Sequence[Mod] = ()) -> ClientApp:
    """The ClientApp: the handlers above behind ``mods`` (a real site adds its audit mod)."""
    app = ClientApp(mods=list(mods))
    app.query(messages.SITE_SUMMARY_ACTION)(site_summary)
    app.query(messages.STATS_ACTION)(stats_query)  # `medfed stats` (federation/stats.py)
    app.query(messages.SECAGG_ACTION)(secagg.stage_handler(experiment_config))
    # secure aggregation masks what Flower's client-side clipping (when asked) lets out
    app.train(mods=[secagg.secagg_mod(experiment_config), central_clipping_mod])(train)
    app.evaluate()(evaluate)
    return app


app = build_app()  # simulation: the in-process and Ray engines
