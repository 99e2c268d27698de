"""Overhead of the in-process federation over a plain PyTorch loop doing the same steps.

(a) plain: for each round, each site trains a copy of the global model for the configured
local epochs on its own (scaled) rows, then the weights are averaged by example count;
(b) federated: the same through MedFed's ServerApp loop, Flower strategy and ClientApp on the
in-process engine (evaluation off in both). Prints one JSON line.

    python bench/overhead.py [--config configs/breast-cancer.yaml] [--rounds 30] [--repeat 3]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time

import numpy as np
import torch

from medfed.config import load_config
from medfed.datasets.sites import simulated_federation
from medfed.federation.client_app import app as client_app
from medfed.federation.rounds import run_federation
from medfed.federation.train import train_local
from medfed.models import for_experiment
from medfed.simulation.baselines import site_scaling
from medfed.simulation.engine import InProcessGrid
from medfed.simulation.evaluation import scale
from medfed.tasks import get_task


def plain_loop(cfg, sites, info) -> float:
    scaling = site_scaling(sites, info)
    xs = [scale(s.x_train, scaling) for s in sites]
    weights = np.array([s.n_train for s in sites], dtype=np.float64)
    weights /= weights.sum()
    task = get_task(info.task)
    start = time.perf_counter()
    global_model = for_experiment(cfg, info, seed=cfg.seed)
    for rnd in range(1, cfg.rounds + 1):
        states = []
        for i, site in enumerate(sites):
            model = copy.deepcopy(global_model)
            train_local(model, xs[i], site.y_train, task, cfg.train,
                        epochs=cfg.train.local_epochs, seed=cfg.seed + rnd * 100 + i)
            states.append(model.state_dict())
        averaged = {k: sum(w * s[k].double() for w, s in zip(weights, states, strict=True))
                    .to(states[0][k].dtype) for k in states[0]}
        global_model.load_state_dict(averaged)
    return time.perf_counter() - start


def federated(cfg, n_sites: int) -> float:
    grid = InProcessGrid(client_app, n_sites, {"experiment": cfg.to_json()})
    start = time.perf_counter()
    run_federation(grid, cfg)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/breast-cancer.yaml")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    cfg = load_config(args.config, [f"rounds={args.rounds}", "strategy.fraction_evaluate=0"])
    sites, info = simulated_federation(cfg.to_json())  # load and partition once, untimed
    federated(cfg.model_copy(update={"rounds": 1}), len(sites))  # warm-up
    plain, fed = [], []
    for _ in range(args.repeat):  # interleaved, so background load hits both alike
        plain.append(plain_loop(cfg, sites, info))
        fed.append(federated(cfg, len(sites)))
    plain, fed = min(plain), min(fed)
    steps = sum(-(-s.n_train // cfg.train.batch_size) for s in sites) * cfg.rounds
    print(json.dumps({"bench": "overhead", "dataset": cfg.dataset.name, "sites": len(sites),
                      "rounds": cfg.rounds, "gradient_steps": steps,
                      "plain_s": round(plain, 4), "federated_s": round(fed, 4),
                      "ratio": round(fed / plain, 3)}))


if __name__ == "__main__":
    main()
