"""Models are made DP-compatible automatically: BatchNorm -> GroupNorm, no in-place ReLU."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from medfed.config import TrainConfig
from medfed.models.dp_compat import dp_ready
from medfed.privacy.dp import train_dp
from medfed.tasks import get_task


def bn_inplace_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 1))


def test_batchnorm_inplace_model_is_fixed_with_one_warning_line(caplog):
    caplog.set_level(logging.WARNING, logger="medfed.privacy")
    model = dp_ready(bn_inplace_cnn())
    kinds = {type(m).__name__ for m in model.modules()}
    assert "BatchNorm2d" not in kinds and "GroupNorm" in kinds
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert "BatchNorm2d -> GroupNorm" in lines[0] and "in-place ReLU" in lines[0]
    dp_ready(bn_inplace_cnn())  # the same change again: not warned again
    assert len(caplog.records) == 1


@pytest.mark.parametrize("mode", ["auto", "ghost", "hooks"])
def test_fixed_model_trains_under_dp_sgd(mode):
    torch.manual_seed(0)
    model = dp_ready(bn_inplace_cnn())
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    y = (x.mean(axis=(1, 2, 3)) > 0).astype(np.int64)
    before = [p.detach().clone() for p in model.parameters()]
    result = train_dp(model, x, y, get_task("binary"), TrainConfig(batch_size=16, lr=0.1),
                      noise_multiplier=1.0, max_grad_norm=1.0, epochs=2, seed=0, mode=mode)
    assert result.steps == 8 and result.grad_sample_mode == ("hooks" if mode == "auto" else mode)
    assert result.history == [(1.0, 0.25, 8)]
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(getattr(p, "grad_sample", None) is None for p in model.parameters())


def test_unsupported_ghost_model_falls_back_to_hooks(monkeypatch):
    from medfed.privacy import dp

    real = dp._private

    def no_ghost(model, optimizer, loader, task, noise, clip, mode, *rest):
        if mode == "ghost":
            raise NotImplementedError("layer has no ghost norm sampler")
        return real(model, optimizer, loader, task, noise, clip, mode, *rest)

    monkeypatch.setattr(dp, "_private", no_ghost)
    monkeypatch.setattr(dp, "auto_modes", lambda model, device: ["ghost", "hooks"])  # as on GPU
    model = dp_ready(bn_inplace_cnn())
    x = np.random.default_rng(1).normal(size=(32, 1, 8, 8)).astype(np.float32)
    y = np.arange(32) % 2
    result = train_dp(model, x, y, get_task("binary"), TrainConfig(batch_size=16),
                      noise_multiplier=1.0, max_grad_norm=1.0, epochs=1, seed=0, mode="auto")
    assert result.grad_sample_mode == "hooks"
