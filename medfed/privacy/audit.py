"""One-run privacy auditing (Steinke, Nasr and Jagielski, "Privacy Auditing with One (1)
Training Run", NeurIPS 2023): canaries, guesses, and the epsilon lower bound.

m canaries are each included in a site's training rows with probability 1/2 (one coin per
canary). After training, the auditor scores every canary, guesses "in" for the ``k_plus``
highest scores and "out" for the ``k_minus`` lowest, and abstains on the rest. If training
is (eps, delta)-DP with respect to adding or removing one record, the number of correct
guesses among the r = k_plus + k_minus made is stochastically dominated by Binomial(r,
e^eps / (1 + e^eps)) up to a delta term (their Theorem 5.2, Algorithm 2 in the appendix).
The largest eps whose p-value for the observed count is still below 1 - confidence is a
lower bound on the true eps, with that confidence.

Everything here is a pure function; ``medfed.simulation.privacy_audit`` runs the training.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

import numpy as np
from scipy import optimize, special, stats

from medfed.datasets.base import Site
from medfed.seeds import numpy_rng


def p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """P[at least ``v`` of ``r`` guesses correct] for an (eps, delta)-DP training with ``m``
    canaries: the paper's Algorithm 2, beta + 2 m delta alpha, capped at 1."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    if eps < 0 or not 0 <= delta <= 1:
        raise ValueError(f"need eps >= 0 and 0 <= delta <= 1, got {eps}, {delta}")
    q = special.expit(eps)  # accuracy of eps-DP randomised response
    beta = stats.binom.sf(v - 1, r, q)  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return float(min(beta, 1.0))
    i = np.arange(1, v + 1)
    # P[v > Binomial(r, q) >= v - i] / i, maximised over i
    alpha = float(np.max((stats.binom.sf(v - i - 1, r, q) - beta) / i, initial=0.0))
    return float(min(beta + alpha * delta * 2 * m, 1.0))


def epsilon_lower_bound(m: int, r: int, v: int, delta: float,
                        confidence: float = 0.95) -> float:
    """The largest eps that ``v`` correct guesses out of ``r`` (``m`` canaries) reject at
    ``confidence``: p_value(eps) < 1 - confidence. 0 when even eps = 0 is not rejected."""
    significance = 1 - confidence
    if not 0 < significance < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if p_value(m, r, v, 0.0, delta) >= significance:
        return 0.0

    def excess(eps: float) -> float:  # > 0 while eps is rejected
        return significance - p_value(m, r, v, eps, delta)

    low, high = 0.0, 1.0
    while excess(high) > 0:
        if high > 100:  # every guess right with huge r: no finite bound is meaningful here
            return float(high)
        low, high = high, 2 * high
    return float(optimize.brentq(excess, low, high, xtol=1e-9))


@dataclass(frozen=True)
class Guesses:
    """What the auditor guessed: ``r`` guesses, ``v`` of them correct, ``m`` canaries."""

    m: int
    r: int
    v: int
    k_plus: int
    k_minus: int


def guess(scores: np.ndarray, included: np.ndarray, k_plus: int, k_minus: int) -> Guesses:
    """Guess "in" for the ``k_plus`` highest ``scores`` (shape (m,)), "out" for the
    ``k_minus`` lowest; ``included``: (m,) bool, the true coins. Ties broken by index."""
    scores, included = np.asarray(scores, float), np.asarray(included, bool)
    m = len(scores)
    if scores.shape != included.shape or k_plus + k_minus > m or min(k_plus, k_minus) < 0:
        raise ValueError(f"bad guess sizes: m={m}, k_plus={k_plus}, k_minus={k_minus}")
    order = np.argsort(-scores, kind="stable")
    guessed_in, guessed_out = order[:k_plus], order[m - k_minus:] if k_minus else order[:0]
    v = int(included[guessed_in].sum() + (~included[guessed_out]).sum())
    return Guesses(m, k_plus + k_minus, v, k_plus, k_minus)


def audit(scores: np.ndarray, included: np.ndarray, delta: float, *,
          guess_fraction: float = 0.25, confidence: float = 0.95) -> dict:
    """Guess ``guess_fraction`` of the canaries "in" and as many "out" (a number fixed before
    looking at the scores, so no multiple-testing correction is needed); the bound and its
    counts as a JSON-ready dict."""
    m = len(scores)
    k = max(1, int(m * guess_fraction))
    g = guess(scores, included, k, k)
    return {"epsilon_lower_bound": epsilon_lower_bound(m, g.r, g.v, delta, confidence),
            "canaries": m, "included": int(np.sum(included)), "guesses": g.r,
            "correct": g.v, "confidence": confidence, "delta": delta}


# --- canaries --------------------------------------------------------------------------------

@dataclass(frozen=True)
class CanarySpec:
    """``m`` canaries per site, drawn (features, labels, coins) from ``seed`` and the site's
    name: the auditor and every site rebuild the same ones."""

    m: int
    seed: int

    def to_json(self) -> str:
        return json.dumps({"m": self.m, "seed": self.seed})

    @classmethod
    def from_json(cls, text: str) -> CanarySpec:
        raw = json.loads(text)
        return cls(int(raw["m"]), int(raw["seed"]))


@dataclass(frozen=True)
class Canaries:
    """One site's canaries: ``x`` (m, ...) inputs, ``y`` (m,) labels, ``included`` (m,)."""

    x: np.ndarray
    y: np.ndarray
    included: np.ndarray


def site_canaries(site: Site, n_classes: int, spec: CanarySpec) -> Canaries:
    """Records with random labels, each in with probability 1/2.

    Tables: the site's mean plus a random direction per canary, scaled to a typical row's
    distance (about one standard deviation per feature), so canaries do not overlap.
    Images: uniform noise over the site's intensity range. Labels uniform over the classes.
    """
    rng = numpy_rng(spec.seed, site.name, "canaries")
    x = site.x_train.astype(np.float32, copy=False)
    if x.ndim == 2:
        mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
        direction = rng.standard_normal((spec.m, x.shape[1]))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        rows = mean + np.sqrt(x.shape[1]) * direction * std
    else:
        low, high = float(x.min()), float(x.max())
        rows = rng.uniform(low, high, size=(spec.m, *x.shape[1:]))
    labels = rng.integers(0, n_classes, size=spec.m)
    included = rng.random(spec.m) < 0.5
    return Canaries(rows.astype(np.float32), labels.astype(site.y_train.dtype), included)


def with_canaries(site: Site, n_classes: int, spec_json: str) -> Site:
    """``site`` with its included canaries appended to the training rows (test unchanged)."""
    canaries = site_canaries(site, n_classes, CanarySpec.from_json(spec_json))
    keep = canaries.included
    units = site.units_train
    if units is not None:  # each canary is a unit (patient) of its own
        extra = np.flatnonzero(keep)
        if np.issubdtype(units.dtype, np.number):
            units = np.concatenate([units, (units.max() + 1 + extra).astype(units.dtype)])
        else:
            units = np.concatenate([units.astype(object), [f"canary-{i}" for i in extra]])
    return replace(site, x_train=np.concatenate([site.x_train, canaries.x[keep]]),
                   y_train=np.concatenate([site.y_train, canaries.y[keep]]),
                   units_train=units)
