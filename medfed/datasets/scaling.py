"""Feature scaling without pooling data: sites share counts, sums and sums of squares only."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def site_moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, sum, sum of squares) per feature of one site's training rows; x is (N, F)."""
    x = np.asarray(x, dtype=np.float64)
    return len(x), x.sum(axis=0), np.square(x).sum(axis=0)


def combine_moments(
    moments: Iterable[tuple[int, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and standard deviation from per-site moments (equal to pooling the rows)."""
    moments = list(moments)
    n = sum(m[0] for m in moments)
    total = np.sum([m[1] for m in moments], axis=0)
    squares = np.sum([m[2] for m in moments], axis=0)
    mean = total / n
    var = np.maximum(squares / n - mean**2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-8] = 1.0  # constant features stay as they are after centring
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Scale (N, F) rows, or (N, L, F) sequences with one statistic per flattened position."""
    flat = x.reshape(len(x), -1)
    return ((flat - mean) / std).astype(np.float32).reshape(x.shape)
