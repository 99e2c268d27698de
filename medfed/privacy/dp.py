"""DP-SGD local training with Opacus: per-sample clipping, Gaussian noise, Poisson sampling.

The sample is the privacy unit (``medfed.privacy.units``). When every unit has one row (a
clinical table) Opacus' own loop runs unchanged. When units have several rows (the hours of an
ICU stay, the slices of a volume, a patient's images), units are Poisson-sampled, each row's
gradient comes from Opacus' per-sample hooks, the rows of a unit are summed and that sum is
clipped as ONE sample by Opacus' optimizer (noise, scaling); the rate is batch / units.

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
from medfed.privacy.accounting import steps_per_epoch
from medfed.privacy.units import one_row_each, unit_index
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


def _secure_generator():
    try:
        import torchcsprng as csprng
    except ImportError:
        raise MedFedError("privacy.secure_mode: Opacus' secure generator needs the torchcsprng "
                          "package; install it, or set privacy.secure_mode: false") from None
    return csprng.create_random_device_generator("/dev/urandom")


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
             device: torch.device | None = None, secure_mode: bool = False,
             units: np.ndarray | None = None) -> DPResult:
    """Train ``model`` (already DP-ready, see compat) in place with DP-SGD.

    ``x``: (N, ...) float32 scaled inputs, ``y``: (N,) labels. Sample rate = 1 / ceil(N /
    batch_size) (Opacus' Poisson loader), ``epochs * ceil(N / batch_size)`` steps.
    ``seed``: reproducible sampling, noise and dropout (simulation); None: fresh entropy
    (a real federation, where noise drawn from a known seed could be subtracted).
    ``secure_mode``: Opacus' cryptographically secure generator (needs torchcsprng).
    ``units``: (N,) the privacy unit of each row (None: one row each); units of several rows
    are sampled and clipped whole (``train_dp_units``), rate = 1 / ceil(units / batch_size).
    """
    device = device or pick_device(cfg.device)
    if not one_row_each(units):
        return train_dp_units(model, x, y, task, cfg, units=units,
                              noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                              epochs=epochs, seed=seed, device=device, secure_mode=secure_mode)
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


UNIT_MODE = "hooks, summed per unit"
GRAD_FLOATS = 2**25  # per-row gradients held at once (128 MiB): rows are processed in chunks


class UnitRows:
    """The rows of each unit: ``rows(chosen)`` -> (row indices, each row's position in chosen).

    ``index``: (N,) dense unit index of each row (``units.unit_index``).
    """

    def __init__(self, index: np.ndarray, n_units: int) -> None:
        self.order = np.argsort(index, kind="stable")
        self.starts = np.searchsorted(index[self.order], np.arange(n_units + 1))

    def rows(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.order[self.starts[u]:self.starts[u + 1]] for u in chosen]
        owner = np.repeat(np.arange(len(chosen)), [len(p) for p in parts])
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return rows, owner


def _unit_gradients(gsm, params: list[nn.Parameter], x, y, task, rows: np.ndarray,
                    owner: np.ndarray, n_chosen: int, device: torch.device
                    ) -> tuple[float, int]:
    """Set each param's ``grad_sample`` to (n_chosen, *shape): every unit's summed row
    gradients. Rows go through the model in chunks of bounded gradient memory."""
    sums = [torch.zeros((n_chosen, *p.shape), device=device, dtype=p.dtype) for p in params]
    chunk = max(1, GRAD_FLOATS // max(1, sum(p.numel() for p in params)))
    total = 0.0
    for at in range(0, len(rows), chunk):
        take = rows[at:at + chunk]
        xb, yb = _rows_on(x, take, device), _rows_on(y, take, device)
        per_row = _row_losses(task, gsm(xb), yb)
        per_row.sum().backward()
        where = torch.as_tensor(owner[at:at + chunk], device=device)
        for p, acc in zip(params, sums, strict=True):
            if getattr(p, "grad_sample", None) is not None:  # None: unused by these rows
                acc.index_add_(0, where, p.grad_sample.to(acc.dtype))
            p.grad_sample = None
        total += float(per_row.detach().sum())
    for p, acc in zip(params, sums, strict=True):
        p.grad_sample, p.grad = acc, None  # Opacus' optimizer clips these as the samples
    return total, len(rows)


def _row_losses(task, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B,) each row's own loss: vmap of the task's loss, or one call per row where the loss
    cannot be vmapped (e.g. MONAI's Dice + cross-entropy)."""
    try:
        return per_sample_loss(task, outputs, y)
    except RuntimeError:
        return torch.stack([task.loss(outputs[i:i + 1], y[i:i + 1]) for i in range(len(y))])


def _rows_on(a, rows: np.ndarray, device: torch.device) -> torch.Tensor:
    if isinstance(a, torch.Tensor):
        return a[torch.as_tensor(rows, device=a.device)]
    return torch.as_tensor(np.ascontiguousarray(a[rows]), device=device)


def _resident(a: np.ndarray, device: torch.device):
    """Small in-memory arrays go to the device once; memmaps are read chunk by chunk."""
    if isinstance(a, np.memmap) or a.nbytes > 2**28:
        return a
    return torch.as_tensor(np.ascontiguousarray(a), device=device)


@one_thread_for_tables
def train_dp_units(model: nn.Module, x: np.ndarray, y: np.ndarray, task, cfg: TrainConfig, *,
                   units: np.ndarray, noise_multiplier: float, max_grad_norm: float,
                   epochs: int, seed: int | None, device: torch.device | None = None,
                   secure_mode: bool = False) -> DPResult:
    """DP-SGD where one sample is one unit (patient or stay) of possibly many rows.

    ``x``: (N, ...) scaled inputs, ``y``: (N, ...) labels, ``units``: (N,) unit ids. Each step
    draws every unit with probability q = 1 / ceil(U / batch_size) (Poisson, as Opacus), sums
    the per-row gradients of each drawn unit, clips each sum to ``max_grad_norm``, adds
    N(0, (noise * clip)^2) and divides by q * U. ``epochs * ceil(U / batch_size)`` steps.
    """
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer

    device = device or pick_device(cfg.device)
    model.to(device).train()
    index, n_units = unit_index(units, len(y))
    per_epoch = steps_per_epoch(n_units, cfg.batch_size)
    rate = 1.0 / per_epoch
    randomness = Randomness.of(seed, device, secure_mode)
    secure = _secure_generator() if secure_mode else None
    sampling, noise = (secure, secure) if secure_mode else (randomness.sampling,
                                                            randomness.noise)
    if seed is not None:
        use_generator(model, torch_generator(seed, "model", device=device))
    params = [p for p in model.parameters() if p.requires_grad]
    gsm = None
    try:
        with _dropout_seeded(seed), deterministic_algorithms(device), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Opacus' backward-hook notes
            gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
            optimizer = DPOptimizer(make_optimizer(model, cfg), noise_multiplier=noise_multiplier,
                                    max_grad_norm=max_grad_norm,
                                    expected_batch_size=max(1, int(n_units * rate)),
                                    loss_reduction="mean", generator=noise,
                                    secure_mode=secure_mode)
            loss = _unit_epochs(gsm, optimizer, params, _resident(x, device),
                                _resident(y, device), task, UnitRows(index, n_units), rate,
                                epochs * per_epoch, sampling, device)
    finally:
        if gsm is not None:
            _clean(model, gsm)
    steps = epochs * per_epoch
    return DPResult(loss, steps, [(float(noise_multiplier), rate, steps)], UNIT_MODE)


def _unit_epochs(gsm, optimizer, params, x, y, task, unit_rows: UnitRows, rate: float,
                 steps: int, sampling: torch.Generator | None, device: torch.device) -> float:
    """``steps`` DP-SGD steps over Poisson-drawn units; the mean loss per row."""
    total, counted = 0.0, 0
    n_units = len(unit_rows.starts) - 1
    for _ in range(steps):
        drawn = torch.rand(n_units, generator=sampling) < rate  # Opacus' Poisson sampler
        chosen = torch.nonzero(drawn).reshape(-1).numpy()
        optimizer.zero_grad(set_to_none=True)
        rows, owner = unit_rows.rows(chosen)
        loss, n_rows = _unit_gradients(gsm, params, x, y, task, rows, owner, len(chosen),
                                       device)
        optimizer.step()
        total, counted = total + loss, counted + n_rows
    return total / max(counted, 1)
