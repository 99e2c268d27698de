"""Cox models: (N, F) clinical features -> (N, 1) log-risk (higher = event sooner)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medfed.models.clinical import mlp


def _width(n_features: int | tuple[int, ...]) -> int:
    return n_features if isinstance(n_features, int) else int(n_features[0])


def cox(n_features: int | tuple[int, ...], n_outputs: int = 1) -> nn.Module:
    """Linear Cox proportional hazards: log-risk = w . x (the bias cancels in the likelihood)."""
    return nn.Linear(_width(n_features), n_outputs)


def cox_mlp(n_features: int | tuple[int, ...], n_outputs: int = 1, hidden: Sequence[int] = (32,),
            dropout: float = 0.0) -> nn.Module:
    """DeepSurv-style Cox MLP: a non-linear log-risk from the features."""
    return mlp(_width(n_features), n_outputs, hidden=hidden, dropout=dropout)
