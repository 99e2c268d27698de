"""No exact counts from small sites: what a site's summary and evaluation replies release.

- Feature moments for the federated scaling (``summary_moments``): small cells withheld by
  ``datasets.scaling.released_moments`` (k = the larger of ``privacy.min_count`` and the
  site's own floor); with ``privacy.mode`` set, the sums of count-like features (at most
  three values: flags, one-hot levels, grades) that are still sent carry Gaussian noise
  calibrated to ``privacy.summary_epsilon`` (sensitivity: the largest absolute level, or its
  square), one spend in the site's privacy ledger, refused past the site's budget. Sums of
  continuous features are not noised (they reveal no count; they have no public bound).
- Evaluation metrics (``small_test_metrics``): a test set of fewer than k patients sends NaN
  for every metric (accuracy x n would be the exact number of correct predictions).
"""

from __future__ import annotations

import numpy as np

from medfed.config import ExperimentConfig, StatsPrivacyConfig
from medfed.datasets.scaling import Moments, level_counts, released_moments


def summary_moments(x: np.ndarray, cfg: ExperimentConfig, k: int, ledger=None,
                    query_id: str = "", rng: np.random.Generator | None = None) -> Moments:
    """The moments this site sends; x is (N, F). ``ledger``: the site's privacy ledger,
    needed (with ``query_id``) when ``cfg.privacy.mode`` is not ``none``."""
    moments = released_moments(x, k)
    if cfg.privacy.mode == "none":
        return moments
    noised = [j for j in moments.count_like if j not in moments.suppressed]
    if noised and not _affordable(x, noised, cfg):
        withhold(moments, noised)  # noise for that many sums would exceed any bound
    elif noised:
        _add_noise(np.asarray(x, np.float64), moments, noised, cfg, ledger, query_id,
                   rng or np.random.default_rng())
    return moments


def _releases(x: np.ndarray, noised: list[int]) -> int:
    """One noised sum per 0/1 feature, two (sum, sum of squares) per other count-like one."""
    return sum(1 if set(level_counts(np.asarray(x[:, j], np.float64))[0].tolist())
               <= {0.0, 1.0} else 2 for j in noised)


def _affordable(x: np.ndarray, noised: list[int], cfg: ExperimentConfig) -> bool:
    from medfed.errors import MedFedError
    from medfed.privacy.site_stats import calibrate

    try:
        calibrate(cfg.privacy.summary_epsilon, cfg.privacy.delta, _releases(x, noised))
    except MedFedError:
        return False
    return True


def withhold(moments: Moments, features: list[int]) -> None:
    """Send nothing of ``features`` (their rows count 0 at the coordinator)."""
    moments.n[features] = 0
    moments.sums[features], moments.squares[features] = 0.0, 0.0
    moments.suppressed = sorted({*moments.suppressed, *features})


def _add_noise(x: np.ndarray, moments: Moments, noised: list[int], cfg: ExperimentConfig,
               ledger, query_id: str, rng: np.random.Generator) -> None:
    """Gaussian noise on the sums (and, past two levels, the sums of squares) of ``noised``
    features; a binary 0/1 feature's sum of squares is its sum, so it is released once."""
    from medfed.privacy.site_stats import Noise, spend_for_query

    plan = []
    for j in noised:
        levels, _ = level_counts(x[:, j])
        zero_one = set(levels.tolist()) <= {0.0, 1.0}
        plan.append((j, float(np.max(np.abs(levels))), zero_one))
    releases = _releases(x, noised)
    private = StatsPrivacyConfig(epsilon=cfg.privacy.summary_epsilon, delta=cfg.privacy.delta)
    sigma, _ = spend_for_query(ledger, cfg, private, query_id, releases)
    noise = Noise(sigma, rng)
    n = float(len(x))
    for j, bound, zero_one in plan:
        moments.sums[j] = float(np.clip(noise.add(moments.sums[j], bound), -n * bound,
                                        n * bound))
        if zero_one:
            moments.sums[j] = max(moments.sums[j], 0.0)
            moments.squares[j] = moments.sums[j]
        else:
            moments.squares[j] = float(np.clip(noise.add(moments.squares[j], bound**2), 0.0,
                                               n * bound**2))


def small_test_metrics(metrics: dict[str, float], n_test: int, k: int) -> dict[str, float]:
    """``metrics`` as sent: all NaN when the test set has fewer than ``k`` patients."""
    if n_test >= k:
        return metrics
    return {name: float("nan") for name in metrics}


def site_summary_moments(x: np.ndarray, cfg: ExperimentConfig, k: int, context,
                         site: str, message_id: str, seed: int | None = None) -> Moments:
    """``summary_moments`` for one site's summary reply: the spend goes to the site's own
    ledger (``privacy.site.ledger_dir``) under a query id unique to this message. ``seed``:
    reproducible noise (simulation only; a real site's noise must not be re-derivable)."""
    from medfed.privacy.ledger import Ledger
    from medfed.privacy.site import ledger_dir, run_id_of

    if cfg.privacy.mode == "none":
        return summary_moments(x, cfg, k)
    ledger = Ledger.open(ledger_dir(context, cfg), site)
    return summary_moments(x, cfg, k, ledger, f"summary-{run_id_of(context)}-{message_id[:12]}",
                           np.random.default_rng(seed))
