"""Models for tabular clinical data: (N, F) features -> (N, K) logits (K = 1 for binary)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


def logreg(n_features: int, n_outputs: int) -> nn.Module:
    """Logistic regression: one linear layer; pair with a sigmoid/softmax loss."""
    return nn.Linear(n_features, n_outputs)


def mlp(n_features: int, n_outputs: int, hidden: Sequence[int] = (32,),
        dropout: float = 0.0) -> nn.Module:
    """A multilayer perceptron with ReLU (not in-place, so Opacus accepts it)."""
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(size)
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)
