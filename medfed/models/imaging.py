"""Imaging models (MONAI): (N, C, *spatial) images -> (N, K) logits, or (N, K, *spatial) maps.

Every builder takes ``input_shape = (C, *spatial)`` (2D or 3D, read from the data) and the
number of outputs; ``dp=True`` gives an Opacus-compatible network (GroupNorm instead of
BatchNorm, no in-place activations); ``medfed.models.dp_compat`` fixes any other model.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medfed.errors import MedFedError
from medfed.models.dp_compat import make_dp_compatible

_GROUPS = 8  # GroupNorm groups for DP: divides every channel count of the nets below


def _dims(input_shape: Sequence[int]) -> tuple[int, int]:
    """(in_channels, spatial_dims) of a (C, *spatial) input shape."""
    shape = tuple(int(s) for s in input_shape)
    if len(shape) not in (3, 4):
        raise MedFedError(f"model: imaging models need images (C, H, W) or (C, D, H, W), got "
                          f"inputs of shape {shape}; use logreg/mlp for tables")
    return shape[0], len(shape) - 1


def _small_input(input_shape: Sequence[int]) -> bool:
    """True for MedMNIST-sized images, where the usual stride-2 stem + pooling loses them."""
    return min(int(s) for s in input_shape[1:]) < 64


def _groups(channels: int) -> int:
    for groups in (_GROUPS, 4, 2, 1):
        if channels % groups == 0:
            return groups
    return 1


def _norm(dp: bool) -> tuple | str:
    return ("group", {"num_groups": _GROUPS}) if dp else "batch"


def _act(dp: bool) -> tuple:
    return ("relu", {"inplace": not dp})


class SmallCNN(nn.Module):
    """A few conv blocks (conv-norm-ReLU-pool), global average pool, linear head.

    Fast on CPU: ~25k parameters at the default widths.
    """

    def __init__(self, in_channels: int, spatial_dims: int, n_outputs: int,
                 channels: Sequence[int] = (16, 32, 64), dropout: float = 0.1,
                 norm: str = "batch") -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        bn = nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d
        layers: list[nn.Module] = []
        width = in_channels
        for i, size in enumerate(int(c) for c in channels):
            normer = nn.GroupNorm(_groups(size), size) if norm == "group" else bn(size)
            layers += [conv(width, size, 3, padding=1, bias=False), normer, nn.ReLU()]
            if i < len(channels) - 1:
                layers.append(pool(2))
            width = size
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.features(x)))


def small_cnn(input_shape: Sequence[int], n_outputs: int, channels: Sequence[int] = (16, 32, 64),
              dropout: float = 0.1, norm: str = "batch", dp: bool = False) -> nn.Module:
    """Small CNN for CPU runs (2D or 3D from ``input_shape``); ``norm``: batch or group."""
    if norm not in ("batch", "group"):
        raise MedFedError(f"model.norm: small_cnn takes 'batch' or 'group', got {norm!r}")
    in_channels, dims = _dims(input_shape)
    return SmallCNN(in_channels, dims, n_outputs, channels, dropout, "group" if dp else norm)


def densenet121(input_shape: Sequence[int], n_outputs: int, dropout: float = 0.0,
                dp: bool = False) -> nn.Module:
    """MONAI DenseNet-121; on inputs under 64 px the stem keeps full resolution."""
    from monai.networks.nets import DenseNet121

    in_channels, dims = _dims(input_shape)
    model = DenseNet121(spatial_dims=dims, in_channels=in_channels, out_channels=n_outputs,
                        dropout_prob=dropout, norm=_norm(dp), act=_act(dp))
    if _small_input(input_shape):  # 28 px / 32 would vanish before the last dense block
        model.features.conv0.stride = (1,) * dims
        model.features.pool0 = nn.Identity()
    return make_dp_compatible(model) if dp else model


def _resnet(depth: int, input_shape: Sequence[int], n_outputs: int, dp: bool) -> nn.Module:
    from monai.networks import nets

    in_channels, dims = _dims(input_shape)
    small = _small_input(input_shape)
    builder = nets.resnet18 if depth == 18 else nets.resnet50
    model = builder(spatial_dims=dims, n_input_channels=in_channels, num_classes=n_outputs,
                    conv1_t_size=3 if small else 7, conv1_t_stride=1 if small else 2,
                    no_max_pool=small, norm=_norm(dp), act=_act(dp))
    return make_dp_compatible(model) if dp else model


def resnet18(input_shape: Sequence[int], n_outputs: int, dp: bool = False) -> nn.Module:
    """MONAI ResNet-18 (2D or 3D); small inputs get a 3x3 stride-1 stem and no max-pool."""
    return _resnet(18, input_shape, n_outputs, dp)


def resnet50(input_shape: Sequence[int], n_outputs: int, dp: bool = False) -> nn.Module:
    """MONAI ResNet-50 (2D or 3D); small inputs get a 3x3 stride-1 stem and no max-pool."""
    return _resnet(50, input_shape, n_outputs, dp)


def unet(input_shape: Sequence[int], n_outputs: int, channels: Sequence[int] = (16, 32, 64, 128),
         strides: Sequence[int] = (2, 2, 2), num_res_units: int = 1, dropout: float = 0.0,
         roi_size: Sequence[int] | None = None, dp: bool = False) -> nn.Module:
    """MONAI UNet for segmentation: (N, C, *spatial) -> (N, n_outputs, *spatial) logits.

    ``roi_size``: patch size for training crops and sliding-window inference (volumes larger
    than memory allows); default: whole images. Spatial sizes must divide by prod(strides),
    or set ``roi_size`` to such a patch.
    """
    from monai.networks.nets import UNet

    in_channels, dims = _dims(input_shape)
    if len(channels) != len(strides) + 1:
        raise MedFedError(f"model.channels: unet {list(channels)} needs len(strides) + 1 "
                          "entries; fix model.channels or model.strides")
    model = UNet(spatial_dims=dims, in_channels=in_channels, out_channels=n_outputs,
                 channels=tuple(int(c) for c in channels), strides=tuple(int(s) for s in strides),
                 num_res_units=num_res_units, dropout=dropout,
                 # instance norm keeps no running stats and PReLU is not in-place: Opacus-ready
                 norm="instance", act="prelu")
    if roi_size is not None:
        if len(roi_size) != dims:
            raise MedFedError(f"model.roi_size: unet {list(roi_size)} needs {dims} values")
        model.roi_size = tuple(int(r) for r in roi_size)
    return make_dp_compatible(model) if dp else model
