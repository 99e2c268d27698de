"""Privacy accounting: epsilon from an Opacus accountant history, and the noise plan.

A history is Opacus' own format: a list of ``(noise_multiplier, sample_rate, steps)``.
The plan picks the noise multiplier for the WHOLE planned training (rounds x local epochs)
so the budget is met at the last round, not blown at the first.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

from medfed.errors import MedFedError

History = list[tuple[float, float, int]]
MAX_SIGMA = 100.0  # beyond this the model learns nothing: treat as "budget cannot be met"


def merge(history: Iterable[Sequence[float]]) -> History:
    """Consecutive entries with the same (noise, rate) merged, as Opacus' accountants do."""
    out: History = []
    for sigma, rate, steps in history:
        if out and out[-1][0] == sigma and out[-1][1] == rate:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + int(steps))
        elif int(steps) > 0:
            out.append((float(sigma), float(rate), int(steps)))
    return out


@lru_cache(maxsize=4096)
def _rdp_per_step(sample_rate: float, sigma: float) -> np.ndarray:
    """Opacus' RDP of one step at its default orders (RDP adds up over steps)."""
    from opacus.accountants.analysis.rdp import compute_rdp
    from opacus.accountants.rdp import RDPAccountant

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(compute_rdp(q=sample_rate, noise_multiplier=sigma, steps=1,
                                      orders=RDPAccountant.DEFAULT_ALPHAS))


@lru_cache(maxsize=4096)
def _epsilon(history: tuple[tuple[float, float, int], ...], delta: float,
             accountant: str) -> float:
    if accountant == "rdp":  # what RDPAccountant.get_epsilon does, with cached per-step RDP
        from opacus.accountants.analysis.rdp import get_privacy_spent
        from opacus.accountants.rdp import RDPAccountant

        rdp = sum(steps * _rdp_per_step(rate, sigma) for sigma, rate, steps in history)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "optimal order is the largest alpha": a bound
            eps, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
        return float(eps)
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(acc.get_epsilon(delta=delta))


def epsilon_of(history: Iterable[Sequence[float]], delta: float,
               accountant: str = "rdp") -> float:
    """Epsilon spent by ``history`` at ``delta`` with Opacus' ``rdp`` or ``prv`` accountant."""
    merged = merge(history)
    return _epsilon(tuple(merged), float(delta), accountant) if merged else 0.0


@lru_cache(maxsize=1024)
def opacus_noise(target: float, delta: float, rate: float, steps: int,
                 accountant: str) -> float | None:
    """Opacus' ``get_noise_multiplier`` (cached: it is slow); None when it finds none."""
    from opacus.accountants.utils import get_noise_multiplier

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(get_noise_multiplier(target_epsilon=target, target_delta=delta,
                                              sample_rate=rate, steps=steps,
                                              accountant=accountant))
    except ValueError:
        return None


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Opacus' Poisson loader takes len(DataLoader) = ceil(n / batch) steps an epoch."""
    return max(1, math.ceil(n_train / batch_size))


@dataclass
class Plan:
    """One site's DP-SGD plan for one run: fixed noise, rate and steps for every round."""

    noise_multiplier: float | None  # None: the budget is already spent (site exhausted)
    sample_rate: float
    steps_per_round: int
    rounds: int
    epsilon_budget: float
    delta: float
    accountant: str
    max_grad_norm: float
    epsilon_before: float = 0.0
    epsilon_per_round: list[float] = field(default_factory=list)  # cumulative, after each

    def to_dict(self) -> dict:
        return asdict(self)


def check_delta(delta: float, n_train: int, site: str) -> None:
    if delta >= 1.0 / n_train:
        raise MedFedError(f"privacy.delta={delta:g} is not below 1/n = 1/{n_train} for site "
                          f"{site!r}; set --set privacy.delta=1e-5 (any value < "
                          f"{1.0 / n_train:.2g})")


def check_epsilon(epsilon: float) -> None:
    if not epsilon > 0 or math.isnan(epsilon):
        raise MedFedError(f"privacy.epsilon={epsilon:g} must be > 0; set e.g. "
                          "--set privacy.epsilon=1")


def _noise_for(target: float, delta: float, rate: float, steps: int, accountant: str,
               prior: History) -> float | None:
    """Smallest noise (within 1 %) keeping prior + (noise, rate, steps) at or under target."""
    if not prior:
        sigma = opacus_noise(target, delta, rate, steps, accountant)
        return sigma if sigma is not None and sigma <= MAX_SIGMA else None

    def eps(sigma: float) -> float:
        return epsilon_of([*prior, (sigma, rate, steps)], delta, accountant)

    high = 1.0
    while eps(high) > target:
        high *= 2
        if high > MAX_SIGMA:
            return None
    low = 0.0
    while high - low > 0.005 * high:
        mid = (low + high) / 2
        low, high = (low, mid) if eps(mid) <= target else (mid, high)
    return high


def plan_site(*, n_train: int, batch_size: int, local_epochs: int, rounds: int,
              epsilon: float, delta: float, accountant: str = "rdp", max_grad_norm: float = 1.0,
              noise_multiplier: float | None = None, prior: Sequence[Sequence[float]] = (),
              site: str = "site", per_round: bool = True) -> Plan:
    """Noise multiplier so that ``prior`` + ``rounds`` rounds spend at most ``epsilon``.

    Raises MedFedError for bad inputs, and when a fresh site (no ``prior``) cannot meet the
    target in the planned steps; a site with prior spend and no budget left gets
    ``noise_multiplier=None`` (exhausted: it will not train).
    """
    check_epsilon(epsilon)
    check_delta(delta, n_train, site)
    rate = 1.0 / steps_per_epoch(n_train, batch_size)
    steps = steps_per_epoch(n_train, batch_size) * local_epochs
    prior_h = merge(prior)
    before = epsilon_of(prior_h, delta, accountant)
    sigma = noise_multiplier
    if sigma is None:
        sigma = _noise_for(epsilon, delta, rate, steps * rounds, accountant, prior_h)
        if sigma is None and not prior_h:
            raise MedFedError(
                f"privacy.epsilon={epsilon:g}: no noise multiplier (up to {MAX_SIGMA:g}) meets "
                f"epsilon={epsilon:g}, delta={delta:g} in {steps * rounds} steps at sample "
                f"rate {rate:.3g} (site {site!r}); raise privacy.epsilon, or lower rounds / "
                "train.local_epochs, or raise train.batch_size")
    plan = Plan(sigma, rate, steps, rounds, epsilon, delta, accountant, max_grad_norm, before)
    if per_round and sigma is not None:
        plan.epsilon_per_round = [epsilon_of([*prior_h, (sigma, rate, steps * r)], delta,
                                             accountant) for r in range(1, rounds + 1)]
    return plan
