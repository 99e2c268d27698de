"""Local training and prediction, shared by the ClientApp and the simulation baselines."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from medfed.config import TrainConfig


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when asked for or available (``auto``), else CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def minibatches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches covering ``n`` rows once (an epoch)."""
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


def train_local(model: nn.Module, x: np.ndarray, y: np.ndarray, task, cfg: TrainConfig, *,
                epochs: int, seed: int, proximal_mu: float = 0.0,
                device: torch.device | None = None) -> dict[str, float]:
    """Train ``model`` in place for ``epochs`` epochs; returns mean loss and step count.

    ``x``: (N, ...) float32 inputs already scaled; ``y``: (N,) int labels. With
    ``proximal_mu > 0`` the FedProx term mu/2 * ||w - w_start||^2 is added to the loss.
    """
    device = device or pick_device(cfg.device)
    model.to(device).train()
    xt = torch.as_tensor(x, device=device)
    yt = torch.as_tensor(y, device=device)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else None
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(seed)
    total, steps = 0.0, 0
    for _ in range(epochs):
        for idx in minibatches(len(yt), cfg.batch_size, generator):
            idx = idx.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(model(xt[idx]), yt[idx])
            if anchor is not None:
                loss = loss + proximal_mu / 2 * sum(
                    (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True))
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
    return {"train_loss": total / max(steps, 1), "steps": float(steps)}


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, task, batch_size: int = 4096,
            device: torch.device | None = None) -> np.ndarray:
    """Scores for each row: (N,) for binary, (N, K) for multiclass."""
    device = device or next(model.parameters()).device
    model.to(device).eval()
    xt = torch.as_tensor(x)
    out = [task.scores(model(xt[i:i + batch_size].to(device))).float().cpu()
           for i in range(0, len(xt), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0,), np.float32)
