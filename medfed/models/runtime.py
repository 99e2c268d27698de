"""Where and how a model runs: the device, the optimiser, the thread count.

Shared by local training (federation), DP-SGD (privacy) and the simulation's baselines.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torch import nn

from medfed.config import TrainConfig


def pick_device(preference: str = "auto") -> torch.device:
    """CUDA when asked for or available (``auto``), else CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def on_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model.to(device)``, skipped when it is already there (``to`` walks every tensor)."""
    first = next(model.parameters(), None)
    if first is None or first.device != device:
        model.to(device)
    return model


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def one_thread_for_tables(fn):
    """Run ``fn(model, x, ...)`` single-threaded when ``x`` is a table (N, F).

    Tabular models are tiny: a second intra-op thread only adds synchronisation, which on a
    busy CPU costs a scheduler time slice (~10 ms) per op — measured 12 ms per BCE call.
    """
    @functools.wraps(fn)
    def wrapper(model, x, *args, **kwargs):
        threads = torch.get_num_threads()
        if np.ndim(x) != 2 or threads == 1:
            return fn(model, x, *args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(model, x, *args, **kwargs)
        finally:
            torch.set_num_threads(threads)

    return wrapper
