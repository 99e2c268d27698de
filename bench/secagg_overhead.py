"""Secure aggregation's cost per round: seconds and bytes, 3, 10 and 50 simulated sites.

Real data: Wisconsin breast cancer (scikit-learn's copy, 569 patients), IID over the sites
(``min_site_size 2``: 50 sites hold ~8 training rows each), an MLP, FedAvg, no evaluation.
Each setting runs ``--rounds`` rounds in-process (rounds 2.. timed), plain and with
``strategy.secure: secagg+`` with every site sharing keys with every other (``secagg_all``,
num_shares = sites) and with ``--num-shares`` neighbours (``secagg_k7``: SecAgg+'s sparse
graph); the threshold is a majority of the shares:

    s_per_round       wall seconds per round (train + all protocol stages, one CPU process:
                      the sites' work is serial here, in a federation it runs in parallel)
    bytes_per_round   every message of the round both ways, as Flower serialises it
                      (the sum of each record's ``deflate()``: what crosses the wire)

Prints one JSON line.

    python bench/secagg_overhead.py [--sites 3 10 50] [--rounds 3] [--hidden 64 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def message_bytes(message) -> int:
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


def counting_grid(app, n_sites: int, run_config: dict):
    from medfed.simulation.engine import InProcessGrid

    class CountingGrid(InProcessGrid):
        sent = received = 0

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            self.sent += sum(message_bytes(m) for m in messages)
            replies = list(super().send_and_receive(messages, timeout=timeout))
            self.received += sum(message_bytes(r) for r in replies)
            return replies

    return CountingGrid(app, n_sites, run_config)


def measure(n_sites: int, secure: str, rounds: int, hidden: list[int],
            num_shares: int | None = None) -> dict:
    from medfed.config import RUN_EXPERIMENT, validate
    from medfed.federation.client_app import app
    from medfed.federation.rounds import RoundHooks, run_federation

    cfg = validate({"dataset": {"name": "breast-cancer"},
                    "partition": {"scheme": "iid", "sites": n_sites, "min_site_size": 2},
                    "model": {"name": "mlp", "hidden": hidden},
                    "strategy": {"name": "fedavg", "min_sites": n_sites,
                                 "fraction_evaluate": 0.0, "secure": secure,
                                 "secagg": {"num_shares": num_shares}},
                    "train": {"batch_size": 32, "lr": 0.05}, "rounds": rounds, "seed": 3})
    grid = counting_grid(app, n_sites, {RUN_EXPERIMENT: cfg.to_json()})
    stamps: list[float] = []
    bytes_at: list[int] = []

    def on_round(_: dict) -> None:
        stamps.append(time.perf_counter())
        bytes_at.append(grid.sent + grid.received)

    hooks = RoundHooks(on_round=on_round, seed=cfg.seed)
    result = run_federation(grid, cfg, hooks)
    measured = rounds - 1  # round 1 warms caches (data, model): rounds 2.. are timed
    params = sum(a.numpy().size for a in result.arrays.values())
    return {"s_per_round": round((stamps[-1] - stamps[0]) / measured, 4),
            "bytes_per_round": int((bytes_at[-1] - bytes_at[0]) / measured), "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sites", type=int, nargs="+", default=[3, 10, 50])
    parser.add_argument("--rounds", type=int, default=3, help="at least 2")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--num-shares", type=int, default=7,
                        help="the SecAgg+ arm's neighbourhood (the other arm: every site)")
    args = parser.parse_args()
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    sys.path.insert(0, str(ROOT))
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    rows = []
    for n in args.sites:
        plain = measure(n, "none", args.rounds, args.hidden)
        row = {"sites": n, "plain": plain}
        arms = {"secagg_all": None}
        if args.num_shares < n:
            arms[f"secagg_k{args.num_shares}"] = args.num_shares
        for arm, shares in arms.items():
            secure = measure(n, "secagg+", args.rounds, args.hidden, shares)
            secure["extra_s_per_round"] = round(secure["s_per_round"] - plain["s_per_round"], 4)
            secure["bytes_ratio"] = round(secure["bytes_per_round"] / plain["bytes_per_round"], 2)
            row[arm] = secure
        rows.append(row)
    print(json.dumps({"bench": "secagg_overhead", "data": "breast-cancer (real, sklearn copy)",
                      "model": f"mlp hidden={args.hidden}", "rounds": args.rounds,
                      "cpu_count": os.cpu_count(), "results": rows}))


if __name__ == "__main__":
    main()
