"""The hospital's Flower ClientApp: site summary, local training and evaluation.

Only model arrays and aggregate numbers leave the site: counts, feature sums for scaling,
losses and metrics. Never rows, identifiers or file paths.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from medfed.client.audit_mod import outgoing_audit_mod
from medfed.client.site_data import DataInfo, experiment_config, load_site
from medfed.client.train import on_device, pick_device, predict, train_local
from medfed.config import ExperimentConfig
from medfed.datasets.base import Site
from medfed.datasets.scaling import site_moments, standardize
from medfed.models import build_model
from medfed.models.multimodal import site_state_dict  # uneven sites send what they train
from medfed.privacy.central import central_clipping_mod
from medfed.privacy.compat import maybe_dp_ready
from medfed.tasks import get_task

app = ClientApp(mods=[outgoing_audit_mod])  # site audit log (real federations)


@lru_cache(maxsize=8)
def _template(model_json: str, privacy_mode: str, info: DataInfo) -> torch.nn.Module:
    """The architecture, built once per process (its weights are overwritten every message)."""
    spec = json.loads(model_json)
    task = get_task(info.task)
    model = build_model(spec.pop("name"), info.input_shape, task.n_outputs(info.n_classes),
                        **spec)
    return maybe_dp_ready(model, privacy_mode)  # BatchNorm -> GroupNorm etc. for Opacus


_node_models: dict[tuple, torch.nn.Module] = {}
CPU = torch.device("cpu")


def _model(cfg: ExperimentConfig, info: DataInfo, arrays: ArrayRecord, node_id: int = 0):
    """The global model of this message. Without DP-SGD each node reuses one instance (every
    weight and buffer is overwritten by ``load_state_dict``); Opacus wraps and hooks its model,
    so DP-SGD gets a fresh copy each time."""
    key = (node_id, cfg.model.model_dump_json(), cfg.privacy.mode, info)
    template = _template(*key[1:])
    if cfg.privacy.mode == "dp-sgd":
        model = copy.deepcopy(template)
    else:
        if key not in _node_models:
            if len(_node_models) > 64:
                _node_models.clear()  # a long-lived process serving many runs
            _node_models[key] = copy.deepcopy(template)
        model = _node_models[key]
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def _scaled(x: np.ndarray, info: DataInfo, config: ConfigRecord) -> np.ndarray:
    """Apply the federation's feature scaling (sent by the server) to this site's rows."""
    if not info.standardize or "feature-mean" not in config:
        return x
    return standardize(x, np.asarray(config["feature-mean"], np.float32),
                       np.asarray(config["feature-std"], np.float32))


def _reply(msg: Message, records: dict) -> Message:
    return Message(RecordDict(records), reply_to=msg)


@app.query("site_summary")
def site_summary(msg: Message, context: Context) -> Message:
    """Sizes, label space and per-feature sums: what the server needs to build and scale."""
    site, info = load_site(context)
    config = ConfigRecord({"task": info.task, "input-shape": list(info.input_shape),
                           "n-classes": info.n_classes, "standardize": info.standardize})
    metrics = MetricRecord({"num-examples": site.n_train, "n-test": site.n_test})
    if info.standardize:  # tabular only: images are normalised by their transforms
        _, sums, squares = site_moments(site.x_train.reshape(site.n_train, -1))
        metrics["feature-sum"], metrics["feature-sumsq"] = sums.tolist(), squares.tolist()
    return _reply(msg, {"summary": config, "metrics": metrics})


@app.train(mods=[central_clipping_mod])
def train(msg: Message, context: Context) -> Message:
    cfg = experiment_config(context)
    site, info = load_site(context)
    config = msg.content["config"]
    model = _model(cfg, info, msg.content["arrays"], context.node_id)
    server_round = int(config.get("server-round", 1))
    seed = cfg.seed * 100_003 + server_round * 1_009 + int(context.node_id % 100_000)
    if cfg.privacy.mode == "dp-sgd":
        from medfed.privacy.site import BUDGET_EXHAUSTED_CODE, BudgetExhausted, train_round

        simulated = "partition-id" in context.node_config  # real sites: unseeded noise
        try:
            stats = train_round(model, _scaled(site.x_train, info, config), site.y_train,
                                get_task(info.task), cfg, site=site.name, context=context,
                                server_round=server_round, seed=seed if simulated else None,
                                device=pick_device(cfg.train.device))
        except BudgetExhausted as exc:  # the server logs it; the run goes on with the others
            return Message(error=Error(BUDGET_EXHAUSTED_CODE, str(exc)), reply_to=msg)
        metrics = MetricRecord({**stats, "num-examples": site.n_train})
        arrays = ArrayRecord(site_state_dict(on_device(model, CPU), site.x_train))
        return _reply(msg, {"arrays": arrays, "metrics": metrics})
    stats = train_local(model, _scaled(site.x_train, info, config), site.y_train,
                        get_task(info.task), cfg.train, epochs=cfg.train.local_epochs, seed=seed,
                        proximal_mu=float(config.get("proximal-mu", 0.0)),
                        device=pick_device(cfg.train.device))
    metrics = MetricRecord({**stats, "num-examples": site.n_train})
    arrays = ArrayRecord(site_state_dict(on_device(model, CPU), site.x_train))
    return _reply(msg, {"arrays": arrays, "metrics": metrics})


def evaluate_site(model, site: Site, info: DataInfo, config: ConfigRecord) -> dict[str, float]:
    task = get_task(info.task)
    scores = predict(model, _scaled(site.x_test, info, config), task)
    # NaN (e.g. AUROC on a one-class test split) is kept: every site sends the same keys,
    # and the server's weighted mean skips NaN
    return {k: float(v) for k, v in task.metrics(site.y_test, scores).items()}


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg = experiment_config(context)
    site, info = load_site(context)
    model = _model(cfg, info, msg.content["arrays"], context.node_id).to(
        pick_device(cfg.train.device))
    metrics = evaluate_site(model, site, info, msg.content["config"])
    return _reply(msg, {"metrics": MetricRecord({**metrics, "num-examples": site.n_test})})
