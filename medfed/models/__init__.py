"""Models by name: ``build_model(name, input_shape, n_outputs, **options)``.

``for_experiment(cfg, info)`` is the one place an experiment's model is built: the server's
initial weights, each site's model and every evaluation use it, so all agree on the layers.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from medfed.config import ExperimentConfig
from medfed.datasets.base import DataInfo
from medfed.errors import MedFedError
from medfed.seeds import torch_seeded
from medfed.tasks import get_task

# name -> "module:function"; each builder takes (n_features | input_shape, n_outputs, **options)
MODELS: dict[str, str] = {
    "logreg": "medfed.models.clinical:logreg",
    "mlp": "medfed.models.clinical:mlp",
    "cox": "medfed.models.survival:cox",
    "cox_mlp": "medfed.models.survival:cox_mlp",
    "gru": "medfed.models.sequence:gru",
    "small_cnn": "medfed.models.imaging:small_cnn",
    "densenet121": "medfed.models.imaging:densenet121",
    "resnet18": "medfed.models.imaging:resnet18",
    "resnet50": "medfed.models.imaging:resnet50",
    "unet": "medfed.models.imaging:unet",
    "multimodal": "medfed.models.multimodal:multimodal",
}
TABULAR = {"logreg", "mlp"}


def model_builder(name: str) -> Callable[..., nn.Module]:
    if name not in MODELS:
        raise MedFedError(f"model.name: unknown model {name!r}; choose one of {', '.join(MODELS)}")
    module, func = MODELS[name].split(":")
    return getattr(importlib.import_module(module), func)


def check_options(name: str, options: dict[str, Any]) -> None:
    params = inspect.signature(model_builder(name)).parameters
    allowed = [p for p in list(params)[2:]]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise MedFedError(f"model: unknown option(s) {unknown} for {name!r}; allowed: {allowed}")


def build_model(name: str, input_shape: tuple[int, ...], n_outputs: int,
                **options: Any) -> nn.Module:
    """Build a model; tabular models take ``input_shape = (n_features,)``."""
    check_options(name, options)
    first = input_shape[0] if name in TABULAR else input_shape
    return model_builder(name)(first, n_outputs, **options)


@runtime_checkable
class PartialModel(Protocol):
    """A model whose sites may send part of it: the arrays their own data trains."""

    def site_state_dict(self, x_train: np.ndarray) -> dict[str, torch.Tensor]: ...


def site_state_dict(model: nn.Module, x_train: np.ndarray) -> dict[str, torch.Tensor]:
    """What a site sends after training on ``x_train``: every array, unless the model is a
    ``PartialModel`` (e.g. multimodal: a clinical-only site leaves out the image branch)."""
    if isinstance(model, PartialModel):
        return model.site_state_dict(x_train)
    return model.state_dict()


@runtime_checkable
class DrawingModel(Protocol):
    """A model that draws in its forward pass beyond ``nn.Dropout`` (e.g. multimodal's
    modality dropout): it draws from the generator it is given, never a global one."""

    def use_generator(self, generator: torch.Generator) -> None: ...


def use_generator(model: nn.Module, generator: torch.Generator) -> None:
    """Hand ``generator`` to every ``DrawingModel`` inside ``model`` (no-op for the others)."""
    for module in model.modules():
        if isinstance(module, DrawingModel):
            module.use_generator(generator)


def for_experiment(cfg: ExperimentConfig, info: DataInfo, seed: int | None = None) -> nn.Module:
    """The experiment's model for data described by ``info``; Opacus-ready under DP-SGD.

    ``seed``: the experiment seed its initial weights are drawn from (purpose "init"; None:
    weights that are about to be overwritten, e.g. a site loading the global model).
    """
    from medfed.models.dp_compat import maybe_dp_ready

    n_outputs = get_task(info.task).n_outputs(info.n_classes)
    with torch_seeded(0 if seed is None else seed, "init"):  # layers draw from torch's global
        model = build_model(cfg.model.name, info.input_shape, n_outputs, **cfg.model_options())
        return maybe_dp_ready(model, cfg.privacy.mode)  # BatchNorm -> GroupNorm etc. (Opacus)
