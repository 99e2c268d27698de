"""Training throughput (images/s) per imaging model: a plain PyTorch loop vs the same training
inside MedFed's in-process federation (3 sites, FedAvg, evaluation off).

Data: synthetic MedMNIST-format files written to a temporary MEDFED_DATA_DIR (BreastMNIST-
shaped 1x28x28 for 2D, AdrenalMNIST3D-shaped 1x28^3 for 3D), so it runs anywhere. Both arms
train the same model, batch size, optimiser and number of images; the federation adds
partitioning, messages, (de)serialisation and aggregation. One JSON line per case.

    python bench/imaging_throughput.py                 # default cases, < 3 min on 2 cores
    python bench/imaging_throughput.py --models small_cnn resnet18 densenet121 --images 512
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

# case -> (dataset file, image shape, share of --images): heavy nets train on fewer images
CASES = {
    "small_cnn": ("breastmnist", (28, 28), 1.0),
    "small_cnn_3d": ("adrenalmnist3d", (28, 28, 28), 1.0),
    "resnet18": ("breastmnist", (28, 28), 0.25),
    "densenet121": ("breastmnist", (28, 28), 0.25),
    "resnet50": ("breastmnist", (28, 28), 0.25),
}
DEFAULT = ["small_cnn", "small_cnn_3d", "resnet18"]


def write_synthetic(root: Path, name: str, shape: tuple[int, ...], n_train: int) -> None:
    """A MedMNIST-format file: n_train training images, a few val/test, two classes."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("val", 4), ("test", 24)):
        y = np.arange(n) % 2
        images = rng.integers(0, 200, (n, *shape), dtype=np.uint8)
        images[y == 1] //= 2  # a learnable difference between the classes
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, y[:, None]
    (root / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez(root / "medmnist" / f"{name}.npz", **arrays)


def experiment(case: str, rounds: int, batch_size: int):
    from medfed.config import validate

    name = CASES[case][0]
    model = case.removesuffix("_3d")
    return validate({
        "dataset": {"name": "medmnist", "options": {"name": name}},
        "partition": {"scheme": "iid", "sites": 3, "min_site_size": 4},
        "model": {"name": model}, "strategy": {"name": "fedavg", "min_sites": 3,
                                               "fraction_evaluate": 0.0},
        "train": {"local_epochs": 1, "batch_size": batch_size, "optimizer": "adam",
                  "lr": 0.001, "device": "auto"},
        "rounds": rounds, "seed": 0, "baselines": {"centralized": False, "local_only": False}})


def plain_loop(cfg, x: np.ndarray, y: np.ndarray, epochs: int) -> float:
    """Seconds for ``epochs`` passes of a bare PyTorch loop over (x, y)."""
    from medfed.models import build_model
    from medfed.models.runtime import pick_device

    device = pick_device("auto")
    torch.manual_seed(0)
    model = build_model(cfg.model.name, x.shape[1:], 1).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    xt, yt = torch.as_tensor(x, device=device), torch.as_tensor(y, device=device).float()
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    if amp:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(epochs):
        for idx in torch.randperm(len(yt), device=device).split(cfg.train.batch_size):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    model(xt[idx])[:, 0], yt[idx])
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
    if amp:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def federated(cfg) -> float:
    from medfed.federation.client_app import app as client_app
    from medfed.federation.rounds import run_federation
    from medfed.simulation.engine import InProcessGrid

    grid = InProcessGrid(client_app, cfg.partition.sites, {"experiment": cfg.to_json()})
    start = time.perf_counter()
    run_federation(grid, cfg)
    return time.perf_counter() - start


def run_case(case: str, rounds: int, batch_size: int) -> dict:
    from medfed.datasets.sites import simulated_federation

    cfg = experiment(case, rounds, batch_size)
    sites, _ = simulated_federation(cfg.to_json())  # load + partition once, untimed
    x = np.concatenate([s.x_train for s in sites])
    y = np.concatenate([s.y_train for s in sites])
    plain_loop(cfg, x[: 2 * batch_size], y[: 2 * batch_size], 1)  # warm-up (kernels, allocs)
    plain_s = plain_loop(cfg, x, y, rounds)
    fed_s = federated(cfg)
    trained = len(y) * rounds  # both arms: every training image once per round
    return {"bench": "imaging_throughput", "model": cfg.model.name,
            "input": list(x.shape[1:]), "device": "cuda" if torch.cuda.is_available() else
            f"cpu x{torch.get_num_threads()}", "images_trained": trained,
            "batch_size": batch_size, "plain_images_per_s": round(trained / plain_s, 1),
            "federated_images_per_s": round(trained / fed_s, 1),
            "plain_s": round(plain_s, 3), "federated_s": round(fed_s, 3),
            "federated_over_plain": round(fed_s / plain_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT, choices=list(CASES))
    parser.add_argument("--images", type=int, default=192, help="training images (all sites)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    import medfed.federation.client_app  # noqa: F401 (Flower sets up its logger on import)

    logging.getLogger("flwr").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MEDFED_DATA_DIR"] = tmp
        os.environ["MEDFED_CACHE_DIR"] = str(Path(tmp) / "cache")
        for case in args.models:
            name, shape, share = CASES[case]
            n_train = max(int(args.images * share), 3 * args.batch_size // 2)
            write_synthetic(Path(tmp), name, shape, n_train - 4)  # + 4 val rows
            print(json.dumps(run_case(case, args.rounds, args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
