"""DP-SGD overhead: images (or rows) per second, plain vs Opacus (hooks, ghost) vs MedFed.

Cases: the clinical MLP (30 features), a small CNN and MONAI DenseNet121 on 1x64x64 inputs
(GroupNorm, no in-place ReLU). Modes:
  plain        a plain PyTorch step (forward, backward, SGD step)
  opacus-hooks Opacus per-sample gradients through hooks (make_private, fixed batches)
  opacus-ghost Opacus ghost clipping (per-sample gradient norms, two backward passes)
  medfed       medfed.privacy.dp.train_dp: MedFed's DP-SGD (auto mode, Poisson sampling,
               set-up included), to check it adds nothing over Opacus' best mode
One JSON line per case and mode. Default run: a few steps each, under ~3 min on 2 CPU cores.

    python bench/dp_overhead.py [--steps 4] [--models mlp,cnn,densenet121] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import numpy as np
import torch
from torch import nn

from medfed.models.runtime import pick_device


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.GroupNorm(8, 64), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1))


def densenet121() -> nn.Module:
    from monai.networks.nets import DenseNet121

    return DenseNet121(spatial_dims=2, in_channels=1, out_channels=1,
                       norm=("group", {"num_groups": 8}), act=("relu", {"inplace": False}))


def mlp() -> nn.Module:
    from medfed.models.clinical import mlp as clinical_mlp

    return clinical_mlp(30, 1, hidden=[32])


CASES = {"mlp": (mlp, (30,), "rows"), "cnn": (small_cnn, (1, 64, 64), "images"),
         "densenet121": (densenet121, (1, 64, 64), "images")}


def data(shape: tuple[int, ...], n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, *shape, generator=g).to(device),
            torch.randint(0, 2, (n,), generator=g).to(device))


def loss_fn(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float(),
                                                          reduction=reduction)


def timed_steps(step, batches) -> float:
    step(*batches[0])  # warm-up (allocations, hook set-up)
    start = time.perf_counter()
    for xb, yb in batches[1:]:
        step(xb, yb)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def plain(model, batches) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(xb), yb).backward()
        opt.step()

    return timed_steps(step, batches)


class Criterion(nn.Module):
    reduction = "mean"

    def forward(self, out, y):
        return loss_fn(out, y, self.reduction)


def opacus(model, batches, mode: str) -> float:
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    xs = torch.cat([b[0] for b in batches])
    ys = torch.cat([b[1] for b in batches])
    loader = DataLoader(TensorDataset(xs, ys), batch_size=len(batches[0][1]))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    engine = PrivacyEngine()
    if mode == "ghost":
        model, opt, crit, _ = engine.make_private(
            module=model, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
            max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode="ghost",
            criterion=Criterion())
    else:
        model, opt, _ = engine.make_private(module=model, optimizer=opt, data_loader=loader,
                                            noise_multiplier=1.0, max_grad_norm=1.0,
                                            poisson_sampling=False)
        crit = loss_fn

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        crit(model(xb), yb).backward()
        opt.step()

    return timed_steps(step, batches)


def medfed(model, batches) -> tuple[float, str]:
    from medfed.config import TrainConfig
    from medfed.privacy.dp import train_dp
    from medfed.tasks import get_task

    batch = len(batches[0][1])
    xs = torch.cat([b[0] for b in batches[1:]]).cpu().numpy()
    ys = torch.cat([b[1] for b in batches[1:]]).cpu().numpy()
    # warm-up like the others: one step's worth of data first
    train_dp(model, batches[0][0].cpu().numpy(), batches[0][1].cpu().numpy(),
             get_task("binary"), TrainConfig(batch_size=batch, lr=0.01, momentum=0.0),
             noise_multiplier=1.0, max_grad_norm=1.0, epochs=1, seed=0)
    start = time.perf_counter()
    result = train_dp(model, xs, ys, get_task("binary"),
                      TrainConfig(batch_size=batch, lr=0.01, momentum=0.0),
                      noise_multiplier=1.0, max_grad_norm=1.0, epochs=1, seed=0)
    return time.perf_counter() - start, result.grad_sample_mode


def run_case(name: str, steps: int, batch: int, device) -> list[dict]:
    build, shape, unit = CASES[name]
    x, y = data(shape, batch * (steps + 1), device)
    batches = list(zip(x.split(batch), y.split(batch), strict=True))
    n = batch * steps
    rows = []
    times: dict[str, float] = {}
    for mode in ("plain", "opacus-hooks", "opacus-ghost", "medfed"):
        torch.manual_seed(0)
        model = build().to(device)
        extra = {}
        try:
            if mode == "plain":
                seconds = plain(model, batches)
            elif mode == "medfed":
                seconds, extra["grad_sample_mode"] = medfed(model, batches)
            else:
                seconds = opacus(model, batches, mode.split("-")[1])
        except Exception as exc:  # a mode a model does not support is reported, not fatal
            rows.append({"case": name, "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:200]})
            continue
        times[mode] = seconds
        rows.append({"case": name, "mode": mode, "unit": unit, "batch": batch, "steps": steps,
                     f"{unit}_per_s": round(n / seconds, 1), "seconds": round(seconds, 3),
                     "device": str(device), **extra})
    best = min((times[m] for m in ("opacus-hooks", "opacus-ghost") if m in times), default=None)
    for row in rows:
        if row["mode"] in times and "plain" in times:
            row["x_plain"] = round(times[row["mode"]] / times["plain"], 2)
            if best:
                row["x_opacus_best"] = round(times[row["mode"]] / best, 2)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case and mode "
                        "(x25 for the MLP)")
    parser.add_argument("--batch", type=int, default=16, help="halved for DenseNet121 on CPU")
    parser.add_argument("--models", default="mlp,cnn,densenet121")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = pick_device("auto")
    threads = torch.get_num_threads()
    np.random.seed(0)
    for name in (n.strip() for n in args.models.split(",")):
        steps = args.steps * (25 if name == "mlp" else 1)  # MLP steps take microseconds
        batch = args.batch // 2 if name == "densenet121" and device.type == "cpu" else args.batch
        # tables: every mode single-threaded, as MedFed trains them (medfed.federation.train)
        torch.set_num_threads(1 if name == "mlp" else threads)
        for row in run_case(name, steps, batch, device):
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
