"""Models by name: ``build_model(name, input_shape, n_outputs, **options)``."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from medfed.errors import MedFedError

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
