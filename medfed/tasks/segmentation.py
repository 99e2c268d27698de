"""Segmentation: (N, K, *spatial) logits against (N, 1, *spatial) integer masks.

Loss: MONAI's DiceCELoss (soft Dice over the foreground labels + cross-entropy over all K
classes, softmax; 0 = background).
Scores: predicted label maps (N, 1, *spatial) uint8; volumes larger than the model's
``roi_size`` are predicted by sliding-window inference. Metrics: Dice per foreground label
(mean over images) and their mean, ``dice``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import torch.nn.functional as F

from medfed.tasks.base import BaseTask


def dice_per_image(y: np.ndarray, pred: np.ndarray, label: int) -> np.ndarray:
    """Dice of one label for each image: (N,) float; NaN where neither mask nor prediction has
    the label (nothing to find, nothing found), 0 where only one of them does."""
    n = len(y)
    truth = (np.asarray(y).reshape(n, -1) == label)
    guess = (np.asarray(pred).reshape(n, -1) == label)
    inter = np.logical_and(truth, guess).sum(axis=1)
    total = truth.sum(axis=1) + guess.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2.0 * inter / np.maximum(total, 1), np.nan)


def dice_metrics(y: np.ndarray, pred: np.ndarray, n_classes: int | None = None
                 ) -> dict[str, float]:
    """``dice_<label>`` (mean over images) for each foreground label and ``dice`` (their mean)."""
    n_classes = n_classes or int(max(np.max(y, initial=0), np.max(pred, initial=0))) + 1
    out: dict[str, float] = {}
    for label in range(1, max(n_classes, 2)):
        scores = dice_per_image(y, pred, label)
        out[f"dice_{label}"] = float(np.nanmean(scores)) if np.isfinite(scores).any() else math.nan
    finite = [v for v in out.values() if not math.isnan(v)]
    return {"dice": float(np.mean(finite)) if finite else math.nan, **out}


def sliding_window_logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)``, or sliding-window inference over ``model.roi_size`` patches when set."""
    roi = getattr(model, "roi_size", None)
    if roi is None:
        return model(x)
    from monai.inferers import sliding_window_inference

    return sliding_window_inference(x, roi_size=roi, sw_batch_size=4, predictor=model,
                                    overlap=0.25, mode="gaussian")


@dataclass(frozen=True)
class SegmentationTask(BaseTask):
    """K output channels (background included); masks hold labels 0..K-1."""

    name: str = "segmentation"
    primary_metric: str = "dice"
    metric_names: tuple[str, ...] = ("dice",)

    @cached_property
    def _loss(self):
        from monai.losses import DiceCELoss

        # Dice on the foreground labels only: small lesions are not drowned by background
        return DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)

    def n_outputs(self, n_classes: int) -> int:
        return max(n_classes, 2)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self._loss(logits.float(), y.long())

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits for prediction (sliding window over large volumes)."""
        return sliding_window_logits(model, x)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=1, keepdim=True).to(torch.uint8)

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return dice_metrics(y, scores)

    def label_summary(self, y: np.ndarray) -> dict[str, int]:
        """Images, and per foreground label the number of images that contain it."""
        n = len(y)
        flat = np.asarray(y).reshape(n, -1)
        out = {"images": n}
        for label in np.unique(flat):
            if label > 0:
                out[f"with_{int(label)}"] = int((flat == label).any(axis=1).sum())
        return out

    def partition_labels(self, y: np.ndarray) -> np.ndarray:
        """(N,) 1 where an image has foreground: what label-skew partitioners split by."""
        return (np.asarray(y).reshape(len(y), -1).max(axis=1) > 0).astype(np.int64)

    def stratify(self, y: np.ndarray) -> np.ndarray | None:
        """Split so that images with and without foreground land in both train and test."""
        has = np.asarray(y).reshape(len(y), -1).max(axis=1) > 0
        _, counts = np.unique(has, return_counts=True)
        return has.astype(int) if len(counts) > 1 and counts.min() >= 2 else None

    def check_train_labels(self, y: np.ndarray) -> str | None:
        if len(y) == 0 or np.max(y) == 0:
            return "no foreground voxels in its training masks"
        return None


def region_dice(y: np.ndarray, pred: np.ndarray, regions: tuple[str, ...]) -> dict[str, float]:
    """``dice_<region>`` (mean over images with the region in mask or prediction) for each
    region channel of (N, R, *spatial) binary masks, and ``dice`` (their mean)."""
    out: dict[str, float] = {}
    for r, name in enumerate(regions):
        scores = dice_per_image(np.asarray(y)[:, r], np.asarray(pred)[:, r], 1)
        out[f"dice_{name}"] = float(np.nanmean(scores)) if np.isfinite(scores).any() else math.nan
    finite = [v for v in out.values() if not math.isnan(v)]
    return {"dice": float(np.mean(finite)) if finite else math.nan, **out}


@dataclass(frozen=True)
class RegionSegmentationTask(SegmentationTask):
    """One sigmoid output per named region; regions may overlap (e.g. BraTS whole tumour ⊃
    tumour core ⊃ enhancing tumour). ``y``: (N, R, *spatial) 0/1. The task's name carries the
    region names (``regions:wt,tc,et``), so metrics are ``dice_wt``, ``dice_tc``, ...

    Loss: MONAI DiceLoss with sigmoid (Dice over the batch, per region channel) + binary
    cross-entropy per voxel and region.
    """

    regions_text: str = ""
    name: str = "regions"

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", f"regions:{self.regions_text}")

    @classmethod
    def with_argument(cls, regions: str) -> RegionSegmentationTask:
        """The task of ``regions:<regions>`` (region names, comma-separated)."""
        return cls(regions_text=regions)

    @property
    def regions(self) -> tuple[str, ...]:
        return tuple(r for r in self.regions_text.split(",") if r)

    @cached_property
    def _loss(self):
        from monai.losses import DiceLoss

        # Dice over the batch per region: an image without ET (a non-enhancing tumour) would
        # otherwise score Dice 0 however right its prediction
        return DiceLoss(sigmoid=True, include_background=True, batch=True)

    def n_outputs(self, n_classes: int) -> int:
        return len(self.regions)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # binary cross-entropy per region (MONAI's DiceCELoss would softmax across regions,
        # wrong for nested ones)
        logits, target = logits.float(), y.float()
        return self._loss(logits, target) + F.binary_cross_entropy_with_logits(logits, target)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits > 0).to(torch.uint8)  # sigmoid(logit) > 0.5

    def metrics(self, y: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        return region_dice(y, scores, self.regions)

    def label_summary(self, y: np.ndarray) -> dict[str, int]:
        """Images, and per region the number of images that contain it."""
        n = len(y)
        flat = np.asarray(y).reshape(n, len(self.regions), -1).max(axis=2)
        return {"images": n, **{f"with_{name}": int(flat[:, r].sum())
                                for r, name in enumerate(self.regions)}}
