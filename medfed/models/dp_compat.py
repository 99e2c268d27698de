"""Make any model trainable under Opacus: ModuleValidator's fix plus no in-place activations.

MONAI networks default to BatchNorm (mixes samples: no per-sample gradient) and in-place
ReLU (breaks Opacus' backward hooks). Both are replaced, with ONE warning line naming what
was changed. The same fix must be applied wherever the model is built (server, client,
evaluation) so every party agrees on the parameter names.
"""

from __future__ import annotations

import logging
from collections import Counter

from torch import nn

log = logging.getLogger("medfed.privacy")
_warned: set[str] = set()


def fix_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """(model ready for DP-SGD, what was changed, e.g. ["2 BatchNorm2d -> GroupNorm"])."""
    from opacus.validators import ModuleValidator

    changes: Counter[str] = Counter()
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        before = Counter(type(m).__name__ for m in model.modules())
        model = ModuleValidator.fix(model)
        after = Counter(type(m).__name__ for m in model.modules())
        for name, count in before.items():
            if after.get(name, 0) < count:
                new = sorted(set(after) - set(before)) or ["a DP-compatible layer"]
                changes[f"{name} -> {'/'.join(new)}"] += count - after.get(name, 0)
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
            changes[f"in-place {type(module).__name__} -> not in-place"] += 1
    remaining = ModuleValidator.validate(model, strict=False)
    if remaining:
        from medfed.errors import MedFedError

        raise MedFedError(f"model cannot be trained with DP-SGD even after Opacus' fix: "
                          f"{remaining[0]}; choose another model.name or privacy.mode=central")
    return model, [f"{n} {what}" for what, n in changes.items()]


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """``fix_model`` without the list of changes: a model Opacus accepts."""
    return fix_model(model)[0]


def dp_ready(model: nn.Module) -> nn.Module:
    """``fix_model`` with one warning line per distinct change (not once per round)."""
    model, changes = fix_model(model)
    if changes:
        line = "DP-SGD: model changed for Opacus: " + ", ".join(changes)
        if line not in _warned:
            _warned.add(line)
            log.warning(line)
    return model


def maybe_dp_ready(model: nn.Module, privacy_mode: str) -> nn.Module:
    """The fix when ``privacy.mode`` is dp-sgd; the model unchanged otherwise."""
    return dp_ready(model) if privacy_mode == "dp-sgd" else model
