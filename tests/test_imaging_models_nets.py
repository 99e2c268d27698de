"""Imaging models: every net builds, runs forward/backward in 2D and 3D, and is Opacus-ready
when asked; the DP fix-up helper repairs a BatchNorm + in-place ReLU model."""

from __future__ import annotations

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from medfed.errors import MedFedError
from medfed.models import MODELS, build_model, check_options
from medfed.models.dp_compat import make_dp_compatible

CLASSIFIERS = ["small_cnn", "densenet121", "resnet18", "resnet50"]
SHAPES = {"2d": (1, 16, 16), "3d": (1, 8, 8, 8)}


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_classifier_forward_backward(name, dims):
    torch.manual_seed(0)
    shape = SHAPES[dims]
    model = build_model(name, shape, 3)
    out = model(torch.randn(2, *shape))
    assert out.shape == (2, 3)
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", [*CLASSIFIERS, "unet"])
@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_dp_compatible_models_validate(name, dims):
    options = {"channels": [8, 16], "strides": [2]} if name == "unet" else {}
    model = build_model(name, SHAPES[dims], 2, dp=True, **options)
    assert ModuleValidator.validate(model, strict=False) == []
    assert not any(getattr(m, "inplace", False) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_plain_monai_nets_need_the_fix_and_get_it():
    model = build_model("resnet18", SHAPES["2d"], 2)
    assert ModuleValidator.validate(model, strict=False)  # BatchNorm: Opacus refuses it
    fixed = make_dp_compatible(model)
    assert ModuleValidator.validate(fixed, strict=False) == []
    assert fixed(torch.randn(2, *SHAPES["2d"])).shape == (2, 2)


def test_make_dp_compatible_on_a_hand_made_model():
    model = nn.Sequential(nn.Conv2d(1, 12, 3), nn.BatchNorm2d(12), nn.ReLU(inplace=True),
                          nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(2, 1, 8, 8))
    fixed = make_dp_compatible(model)
    assert isinstance(fixed[1], nn.GroupNorm) and fixed[1].num_channels == 12
    assert fixed[2].inplace is False
    assert ModuleValidator.validate(fixed, strict=False) == []


@pytest.mark.parametrize("dims", ["2d", "3d"])
def test_unet_segments_every_voxel(dims):
    shape = (1, 16, 16) if dims == "2d" else (1, 8, 16, 16)
    model = build_model("unet", shape, 3, channels=[8, 16, 32], strides=[2, 2])
    x = torch.randn(2, *shape)
    out = model(x)
    assert out.shape == (2, 3, *shape[1:])
    out.mean().backward()


def test_unet_roi_size_is_kept_for_sliding_windows():
    model = build_model("unet", (1, 8, 32, 32), 2, channels=[8, 16], strides=[2],
                        roi_size=[8, 16, 16])
    assert model.roi_size == (8, 16, 16)
    with pytest.raises(MedFedError, match="roi_size"):
        build_model("unet", (1, 8, 32, 32), 2, roi_size=[16, 16])


def test_models_are_registered_and_options_checked():
    for name in [*CLASSIFIERS, "unet"]:
        assert name in MODELS
    with pytest.raises(MedFedError, match="unknown option"):
        check_options("small_cnn", {"depth": 3})
    with pytest.raises(MedFedError, match="images"):
        build_model("small_cnn", (30,), 1)


def test_densenet_keeps_small_images_alive():
    # 28 px would shrink to nothing through the usual stem; the small-input stem keeps it
    model = build_model("densenet121", (1, 28, 28), 1)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 1)
