"""Feature scaling without pooling data: sites share counts, sums and sums of squares only.

Small cells: for a feature with at most three distinct values (a binary flag, a one-hot
level, a 3-level grade) a site's count, sum and sum of squares give the exact number of
patients at each value (how many are male, how many smoke). ``released_moments`` therefore
withholds such a feature's moments when one of its values is held by 1..k-1 patients, and
every feature's when the site has fewer than k patients; the coordinator pools each feature
over the sites that sent it (``combine_moments`` with per-feature counts).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

COUNT_LIKE_LEVELS = 3  # n, sum and sum of squares solve for up to 3 level counts


def site_moments(x: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, sum, sum of squares) per feature of one site's training rows; x is (N, F)."""
    x = np.asarray(x, dtype=np.float64)
    return len(x), x.sum(axis=0), np.square(x).sum(axis=0)


@dataclass
class Moments:
    """What a site releases per feature: ``n`` (F,) rows behind each feature's sums (0: the
    feature is withheld), ``sums`` and ``squares`` (F,), and which features were withheld
    (``suppressed``) or are count-like (``count_like``: their sums are level counts)."""

    n: np.ndarray
    sums: np.ndarray
    squares: np.ndarray
    suppressed: list[int] = field(default_factory=list)
    count_like: list[int] = field(default_factory=list)


def level_counts(column: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(levels, rows per level) of a count-like column (at most 3 distinct values), or None.
    ``column``: (N,)."""
    levels, counts = np.unique(column[~np.isnan(column)], return_counts=True)
    return (levels, counts) if len(levels) <= COUNT_LIKE_LEVELS else None


def released_moments(x: np.ndarray, min_count: int) -> Moments:
    """This site's moments with small cells withheld; x is (N, F), ``min_count`` is k."""
    x = np.asarray(x, dtype=np.float64)
    n, sums, squares = site_moments(x)
    n_features = x.shape[1]
    count_like, small = [], []
    for j in range(n_features):
        levels = level_counts(x[:, j])
        if levels is not None:
            count_like.append(j)
            if np.any((levels[1] > 0) & (levels[1] < min_count)):
                small.append(j)
    if n < min_count:
        small = list(range(n_features))
    per_feature = np.full(n_features, n, dtype=np.int64)
    per_feature[small] = 0
    sums[small], squares[small] = 0.0, 0.0
    return Moments(per_feature, sums, squares, small, count_like)


def combine_moments(
    moments: Iterable[tuple[int | np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """Pooled mean and standard deviation from per-site moments (equal to pooling the rows).
    ``n`` is a site's row count, or (F,) counts per feature (0 where the site withheld the
    feature); a feature no site sent keeps mean 0 and std 1 (it is not rescaled)."""
    moments = list(moments)
    shape = np.shape(moments[0][1])
    n = np.sum([np.broadcast_to(np.asarray(m[0], np.float64), shape) for m in moments], axis=0)
    total = np.sum([m[1] for m in moments], axis=0)
    squares = np.sum([m[2] for m in moments], axis=0)
    seen = n > 0
    mean = np.where(seen, total / np.where(seen, n, 1.0), 0.0)
    var = np.maximum(np.where(seen, squares / np.where(seen, n, 1.0), 1.0) - mean**2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-8] = 1.0  # constant features stay as they are after centring
    return mean.astype(np.float32), std.astype(np.float32)


def standardize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Scale (N, F) rows, or (N, L, F) sequences with one statistic per flattened position."""
    flat = x.reshape(len(x), -1)
    return ((flat - mean) / std).astype(np.float32).reshape(x.shape)
