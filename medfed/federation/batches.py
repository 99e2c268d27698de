"""Minibatches for local training: tables and small image sets on the device once, large or
memory-mapped image sets gathered batch by batch; optional MONAI augmentation and patch crops.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

RESIDENT_BYTES = 256 * 2**20  # arrays up to this size are copied to the device once
AUGMENTATIONS = ("flip", "rotate90", "intensity", "noise")


def is_image(x: np.ndarray) -> bool:
    return x.ndim in (4, 5)


def augmentation(names: Sequence[str], spatial_dims: int, with_mask: bool,
                 roi_size: Sequence[int] | None, seed: int):
    """A seeded MONAI dictionary transform over one sample ``{"image", "label"?}``, or None.

    Spatial transforms move image and mask together; intensity ones touch the image only.
    ``roi_size`` (segmentation): crop a patch, centred on foreground half of the time.
    """
    if not names and roi_size is None:
        return None
    from monai import transforms as T

    keys = ["image", "label"] if with_mask else ["image"]
    steps: list = []
    if roi_size is not None:
        steps += [T.SpatialPadd(keys, spatial_size=roi_size),
                  T.RandCropByPosNegLabeld(keys, label_key="label", spatial_size=roi_size,
                                           pos=1, neg=1, num_samples=1)]
    if "flip" in names:
        steps += [T.RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    if "rotate90" in names:
        steps.append(T.RandRotate90d(keys, prob=0.5, spatial_axes=(spatial_dims - 2,
                                                                   spatial_dims - 1)))
    if "intensity" in names:
        steps += [T.RandScaleIntensityd("image", factors=0.1, prob=0.5),
                  T.RandShiftIntensityd("image", offsets=0.1, prob=0.5)]
    if "noise" in names:
        steps.append(T.RandGaussianNoised("image", prob=0.5, std=0.05))
    compose = T.Compose(steps)
    compose.set_random_state(seed=seed % (2**32))
    return compose


class ArrayBatches:
    """Batches of (x, y) from numpy arrays (or memmaps) on ``device``.

    ``x``: (N, F) table or (N, C, *spatial) images; ``y``: (N,) labels or (N, 1, *spatial)
    masks. Arrays up to ``RESIDENT_BYTES`` in RAM are moved to the device once (the fast
    path); larger ones and memmaps are read per batch, so a round never copies a whole
    memmap. ``transform`` (see ``augmentation``) is applied per sample on the CPU.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, device: torch.device,
                 transform=None) -> None:
        self.x, self.y, self.device, self.transform = x, y, device, transform
        lazy = isinstance(x, np.memmap) or isinstance(y, np.memmap)
        self.resident = not lazy and x.nbytes + y.nbytes <= RESIDENT_BYTES
        if self.resident:
            self.xt = torch.as_tensor(x, device=device)
            self.yt = torch.as_tensor(y, device=device)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.resident and self.transform is None:
            idx = idx.to(self.device)
            return self.xt[idx], self.yt[idx]
        if self.resident:
            xb, yb = self.xt[idx.to(self.device)].cpu(), self.yt[idx.to(self.device)].cpu()
        else:
            rows = np.sort(idx.numpy())  # sorted reads are sequential on a memmap
            xb = torch.from_numpy(np.ascontiguousarray(self.x[rows]))
            yb = torch.from_numpy(np.ascontiguousarray(self.y[rows]))
        if self.transform is not None:
            xb, yb = self._augment(xb, yb)
        pin = self.device.type == "cuda"
        return (xb.pin_memory().to(self.device, non_blocking=True) if pin else xb,
                yb.pin_memory().to(self.device, non_blocking=True) if pin else yb)

    def _augment(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with_mask = yb.ndim == xb.ndim
        images, labels = [], []
        for i in range(len(xb)):
            sample = {"image": xb[i], **({"label": yb[i]} if with_mask else {})}
            out = self.transform(sample)
            out = out[0] if isinstance(out, list) else out  # crops return a list of samples
            images.append(torch.as_tensor(out["image"]).float())
            labels.append(torch.as_tensor(out["label"]).long() if with_mask else yb[i])
        return torch.stack(images), torch.stack(labels)


class MixedPrecision:
    """``torch.autocast`` + ``GradScaler`` on CUDA (when enabled); a plain step elsewhere."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.enabled = enabled and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.enabled else None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16)

    def step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()
