"""Heart-disease (FLamby's Fed-Heart-Disease convention) with the shipped config, per seed.

Runs ``configs/heart-disease.yaml`` (optionally another strategy) on the UCI files under
``$MEDFED_DATA_DIR/heart-disease/`` (the real ``processed.*.data`` files when you have them;
``--generated`` writes the look-alikes of ``tests/uci_files.py`` to a temporary folder) and
prints ONE JSON line: per seed and arm, pooled accuracy and the mean of the four sites'
accuracies, plus the per-site train/test sizes (FLamby: 199/104, 172/89, 30/16, 85/45).

    python bench/heart_disease_flamby.py [--seeds 42 1 2] [--strategy fedyogi] [--generated]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 1, 2])
    parser.add_argument("--strategy", default=None)
    parser.add_argument("--generated", action="store_true")
    args = parser.parse_args()
    if args.generated:
        sys.path.insert(0, str(ROOT))
        from tests.uci_files import write_uci_heart

        os.environ["MEDFED_DATA_DIR"] = str(write_uci_heart(Path(tempfile.mkdtemp())))
    warnings.simplefilter("ignore")
    from medfed.config import load_config
    from medfed.simulation.runner import run_simulation

    runs = []
    for seed in args.seeds:
        sets = [f"seed={seed}"] + ([f"strategy.name={args.strategy}"] if args.strategy else [])
        report = run_simulation(load_config(ROOT / "configs/heart-disease.yaml", sets)).report
        arms = {arm: {"pooled_accuracy": round(m["pooled"]["accuracy"], 4),
                      "mean_site_accuracy": round(sum(s["accuracy"] for s in
                                                      m["per_site"].values()) / 4, 4)}
                for arm, m in report["metrics"].items()}
        runs.append({"seed": seed, **arms})
    sizes = {s["name"]: [s["n_train"], s["n_test"]] for s in report["sites"]}
    print(json.dumps({"data": "generated" if args.generated else os.environ.get(
        "MEDFED_DATA_DIR", "~/.medfed/data"), "strategy": args.strategy or "fedavg",
        "sizes": sizes, "runs": runs}))


if __name__ == "__main__":
    main()
