"""Real PhysioNet 2019 sepsis stays: MedFed's federation against a pooled gradient-boosting
reference, on the same stays and the same split.

Prints ONE JSON line with the hourly AUROC, AUPRC and the challenge's normalized utility, all
on the pooled test stays of both hospital systems, for:

- ``baseline``: scikit-learn ``HistGradientBoostingClassifier`` (defaults) on forward-filled
  values, missingness flags and 6-hour means of the 40 variables, trained on the POOLED
  training stays of both systems (what sharing the data would give a plain model);
- ``federated``: the config's model trained by the federation (two sites, A and B);
- ``local_only``: one such model per site on its own stays, each scored on its own test stays;
- ``centralized``: the config's model on the pooled training stays.

Split: the loader's own (per site, 70/30 by stay, stratified by septic stay, seed of the
config), so every arm sees the same stays. Utility: each model alarms at the threshold that
maximises its utility on its own training stays (utility sums add up over stays, so a
federation picks it from per-site sums without pooling a row).

Usage:
    MEDFED_DATA_DIR=../shared/data python bench/sepsis_baseline.py [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

CONFIG = "configs/sepsis-physionet.yaml"


def stays_and_split(options: dict, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """(raw hourly table, stay id per row, "train"/"test" per row) exactly as the loader
    splits them."""
    from medfed.datasets.files import data_dir
    from medfed.datasets.timeseries.sepsis import read_stays, split_stays
    from medfed.datasets.timeseries.sepsis_features import LABEL

    root = Path(options["path"]) if options.get("path") else data_dir(
        options.get("folder", "sepsis"))
    raw, stays, sites = read_stays(root, options.get("max_stays"))
    septic = np.zeros(stays.max() + 1)
    np.maximum.at(septic, stays, raw[LABEL].to_numpy())
    return raw, stays, split_stays(stays, sites, septic, options.get("test_fraction", 0.3), seed)


def baseline_features(raw: pd.DataFrame, stays: np.ndarray) -> np.ndarray:
    """(N, 40 + 34 + 34): forward-filled values (NaN until first measured: the trees route
    it), measured-this-hour flags, trailing 6-hour means of what was measured."""
    from medfed.datasets.timeseries.sepsis_features import COLUMNS, DYNAMIC

    filled = raw[COLUMNS].groupby(stays).ffill()
    flags = raw[DYNAMIC].notna().astype(np.float32)
    means = (raw[DYNAMIC].groupby(stays).rolling(6, min_periods=1).mean()
             .reset_index(level=0, drop=True).sort_index())
    return pd.concat([filled, flags, means], axis=1).to_numpy(np.float32)


def task_y(raw: pd.DataFrame, stays: np.ndarray) -> np.ndarray:
    """(N, 4) as the timeseries task's y: label, stay, hour of stay, weight (unused)."""
    from medfed.datasets.timeseries.sepsis_features import LABEL

    hour = pd.Series(np.ones(len(stays))).groupby(stays).cumsum().to_numpy() - 1
    return np.column_stack([raw[LABEL].to_numpy(), stays, hour, np.ones(len(stays))])


def best_threshold(y: np.ndarray, scores: np.ndarray) -> float:
    """The alarm threshold with the highest utility on training stays (40 score quantiles)."""
    from medfed.tasks.timeseries import utility_from_sums, utility_sums

    candidates = np.unique(np.quantile(scores, np.linspace(0.80, 0.999, 40)))
    return float(max(candidates, key=lambda t: utility_from_sums(utility_sums(y, scores, t))))


def summary(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> dict:
    """Hourly AUROC/AUPRC and utility (threshold from the training stays) on the test stays."""
    from medfed.tasks.metrics import binary_metrics
    from medfed.tasks.timeseries import normalized_utility

    threshold = best_threshold(*train)
    y, scores = test
    hourly = binary_metrics(y[:, 0], scores)
    return {"auroc": round(hourly["auroc"], 4), "auprc": round(hourly["auprc"], 4),
            "utility": round(normalized_utility(y, scores, threshold), 4),
            "threshold": round(threshold, 4)}


def baseline(raw: pd.DataFrame, stays: np.ndarray, split: np.ndarray, seed: int) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier

    x, y = baseline_features(raw, stays), task_y(raw, stays)
    train, test = split == "train", split == "test"
    model = HistGradientBoostingClassifier(random_state=seed).fit(x[train], y[train, 0])
    return summary((y[train], model.predict_proba(x[train])[:, 1]),
                   (y[test], model.predict_proba(x[test])[:, 1]))


def scored(models: dict, sites: list, info, scalings: dict) -> dict:
    """Each site's train and test rows scored by its model; pooled summary."""
    from medfed.federation.train import predict
    from medfed.simulation.evaluation import scale
    from medfed.tasks import get_task

    task = get_task(info.task)
    parts: dict[str, list] = {"train": [], "test": []}
    for site in sites:
        model, stats = models[site.name], scalings[site.name]
        for split, x, y in (("train", site.x_train, site.y_train),
                            ("test", site.x_test, site.y_test)):
            parts[split].append((y, predict(model, scale(x, stats), task)))
    pooled = {k: (np.concatenate([p[0] for p in v]), np.concatenate([p[1] for p in v]))
              for k, v in parts.items()}
    return summary(pooled["train"], pooled["test"])


def medfed_arms(cfg) -> dict:
    """federated, local_only and centralized: the config's model, as `medfed simulate`
    trains them."""
    from medfed.datasets.sites import simulated_federation
    from medfed.models import for_experiment
    from medfed.simulation.baselines import epochs_of, site_scaling, train_arm
    from medfed.simulation.evaluation import model_from_arrays, scale
    from medfed.simulation.runner import run_simulation
    from medfed.tasks import get_task

    sites, info = simulated_federation(cfg.to_json())
    task = get_task(info.task)
    pooled = site_scaling(sites, info)  # what the federation shares: per-site sums
    arrays = run_simulation(cfg).arrays
    out = {"federated": scored({s.name: model_from_arrays(cfg, info, arrays) for s in sites},
                               sites, info, {s.name: pooled for s in sites})}
    local, scalings = {}, {}
    for i, site in enumerate(sites):
        scalings[site.name] = site_scaling([site], info)
        local[site.name] = for_experiment(cfg, info, seed=cfg.seed)
        train_arm(local[site.name], scale(site.x_train, scalings[site.name]), site.y_train,
                  task, cfg, epochs=epochs_of(cfg), seed=cfg.seed + i, arm="local_only")
    out["local_only"] = scored(local, sites, info, scalings)
    central = for_experiment(cfg, info, seed=cfg.seed)
    train_arm(central, scale(np.concatenate([s.x_train for s in sites]), pooled),
              np.concatenate([s.y_train for s in sites]), task, cfg, epochs=epochs_of(cfg),
              seed=cfg.seed, arm="centralized")
    out["centralized"] = scored({s.name: central for s in sites}, sites, info,
                                {s.name: pooled for s in sites})
    return out


def main() -> None:
    from medfed.config import load_config

    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    start = time.perf_counter()
    cfg = load_config(args.config, [*args.overrides, "baselines.local_only=false",
                                    "baselines.centralized=false"])
    raw, stays, split = stays_and_split(cfg.dataset.options, cfg.seed)
    result = {"data": f"{stays.max() + 1} stays, {len(stays)} hours, "
                      f"{int((split == 'test').sum())} test hours",
              "config": args.config, "overrides": args.overrides,
              "baseline": baseline(raw, stays, split, cfg.seed), **medfed_arms(cfg)}
    fed, ref = result["federated"], result["baseline"]
    result["federated_reaches_baseline"] = bool(fed["auroc"] >= ref["auroc"]
                                                and fed["auprc"] >= ref["auprc"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
