"""DP-SGD local training with Opacus: per-sample clipping, Gaussian noise, Poisson sampling.

Ghost clipping (``grad_sample_mode="ghost"``: per-sample gradient NORMS without materialising
per-sample gradients, two backward passes) is tried first under ``auto``; a model Opacus
cannot ghost-clip falls back to hooks (per-sample gradients). The mode used is returned.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medfed.config import TrainConfig
from medfed.errors import MedFedError
from medfed.models import use_generator
from medfed.models.runtime import make_optimizer, one_thread_for_tables, pick_device
from medfed.seeds import deterministic_algorithms, torch_generator, torch_seeded

log = logging.getLogger("medfed.privacy")


@dataclass
class DPResult:
    """What one DP-SGD call did: the accountant's own history and the mode used."""

    train_loss: float
    steps: int
    history: list[tuple[float, float, int]]  # Opacus accountant history of this call
    grad_sample_mode: str


def per_sample_loss(task, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) losses: the built-in tasks directly, any other task through vmap of its loss."""
    if task.name == "binary":
        return F.binary_cross_entropy_with_logits(outputs[:, 0], y.float(), reduction="none")
    if task.name == "multiclass":
        return F.cross_entropy(outputs, y.long(), reduction="none")
    return torch.func.vmap(lambda o, t: task.loss(o[None], t[None]))(outputs, y)


class PerSampleLoss(nn.Module):
    """``task.loss`` as a criterion with a ``reduction`` (what ghost clipping needs)."""

    def __init__(self, task, reduction: str = "mean") -> None:
        super().__init__()
        self.task, self.reduction = task, reduction

    def forward(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        per = per_sample_loss(self.task, outputs, y)
        if self.reduction == "none":
            return per
        return per.sum() if self.reduction == "sum" else per.mean()


@dataclass
class Randomness:
    """Where DP-SGD draws from: Poisson sampling (CPU) and noise (the data's device).

    Simulation (``seed``): streams derived from the call's seed, so a rerun releases the very
    same update. A real federation (seed None): fresh 64-bit OS entropy every call, never
    reproducible; ``secure`` hands both to Opacus' cryptographically secure generator.
    """

    sampling: torch.Generator | None
    noise: torch.Generator | None
    secure: bool = False

    @classmethod
    def of(cls, seed: int | None, device: torch.device, secure: bool = False) -> Randomness:
        if secure:
            return cls(None, None, secure=True)
        if seed is not None:
            return cls(torch_generator(seed, "dp-sampling"),
                       torch_generator(seed, "dp-noise", device=device))
        import secrets

        return cls(torch.Generator().manual_seed(secrets.randbits(64)),
                   torch.Generator(device=device).manual_seed(secrets.randbits(64)))


def _loader(x: np.ndarray, y: np.ndarray, batch_size: int, device: torch.device,
            generator: torch.Generator | None) -> DataLoader:
    data = TensorDataset(torch.as_tensor(x, device=device), torch.as_tensor(y, device=device))
    return DataLoader(data, batch_size=batch_size, generator=generator)  # Poisson draws here


def _engine(accountant: str, secure: bool):
    from opacus import PrivacyEngine

    try:
        return PrivacyEngine(accountant=accountant, secure_mode=secure)
    except ImportError:
        raise MedFedError("privacy.secure_mode: Opacus' secure generator needs the torchcsprng "
                          "package; install it, or set privacy.secure_mode: false") from None


def _private(model, optimizer, loader, task, noise, clip, mode, accountant,
             randomness: Randomness):
    engine = _engine(accountant, randomness.secure)
    kwargs = dict(module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=noise,
                  max_grad_norm=clip, poisson_sampling=True, grad_sample_mode=mode,
                  noise_generator=randomness.noise)
    if mode == "ghost":
        dp_model, dp_opt, criterion, dp_loader = engine.make_private(
            criterion=PerSampleLoss(task), **kwargs)
    else:
        dp_model, dp_opt, dp_loader = engine.make_private(**kwargs)
        criterion = task.loss
    return engine, dp_model, dp_opt, criterion, dp_loader


def _epochs(dp_model, dp_opt, criterion, dp_loader, epochs: int) -> tuple[float, int]:
    total, counted, steps = 0.0, 0, 0
    for _ in range(epochs):
        for xb, yb in dp_loader:
            dp_opt.zero_grad(set_to_none=True)
            loss = criterion(dp_model(xb), yb)
            loss.backward()
            dp_opt.step()
            steps += 1
            if len(yb):  # Poisson sampling can draw an empty batch: a step, but no loss
                total += float(loss.detach()) if not hasattr(loss, "loss_per_sample") else \
                    float(loss.loss_per_sample.detach().mean())
                counted += 1
    return total / max(counted, 1), steps


def _clean(model: nn.Module, dp_model) -> None:
    dp_model.remove_hooks() if hasattr(dp_model, "remove_hooks") else None
    for p in model.parameters():
        p.grad_sample = None
        p.grad = None
        for attr in ("summed_grad", "_norm_sample"):
            if hasattr(p, attr):
                delattr(p, attr)
        if hasattr(p, "_forward_counter"):
            del p._forward_counter


def auto_modes(model: nn.Module, device: torch.device) -> list[str]:
    """Ghost clipping first for convolutional nets on a GPU (it never materialises per-sample
    gradients: far less memory, larger batches); per-sample hooks otherwise: on CPU ghost's
    second backward pass costs more than it saves (bench/dp_overhead.py: 1.5x slower for the
    MLP, 1.7x for DenseNet121, even for the small CNN)."""
    has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())
    return ["ghost", "hooks"] if has_conv and device.type == "cuda" else ["hooks"]


def _dropout_seeded(seed: int | None):
    """``nn.Dropout`` draws from torch's global generator: seeded for the call in simulation."""
    return contextlib.nullcontext() if seed is None else torch_seeded(seed, "dropout")


@one_thread_for_tables  # tiny tabular models: a second intra-op thread only adds waits
def train_dp(model: nn.Module, x: np.ndarray, y: np.ndarray, task, cfg: TrainConfig, *,
             noise_multiplier: float, max_grad_norm: float, epochs: int, seed: int | None,
             accountant: str = "rdp", mode: str = "auto",
             device: torch.device | None = None, secure_mode: bool = False) -> DPResult:
    """Train ``model`` (already DP-ready, see compat) in place with DP-SGD.

    ``x``: (N, ...) float32 scaled inputs, ``y``: (N,) labels. Sample rate = 1 / ceil(N /
    batch_size) (Opacus' Poisson loader), ``epochs * ceil(N / batch_size)`` steps.
    ``seed``: reproducible sampling, noise and dropout (simulation); None: fresh entropy
    (a real federation, where noise drawn from a known seed could be subtracted).
    ``secure_mode``: Opacus' cryptographically secure generator (needs torchcsprng).
    """
    device = device or pick_device(cfg.device)
    model.to(device).train()
    modes = auto_modes(model, device) if mode == "auto" else [mode]
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for i, current in enumerate(modes):
        randomness = Randomness.of(seed, device, secure_mode)  # a retry redraws the same
        loader = _loader(x, y, cfg.batch_size, device, randomness.sampling)
        if seed is not None:
            use_generator(model, torch_generator(seed, "model", device=device))
        optimizer = make_optimizer(model, cfg)
        dp_model = None
        try:
            with _dropout_seeded(seed), deterministic_algorithms(device), \
                    warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Opacus' backward-hook and secure-RNG notes
                engine, dp_model, dp_opt, criterion, dp_loader = _private(
                    model, optimizer, loader, task, noise_multiplier, max_grad_norm, current,
                    accountant, randomness)
                loss, steps = _epochs(dp_model, dp_opt, criterion, dp_loader, epochs)
        except (NotImplementedError, RuntimeError, ValueError, TypeError) as exc:
            if i + 1 == len(modes):
                raise
            log.info("DP-SGD: %s clipping failed (%s); falling back to %s", current,
                     str(exc).splitlines()[0][:120], modes[i + 1])
            model.load_state_dict(start)
            continue
        finally:
            if dp_model is not None:
                _clean(model, dp_model)
        return DPResult(loss, steps, [tuple(h) for h in engine.accountant.history], current)
    raise AssertionError("unreachable")
