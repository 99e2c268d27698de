"""A site's answer to a statistics query: counts and sums, small cells suppressed on site.

Rules applied here, at the site, before anything is sent:

- any count below ``min_count`` (rows, non-missing values, missing values, histogram bins,
  categories, labels, Kaplan-Meier cells, image facts) is sent as the string ``"<k"``; when
  one row is not one individual (an ICU stay's hours), a cell counts distinct individuals;
- a variable with fewer than ``min_count`` non-missing values is not summarised at all;
- ranges for agreed histogram bins are the k-th smallest and k-th largest value rounded
  outward to two significant digits (never one patient's value); values outside the agreed
  bins fall in the first or last bin;
- with ``stats.privacy`` every released number gets Gaussian noise calibrated to its
  sensitivity under the declared clipping bounds; the query is one spend (noise multiplier,
  sample rate 1, one step per released statistic) in the site's privacy ledger, checked
  against the site's budget (``privacy.epsilon``) first, so training and statistics share it.

Only category levels (at least ``min_count`` individuals each), counts and sums leave: never
a row, an identifier, a date or a free-text value.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from medfed.config import ExperimentConfig, StatsPrivacyConfig
from medfed.datasets.stats_view import ImageFacts, SiteView
from medfed.errors import MedFedError
from medfed.privacy.accounting import epsilon_of
from medfed.privacy.ledger import Ledger, Spend

Cell = int | str
RANGES, SUMMARY = "ranges", "summary"
IMAGE_FACTS = ("modality", "manufacturer", "model", "shape", "spacing", "orientation", "region")


class StatsBudgetExhausted(Exception):
    """This query's noise would take the site past its privacy budget."""


def cell(count: float, k: int, individuals: int | None = None) -> Cell:
    """``count``, or ``"<k"`` when it (or the individuals behind it) is in 1..k-1."""
    who = count if individuals is None else individuals
    if who <= 0 and count <= 0:
        return 0
    return f"<{k}" if who < k else _number(count)


SECONDARY = "suppressed"  # a cell hidden so that the small cells cannot be derived from a total


def cells(counts, k: int, who=None, total: int | None = None) -> list[Cell]:
    """Counts with small cells (individuals in 1..k-1) sent as ``"<k"``; when ``total`` is
    released too, more cells (smallest first) are hidden as ``"suppressed"`` until the hidden
    cells' sum, ``total`` minus the released cells, is 0 or at least k."""
    counts = [int(c) for c in counts]
    who = counts if who is None else [int(w) for w in who]
    small = [c > 0 and w < k for c, w in zip(counts, who, strict=True)]
    hidden = list(small)
    while total is not None:
        rest = total - sum(c for c, h in zip(counts, hidden, strict=True) if not h)
        shown = [i for i, (c, h) in enumerate(zip(counts, hidden, strict=True)) if not h and c]
        if not 0 < rest < k or not shown:
            break
        hidden[min(shown, key=lambda i: counts[i])] = True
    return [f"<{k}" if s else SECONDARY if h else c
            for c, s, h in zip(counts, small, hidden, strict=True)]


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


def nice_floor(value: float) -> float:
    """Round down to two significant digits (ranges never show one patient's value)."""
    return _nice(value, math.floor)


def nice_ceil(value: float) -> float:
    return _nice(value, math.ceil)


def _nice(value: float, rounding) -> float:
    if value == 0 or not math.isfinite(value):
        return float(value)
    step = 10 ** (math.floor(math.log10(abs(value))) - 1)
    return float(rounding(value / step) * step)


@dataclass
class Noise:
    """Gaussian noise: standard deviation ``sigma`` x the statistic's sensitivity."""

    sigma: float
    rng: np.random.Generator
    releases: int = 0

    def add(self, value: float | np.ndarray, sensitivity: float = 1.0):
        self.releases += 1
        noise = self.rng.normal(0.0, self.sigma * sensitivity, np.shape(value))
        return np.asarray(value, float) + noise


class Counter:
    """Counts individuals behind a set of rows (rows themselves when each is an individual)."""

    def __init__(self, units: np.ndarray | None) -> None:
        self.units = units

    def individuals(self, rows: np.ndarray) -> int:
        if self.units is None:
            return int(np.count_nonzero(rows))
        return int(len(np.unique(self.units[rows])))

    def per_bin(self, bins: np.ndarray, n_bins: int, rows: np.ndarray) -> np.ndarray:
        """Distinct individuals per bin; ``bins``: (rows,) bin index, ``rows``: mask."""
        if self.units is None:
            return np.bincount(bins[rows], minlength=n_bins)
        _, units = np.unique(self.units, return_inverse=True)
        pairs = np.unique(bins[rows].astype(np.int64) * (units.max() + 1) + units[rows])
        return np.bincount(pairs // (units.max() + 1), minlength=n_bins)


# --- pass 1: types, levels and ranges -------------------------------------------------------


def answer_ranges(view: SiteView, k: int, max_levels: int) -> dict[str, Any]:
    """Each variable's kind, its frequent levels, and a rounded range; image value ranges."""
    counter = Counter(view.units)
    variables = {}
    for column in view.table.columns:
        variables[column] = variable_shape(view.table[column], counter, k, max_levels)
    reply: dict[str, Any] = {**_header(view, k, counter), "variables": variables}
    if view.survival is not None:
        time_ = view.survival[0]
        reply["survival"] = {"time_max": _safe_range(time_, k)[1] if len(time_) >= k else None}
    if view.images:
        reply["images"] = {"intensity_range": _intensity_range(view.images, k),
                           "lesion_range": _safe_range(_lesions(view.images), k)}
    return reply


def variable_shape(values: pd.Series, counter: Counter, k: int, max_levels: int) -> dict:
    present = values.notna().to_numpy()
    numeric = pd.api.types.is_numeric_dtype(values)
    shape: dict[str, Any] = {"kind": "numeric" if numeric else "categorical", "range": None,
                             "levels": None}
    if counter.individuals(present) < k:
        return shape
    if numeric:
        shape["range"] = _safe_range(values.to_numpy(float)[present], k)
    distinct = values[present].unique()
    if len(distinct) <= max_levels:
        shape["levels"] = [_level(v) for v in sorted(distinct, key=str)
                           if counter.individuals(present & (values == v).to_numpy()) >= k]
    return shape


def _level(value) -> str | float:
    return _number(value) if isinstance(value, int | float | np.number) else str(value)


def _safe_range(values: np.ndarray, k: int) -> list[float] | None:
    values = np.sort(np.asarray(values, float)[np.isfinite(values)])
    if len(values) < k:
        return None
    low, high = nice_floor(values[k - 1]), nice_ceil(values[-k])
    return [low, high if high > low else low + max(abs(low) * 0.01, 1e-6)]


def _intensity_range(images: list[ImageFacts], k: int) -> list[float] | None:
    if len(images) < k:
        return None
    values = np.concatenate([i.intensities for i in images])
    low, high = np.percentile(values, [0.5, 99.5])
    return [nice_floor(low), nice_ceil(high) if high > low else nice_ceil(low) + 1.0]


def _lesions(images: list[ImageFacts]) -> np.ndarray:
    return np.asarray([i.lesion_ml for i in images if i.lesion_ml is not None], float)


def _header(view: SiteView, k: int, counter: Counter) -> dict[str, Any]:
    everyone = np.ones(_n_samples(view), bool)
    return {"site": view.name, "unit": view.unit, "source": view.source,
            "rows": cell(len(everyone), k, counter.individuals(everyone)),
            "individuals": cell(counter.individuals(everyone), k),
            "excluded": dict(view.excluded)}


def _n_samples(view: SiteView) -> int:
    """Rows of the view (the table's, else the labels', else the images')."""
    if len(view.table):
        return len(view.table)
    return len(view.labels) if view.labels is not None else len(view.images)


# --- pass 2: the summary on agreed bins and levels -----------------------------------------


def answer_summary(view: SiteView, query: dict[str, Any], k: int,
                   noise: Noise | None = None) -> dict[str, Any]:
    """Counts, sums and histograms on the query's agreed bins/levels, suppressed on site."""
    counter = Counter(view.units)
    reply: dict[str, Any] = {**_header(view, k, counter), "variables": {}}
    if noise is not None:
        reply["rows"] = _noisy_cell(noise, _n_samples(view), k)
        reply["individuals"] = reply["rows"]
    for column, edges in query.get("numeric", {}).items():
        if column in view.table.columns:
            reply["variables"][column] = numeric_summary(
                view.table[column], np.asarray(edges, float), counter, k, noise,
                _bounds(query, column))
    for column, levels in query.get("categorical", {}).items():
        if column in view.table.columns:
            reply["variables"][column] = categorical_summary(view.table[column], levels,
                                                             counter, k, noise)
    if view.labels is not None:
        reply["labels"] = label_summary(view.labels, counter, k, noise)
    if view.survival is not None:
        reply["survival"] = survival_summary(*view.survival, query.get("km_edges"), k, noise)
    if view.images and noise is None:
        reply["images"] = image_summary(view.images, query, k)
    elif view.images:
        reply["images"] = {"not_summarised": "stats.privacy: one patient's voxel counts have "
                                             "no bound, so images get no calibrated noise"}
    return reply


def _bounds(query: dict, column: str) -> tuple[float, float] | None:
    bounds = query.get("bounds", {}).get(column)
    return (float(bounds[0]), float(bounds[1])) if bounds else None


def presence_cells(present: np.ndarray, counter: Counter, k: int) -> tuple[Cell, Cell]:
    """(n, missing) cells; when n is small, missing is hidden too: the site's row count is
    known to the coordinator, so rows minus missing would give n away."""
    n_cell = cell(int(present.sum()), k, counter.individuals(present))
    missing = int((~present).sum())
    missing_cell = cell(missing, k, counter.individuals(~present))
    if 0 < counter.individuals(present) < k and missing:
        missing_cell = SECONDARY
    return n_cell, missing_cell


def numeric_summary(values: pd.Series, edges: np.ndarray, counter: Counter, k: int,
                    noise: Noise | None, bounds: tuple[float, float] | None) -> dict[str, Any]:
    x = pd.to_numeric(values, errors="coerce").to_numpy(float)
    present = np.isfinite(x)
    out: dict[str, Any] = {"kind": "numeric"}
    if noise is not None:
        return _noisy_numeric(x, present, edges, noise, k, bounds or (edges[0], edges[-1]))
    n, n_who = int(present.sum()), counter.individuals(present)
    out["n"], out["missing"] = presence_cells(present, counter, k)
    if n_who < k:
        out["summarised"] = False  # fewer than min_count values: nothing about them leaves
        return out
    v = x[present]
    out.update({"summarised": True, "sum": float(v.sum()), "sumsq": float((v * v).sum())})
    bins = np.zeros(len(x), np.int64)
    bins[present] = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(bins[present], minlength=len(edges) - 1)
    who = counter.per_bin(bins, len(edges) - 1, present)
    out["hist"] = cells(counts, k, who, total=n)
    return out


def _noisy_numeric(x: np.ndarray, present: np.ndarray, edges: np.ndarray, noise: Noise, k: int,
                   bounds: tuple[float, float]) -> dict[str, Any]:
    """Clipped to ``bounds``; n, missing, sum, sum of squares and histogram, each noised."""
    low, high = bounds
    v = np.clip(x[present], low, high)
    big = max(abs(low), abs(high))
    n = float(noise.add(len(v)))
    out: dict[str, Any] = {"kind": "numeric", "n": _noisy_cell_of(n, k),
                           "missing": _noisy_cell(noise, int((~present).sum()), k)}
    total, squares = float(noise.add(v.sum(), big)), float(noise.add((v * v).sum(), big * big))
    hist = noise.add(np.histogram(v, bins=edges)[0])
    if n < k:
        out["summarised"] = False
        return out
    out.update({"summarised": True, "sum": total, "sumsq": squares,
                "hist": [_noisy_cell_of(c, k) for c in hist]})
    return out


def _noisy_cell(noise: Noise, count: float, k: int) -> Cell:
    return _noisy_cell_of(float(noise.add(count)), k)


def _noisy_cell_of(value: float, k: int) -> Cell:
    value = max(round(float(value)), 0)
    return f"<{k}" if 0 < value < k or value == 0 else int(value)


def categorical_summary(values: pd.Series, levels: list, counter: Counter, k: int,
                        noise: Noise | None) -> dict[str, Any]:
    present = values.notna().to_numpy()
    text = np.asarray([str(_level(v)) if ok else "" for v, ok in zip(values, present,
                                                                      strict=True)])
    wanted = [str(_level(v)) for v in levels]
    matched = [present & (text == level) for level in wanted]
    other = present & ~np.any(matched, axis=0) if matched else present
    out: dict[str, Any] = {"kind": "categorical"}
    if noise is not None:
        counts = noise.add([int(m.sum()) for m in [*matched, other]])
        out.update({"n": _noisy_cell(noise, int(present.sum()), k),
                    "missing": _noisy_cell(noise, int((~present).sum()), k),
                    "counts": {lv: _noisy_cell_of(c, k) for lv, c in zip(wanted, counts,
                                                                          strict=False)},
                    "other": _noisy_cell_of(counts[-1], k)})
        return out
    out["n"], out["missing"] = presence_cells(present, counter, k)
    if counter.individuals(present) < k:
        out["summarised"] = False
        return out
    out["summarised"] = True
    groups = [*matched, other]  # "other": the rare levels, pooled
    shown = cells([int(m.sum()) for m in groups], k, [counter.individuals(m) for m in groups],
                  total=int(present.sum()))
    out["counts"] = dict(zip(wanted, shown[:-1], strict=True))
    out["other"] = shown[-1]
    return out


def label_summary(labels: pd.Series, counter: Counter, k: int,
                  noise: Noise | None) -> dict[str, Cell]:
    text = labels.astype(str).to_numpy()
    classes = sorted(set(text))
    if noise is not None:
        counts = noise.add([int((text == c).sum()) for c in classes])
        return {c: _noisy_cell_of(v, k) for c, v in zip(classes, counts, strict=True)}
    shown = cells([int((text == c).sum()) for c in classes], k,
                  [counter.individuals(text == c) for c in classes], total=len(text))
    return dict(zip(classes, shown, strict=True))


def survival_summary(time_: np.ndarray, event: np.ndarray, edges: list[float] | None, k: int,
                     noise: Noise | None) -> dict[str, Any]:
    """Event and censored totals, and Kaplan-Meier counts per block of agreed intervals."""
    events, censored = int((event > 0).sum()), int((event <= 0).sum())
    if noise is not None:
        out = {"events": _noisy_cell(noise, events, k), "censored": _noisy_cell(noise, censored,
                                                                                 k)}
        if edges:
            out["km"] = noisy_km(time_, event, np.asarray(edges, float), noise, k)
        return out
    out: dict[str, Any] = {"events": cell(events, k), "censored": cell(censored, k)}
    if edges:
        out["km"] = km_blocks(time_, event, np.asarray(edges, float), k)
    return out


def km_blocks(time_: np.ndarray, event: np.ndarray, edges: np.ndarray, k: int) -> list[dict]:
    """Kaplan-Meier counts on blocks of the agreed intervals: consecutive intervals merge
    until a block has at least k events, no censored count in 1..k-1 and k patients at risk
    (so no cell is small); the remainder merges into the last block."""
    idx = np.clip(np.searchsorted(edges, time_, side="right") - 1, 0, len(edges) - 2)
    d = np.bincount(idx[event > 0], minlength=len(edges) - 1)
    c = np.bincount(idx[event <= 0], minlength=len(edges) - 1)
    blocks, start, at_risk = [], 0, len(time_)
    while start < len(d) and at_risk >= k:
        end = start
        while end < len(d) and not _block_ok(d[start:end + 1].sum(), c[start:end + 1].sum(), k):
            end += 1
        end = min(end, len(d) - 1)
        ev, ce = int(d[start:end + 1].sum()), int(c[start:end + 1].sum())
        if not _block_ok(ev, ce, k):
            if blocks:  # the tail joins the previous block
                last = blocks[-1]
                last.update(end=float(edges[end + 1]), events=last["events"] + ev,
                            censored=last["censored"] + ce)
                if not _block_ok(last["events"], last["censored"], k):
                    blocks.pop()
            break
        blocks.append({"start": float(edges[start]), "end": float(edges[end + 1]),
                       "at_risk": at_risk, "events": ev, "censored": ce})
        at_risk -= ev + ce
        start = end + 1
    return blocks


def _block_ok(events: int, censored: int, k: int) -> bool:
    return events >= k and (censored == 0 or censored >= k)


def noisy_km(time_: np.ndarray, event: np.ndarray, edges: np.ndarray, noise: Noise,
             k: int) -> list[dict]:
    """Noised events and censored per agreed interval (one patient changes one cell by 1)."""
    idx = np.clip(np.searchsorted(edges, time_, side="right") - 1, 0, len(edges) - 2)
    d = noise.add(np.bincount(idx[event > 0], minlength=len(edges) - 1))
    c = noise.add(np.bincount(idx[event <= 0], minlength=len(edges) - 1))
    at_risk = float(noise.add(len(time_)))
    blocks = []
    for j in range(len(d)):
        ev, ce = max(round(d[j]), 0), max(round(c[j]), 0)
        blocks.append({"start": float(edges[j]), "end": float(edges[j + 1]),
                       "at_risk": _noisy_cell_of(at_risk, k), "events": _noisy_cell_of(ev, k),
                       "censored": _noisy_cell_of(ce, k)})
        at_risk -= ev + ce
    return blocks


def image_summary(images: list[ImageFacts], query: dict[str, Any], k: int) -> dict[str, Any]:
    """Image facts as counts (small ones suppressed), intensity and lesion-volume histograms."""
    out: dict[str, Any] = {"n": cell(len(images), k)}
    if len(images) < k:
        out["summarised"] = False
        return out
    out["summarised"] = True
    for fact in IMAGE_FACTS:
        values = pd.Series([getattr(i, fact) for i in images]).value_counts()
        shown = cells(values.to_numpy(), k, total=len(images))
        out[fact] = dict(zip(map(str, values.index), shown, strict=True))
    edges = query.get("intensity_edges")
    if edges:
        voxels = np.concatenate([i.intensities for i in images]).astype(float)
        out["intensity"] = {"n": int(len(voxels)), "sum": float(voxels.sum()),
                            "sumsq": float((voxels * voxels).sum()),
                            "hist": _clipped_hist(voxels, np.asarray(edges, float), k)}
    lesions = _lesions(images)
    if query.get("lesion_edges") and len(lesions) >= k:
        out["lesion_ml"] = {"n": len(lesions), "sum": float(lesions.sum()),
                            "sumsq": float((lesions ** 2).sum()),
                            "hist": _clipped_hist(lesions, np.asarray(query["lesion_edges"],
                                                                      float), k)}
    return out


def _clipped_hist(values: np.ndarray, edges: np.ndarray, k: int) -> list[Cell]:
    bins = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)
    return cells(np.bincount(bins, minlength=len(edges) - 1), k, total=len(values))


# --- noise calibration and the ledger -------------------------------------------------------


def planned_releases(view: SiteView, query: dict[str, Any]) -> int:
    """How many statistics a noised summary releases (each one Gaussian mechanism)."""
    n = 1  # rows
    n += 5 * sum(1 for c in query.get("numeric", {}) if c in view.table.columns)  # n, missing,
    n += 3 * sum(1 for c in query.get("categorical", {}) if c in view.table.columns)  # sums..
    n += 1 if view.labels is not None else 0
    if view.survival is not None:
        n += 2 + (3 if query.get("km_edges") else 0)
    return n


def calibrate(epsilon: float, delta: float, releases: int) -> float:
    """The smallest noise multiplier whose ``releases``-fold Gaussian composition stays within
    (epsilon, delta) (RDP accountant, sample rate 1)."""
    low, high = 0.05, 1000.0
    if epsilon_of([(high, 1.0, releases)], delta) > epsilon:
        raise MedFedError(f"stats.privacy.epsilon {epsilon:g}: too small for {releases} "
                          "released statistics; ask for fewer variables or a larger epsilon")
    for _ in range(40):
        mid = math.sqrt(low * high)
        if epsilon_of([(mid, 1.0, releases)], delta) > epsilon:
            low = mid
        else:
            high = mid
    return high


def check_noise_setup(view: SiteView) -> None:
    if view.units is not None:
        raise MedFedError(f"stats.privacy: site {view.name!r} has several rows per individual "
                          f"({view.unit}); calibrated noise needs one row per patient")


def spend_for_query(ledger: Ledger, cfg: ExperimentConfig, private: StatsPrivacyConfig,
                    query_id: str, releases: int) -> tuple[float, float]:
    """Record this query's spend (noise multiplier, epsilon after); refuses past the budget.
    Noise is sigma x each statistic's own sensitivity, so the spend's clipping norm is 1."""
    sigma = calibrate(private.epsilon, private.delta, releases)
    history = [*ledger.history(), (sigma, 1.0, releases)]
    after = epsilon_of(history, cfg.privacy.delta, cfg.privacy.accountant)
    spent = ledger.epsilon(cfg.privacy.delta, cfg.privacy.accountant)
    if after > cfg.privacy.epsilon * (1 + 1e-9):
        raise StatsBudgetExhausted(
            f"privacy budget exhausted at site {ledger.site!r}: epsilon {spent:.3f} of "
            f"{cfg.privacy.epsilon:g} spent, this statistics query would reach {after:.3f} "
            f"(delta {cfg.privacy.delta:g}); it is refused")
    ledger.record(Spend(run_id=f"stats/{query_id}", round=0, steps=releases, sample_rate=1.0,
                        noise_multiplier=sigma, max_grad_norm=1.0, epsilon_after=after,
                        delta=cfg.privacy.delta, accountant=cfg.privacy.accountant,
                        grad_sample_mode="stats-gaussian", time=time.time()))
    return sigma, after
