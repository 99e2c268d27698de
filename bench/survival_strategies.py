"""Fed-TCGA-BRCA: mean per-site C-index of the final global model for each strategy.

Prints one JSON line per strategy. Usage:
    MEDFED_DATA_DIR=../shared/data python bench/survival_strategies.py [--set key=value ...]
Reads configs/tcga-brca.yaml and overrides ``strategy.name`` (the strategy's own options are
kept only for the strategy they belong to).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

STRATEGIES = {  # name -> its options (server learning rates from configs/tcga-brca.yaml)
    "fedavg": {},
    "fedprox": {"proximal_mu": 1.0},
    "fedadam": None,
    "fedyogi": None,
    "fedadagrad": None,
}


def main() -> None:
    from medfed.config import load_config
    from medfed.simulation.runner import run_simulation

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/tcga-brca.yaml")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--seeds", default="42")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    base = load_config(args.config, args.overrides).strategy_options()
    adaptive = {k: v for k, v in base.items() if k in ("eta", "eta_l", "tau")}
    for name in args.strategies.split(","):
        options = STRATEGIES[name] if STRATEGIES[name] is not None else adaptive
        per_seed = []
        start = time.perf_counter()
        for seed in args.seeds.split(","):
            overrides = [*args.overrides, f"strategy={json.dumps({'name': name, **options})}",
                         f"seed={seed}", "baselines.local_only=false",
                         "baselines.centralized=false"]
            report = run_simulation(load_config(args.config, overrides)).report
            sites = report["metrics"]["federated"]["per_site"]
            per_seed.append(statistics.mean(v["c_index"] for v in sites.values()))
        mean = round(statistics.mean(per_seed), 4)
        print(json.dumps({"strategy": name, "mean_site_c_index": mean,
                          "per_seed": [round(v, 4) for v in per_seed],
                          "pooled_c_index_last_seed": report["metrics"]["federated"]["pooled"][
                              "c_index"], "overrides": args.overrides,
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
