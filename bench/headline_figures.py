"""The headline figures of the README and the configs' comments: mean ± std over seeds.

Each figure is one shipped config run with ``--set seed=S`` for every seed (in-process engine,
CPU), read from its report. Prints ONE JSON line: per figure the config, the metric, whether
the data is real or generated, the value per seed, the mean and the sample standard deviation
(ddof 1). A figure whose real data is absent is listed with ``skipped`` and the reason.
Usage (a few minutes per figure on 2 cores):

    MEDFED_DATA_DIR=../shared/data python bench/headline_figures.py [--seeds 0,1,2,3,4]
        [--figures multimodal_fusion_gain,dp_utility,...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def pooled(arm: str, metric: str) -> Callable[[dict], float]:
    return lambda report: report["metrics"][arm]["pooled"][metric]


def mean_per_site(arm: str, metric: str) -> Callable[[dict], float]:
    return lambda report: statistics.mean(
        v[metric] for v in report["metrics"][arm]["per_site"].values())


@dataclass(frozen=True)
class Figure:
    config: str
    metric: str  # what the value is, in words
    read: Callable[[dict], float]
    data: str  # real or generated, and which
    needs: str | None = None  # a file under MEDFED_DATA_DIR
    overrides: tuple[str, ...] = ()


FIGURES = {
    "multimodal_fusion_gain": Figure(
        "multimodal-demo", "pooled test AUROC of the federated multimodal model minus the best "
        "single-modality model's (all 4 sites)",
        lambda r: r["multimodal"]["fusion_gain"], "generated (medfed demo-data multimodal, "
        "seed 0)"),
    "multimodal_auroc": Figure(
        "multimodal-demo", "pooled test AUROC of the federated multimodal model (all 4 sites)",
        pooled("federated", "auroc"), "generated (medfed demo-data multimodal, seed 0)"),
    "dp_utility": Figure(
        "breast-cancer-dp", "pooled test AUROC of the federated model, DP-SGD epsilon 1 per "
        "site (all 5 sites)", pooled("federated", "auroc"),
        "real (scikit-learn's Wisconsin breast cancer, 5 virtual sites)"),
    "non_private_auroc": Figure(
        "breast-cancer", "pooled test AUROC of the federated model without DP (all 5 sites)",
        pooled("federated", "auroc"),
        "real (scikit-learn's Wisconsin breast cancer, 5 virtual sites)"),
    "tcga_c_index": Figure(
        "tcga-brca", "mean per-site C-index of the final federated model (6 regions)",
        mean_per_site("federated", "c_index"), "real (Fed-TCGA-BRCA)",
        needs="tcga-brca/brca.csv", overrides=("baselines.local_only=false",
                                               "baselines.centralized=false")),
    "heart_disease_accuracy": Figure(
        "heart-disease", "pooled test accuracy of the federated model (4 hospitals)",
        pooled("federated", "accuracy"), "real (UCI Heart Disease)",
        needs="heart-disease/processed.va.data"),
    "imaging_auroc": Figure(
        "medmnist-breast", "pooled test AUROC of the federated model (3 sites)",
        pooled("federated", "auroc"), "real (BreastMNIST)", needs="medmnist/breastmnist.npz",
        overrides=("baselines.local_only=false", "baselines.centralized=false")),
}


def run_one(figure: Figure, seed: int, work: Path) -> float:
    from medfed.config import load_config
    from medfed.simulation.runner import run_simulation

    overrides = [*figure.overrides, f"seed={seed}",
                 f"privacy.ledger_dir={work / f'ledgers-{figure.config}-{seed}'}"]
    cfg = load_config(ROOT / "configs" / f"{figure.config}.yaml", overrides)
    with contextlib.chdir(work):  # demo data (runs/...) is written once, in the work folder
        return float(figure.read(run_simulation(cfg).report))


def measure(figure: Figure, seeds: list[int], work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"config": f"configs/{figure.config}.yaml", "metric": figure.metric,
                           "data": figure.data}
    root = os.environ.get("MEDFED_DATA_DIR")
    if figure.needs and not (root and Path(root, figure.needs).exists()):
        return {**out, "skipped": f"$MEDFED_DATA_DIR/{figure.needs} is absent"}
    start = time.perf_counter()
    values = []
    for seed in seeds:
        values.append(run_one(figure, seed, work))
        print(f"{figure.config} seed {seed}: {values[-1]:.4f}", file=sys.stderr, flush=True)
    return {**out, "values": [round(v, 4) for v in values],
            "mean": round(statistics.mean(values), 4),
            "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated experiment seeds")
    parser.add_argument("--figures", default=",".join(FIGURES),
                        help=f"comma-separated, from: {', '.join(FIGURES)}")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    logging.getLogger("flwr").setLevel(logging.WARNING)
    unknown = sorted(set(args.figures.split(",")) - set(FIGURES))
    if unknown:
        parser.error(f"unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
    with tempfile.TemporaryDirectory(prefix="medfed-headline-") as work:
        figures = {name: measure(FIGURES[name], seeds, Path(work))
                   for name in args.figures.split(",")}
    print(json.dumps({"seeds": seeds, "engine": "inprocess", "device": "cpu",
                      "figures": figures}), flush=True)


if __name__ == "__main__":
    main()
