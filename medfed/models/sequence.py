"""A GRU over an hourly sequence: (N, L, F) last L hours of features -> (N, K) logits.

Each row is one hour of one stay; its input is that hour and the L - 1 before it (earlier
than the stay's first hour: zeros plus a padding indicator), so the model never sees the
future. The prediction reads the GRU's last hidden state.
"""

from __future__ import annotations

import torch
from torch import nn


class HourlyGRU(nn.Module):
    def __init__(self, n_features: int, n_outputs: int, hidden: int = 32, layers: int = 1,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.gru = nn.GRU(n_features, hidden, num_layers=layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x)
        return self.head(out[:, -1])


def gru(input_shape: tuple[int, ...] | int, n_outputs: int, hidden: int = 32, layers: int = 1,
        dropout: float = 0.0) -> nn.Module:
    """``input_shape`` = (L, F) from the dataset's ``representation: sequence``."""
    if isinstance(input_shape, int) or len(input_shape) != 2:
        from medfed.errors import MedFedError

        raise MedFedError(f"model gru: needs (hours, features) inputs, got {input_shape}; set "
                          "dataset.options.representation: sequence")
    return HourlyGRU(int(input_shape[1]), n_outputs, int(hidden), int(layers), float(dropout))
