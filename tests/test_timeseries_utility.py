"""The PhysioNet/CinC 2019 utility score against hand-computed stays."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfed.tasks.timeseries import (
    TimeSeriesTask,
    alarm_markdown,
    alarm_table,
    best_alarms,
    normalized_utility,
    stay_utility,
    utility_from_sums,
    utility_sums,
)


def _y(stay, labels):
    n = len(labels)
    return np.column_stack([labels, np.full(n, stay), np.arange(n), np.ones(n)])


def test_challenge_docstring_example():
    # evaluate_sepsis_score.py: labels [0,0,0,0,1,1], predictions [0,0,1,1,1,1] -> 3.3889
    # onset = 4 + 6 = 10; alarms at d = -8, -7 (early), -6 (peak), -5 (late)
    expected = 4 / 6 + 5 / 6 + 1 + 8 / 9
    assert stay_utility([0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 1, 1]) == pytest.approx(expected)
    assert expected == pytest.approx(3.388888888888889)


def test_hand_cases_per_stay():
    quiet = [0] * 6
    assert stay_utility(quiet, [1, 0, 1, 1, 0, 0]) == pytest.approx(-0.15)  # 3 false alarms
    assert stay_utility(quiet, [0] * 6) == 0.0
    septic = [1] * 10  # labelled from hour 0: onset at hour 6, file ends at onset + 3
    # every hour missed: hours 1..9 are d = -5..3, each costs 2/9 * (d + 6)
    assert stay_utility(septic, [0] * 10) == pytest.approx(-2 / 9 * sum(range(1, 10)))
    # one alarm at onset - 6 h (peak, +1) and nothing else
    assert stay_utility(septic, [1] + [0] * 9) == pytest.approx(1 - 10)
    # far too early: 20 h before onset earns the false-alarm penalty, never less
    long = [0] * 20 + [1] * 10  # onset at hour 26
    assert stay_utility(long, [1] + [0] * 29) == pytest.approx(-0.05 - 10)
    # hours after onset + 3 count nothing, whatever the alarm
    longer = long + [1] * 5
    assert stay_utility(longer, [0] * 30 + [1] * 5) == pytest.approx(-10)
    assert best_alarms(long).nonzero()[0].tolist() == list(range(14, 30))
    assert best_alarms(septic).all() and not best_alarms(quiet).any()


def test_normalized_utility_hand_cohort():
    septic, quiet = _y(0, [1] * 10), _y(1, [0] * 5)
    # best on the septic stay: 1 at hour 0 (d = -6) + (8 + 7 + ... + 0) / 9 = 5; inaction -10
    scores_septic = np.zeros(10)
    scores_septic[0] = 0.9  # observed: 1 - 10 = -9
    scores_quiet = np.array([0.9, 0.9, 0.1, 0.1, 0.1])  # two false alarms: -0.1
    y = np.concatenate([septic, quiet])
    scores = np.concatenate([scores_septic, scores_quiet])
    np.testing.assert_allclose(utility_sums(y, scores, 0.5), [-9.1, 5.0, -10.0])
    assert normalized_utility(y, scores, 0.5) == pytest.approx(0.9 / 15)
    order = np.random.default_rng(0).permutation(len(y))  # row order must not matter
    assert normalized_utility(y[order], scores[order], 0.5) == pytest.approx(0.9 / 15)
    perfect = np.concatenate([best_alarms(septic[:, 0]), np.zeros(5)]).astype(float)
    assert normalized_utility(y, perfect, 0.5) == pytest.approx(1.0)
    assert normalized_utility(y, np.zeros(len(y)), 0.5) == pytest.approx(0.0)
    assert math.isnan(normalized_utility(quiet, scores_quiet, 0.5))  # no septic stay


def test_sites_sums_add_up_to_the_pooled_score():
    rng = np.random.default_rng(1)
    ys = [_y(i, [0] * int(rng.integers(8, 30)) + [1] * 10 * (i % 3 == 0)) for i in range(12)]
    scores = [rng.random(len(y)) for y in ys]
    site_a = utility_sums(np.concatenate(ys[:5]), np.concatenate(scores[:5]), 0.7)
    site_b = utility_sums(np.concatenate(ys[5:]), np.concatenate(scores[5:]), 0.7)
    pooled = normalized_utility(np.concatenate(ys), np.concatenate(scores), 0.7)
    assert utility_from_sums(site_a + site_b) == pytest.approx(pooled)


def test_report_carries_utility():
    y = np.concatenate([_y(0, [0] * 4 + [1] * 10), _y(1, [0] * 8)])
    scores = np.where(y[:, 0] > 0, 0.8, 0.2)
    metrics = TimeSeriesTask().metrics(y, scores)
    assert metrics["utility"] == pytest.approx(normalized_utility(y, scores, 0.5))
    table = alarm_table(y, scores, {"thresholds": [0.5, 0.9]})
    assert [r["utility"] for r in table["rows"]] == pytest.approx(
        [normalized_utility(y, scores, 0.5), 0.0])
    text = "\n".join(alarm_markdown(table))
    assert "| threshold | utility |" in text and "PhysioNet/CinC 2019" in text
