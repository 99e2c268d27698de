"""Local training and prediction, shared by the ClientApp and the simulation baselines."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medfed.config import TrainConfig
from medfed.federation.batches import ArrayBatches, MixedPrecision, augmentation, is_image
from medfed.models import use_generator
from medfed.models.runtime import make_optimizer, on_device, one_thread_for_tables, pick_device
from medfed.seeds import derive_seed, deterministic_algorithms, torch_generator, torch_seeded


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches covering ``n`` rows once (an epoch)."""
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


def _transform(x: np.ndarray, y: np.ndarray, model: nn.Module, cfg: TrainConfig, seed: int):
    """MONAI augmentation / patch crops for image batches (None for tables)."""
    if not is_image(x):
        return None
    roi = getattr(model, "roi_size", None)  # segmentation nets trained on patches
    return augmentation(cfg.augment, x.ndim - 2, y.ndim == x.ndim, roi,
                        derive_seed(seed, "augment"))


@one_thread_for_tables
def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, task, cfg: TrainConfig, *,
                epochs: int, seed: int, proximal_mu: float = 0.0,
                device: torch.device | None = None,
                anchor: list[torch.Tensor] | None = None) -> dict[str, float]:
    """Train ``model`` in place for ``epochs`` epochs; returns mean loss and step count.

    ``x``: (N, ...) float32 inputs already scaled; ``y``: (N,) int labels. With
    ``proximal_mu > 0`` the FedProx term mu/2 * ||w - w_start||^2 is added to the loss
    (``anchor``: other reference parameters than w_start, e.g. Ditto's global model).
    ``seed``: this call's own (the ClientApp derives it from the experiment seed, the site and
    the round); batch order, augmentation, dropout and modality dropout each draw from a
    stream derived from it, so the result does not depend on what ran before in the process.
    """
    device = device or pick_device(cfg.device)
    on_device(model, device).train()
    batches = ArrayBatches(x, y, device, _transform(x, y, model, cfg, seed))
    use_generator(model, torch_generator(seed, "model", device=device))
    with torch_seeded(seed, "dropout"), deterministic_algorithms(device):
        return _epochs(model, batches, task, cfg, epochs, torch_generator(seed, "batches"),
                       proximal_mu, MixedPrecision(device, cfg.amp), anchor)


def _epochs(model: nn.Module, batches: ArrayBatches, task, cfg: TrainConfig, epochs: int,
            generator: torch.Generator, proximal_mu: float,
            precision: MixedPrecision, anchor: list[torch.Tensor] | None = None
            ) -> dict[str, float]:
    if proximal_mu > 0:
        anchor = [a.detach().clone().to(p.device) for a, p in zip(
            anchor or model.parameters(), model.parameters(), strict=True)]
    else:
        anchor = None
    optimizer = make_optimizer(model, cfg)
    total, steps = 0.0, 0
    for _ in range(epochs):
        for idx in minibatches(len(batches), cfg.batch_size, generator):
            xb, yb = batches.take(idx)
            optimizer.zero_grad(set_to_none=True)
            with precision.autocast():
                loss = task.loss(model(xb), yb)
            if anchor is not None:
                loss = loss + proximal_mu / 2 * sum(
                    (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
            precision.step(loss, optimizer)
            total += float(loss.detach())
            steps += 1
    return {"train_loss": total / max(steps, 1), "steps": float(steps)}


@one_thread_for_tables
@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, task, batch_size: int = 4096,
            device: torch.device | None = None) -> np.ndarray:
    """Scores for each row: (N,) for binary, (N, K) for multiclass, (N, 1, *spatial) label
    maps for segmentation."""
    device = device or next(model.parameters()).device
    on_device(model, device).eval()
    if is_image(x):  # bounded activation memory: big volumes go a few at a time
        batch_size = min(batch_size, 64, max(1, 2**22 // int(np.prod(x.shape[1:]))))
    out = []
    for i in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.ascontiguousarray(x[i:i + batch_size])).to(device)
        with MixedPrecision(device).autocast():
            scores = task.scores(task.forward(model, xb))  # e.g. sliding windows over volumes
        out.append((scores.float() if scores.is_floating_point() else scores).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0,), np.float32)
