"""No exact counts from small sites: feature moments for the federated scaling, evaluation
metrics, and what the report says was withheld."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from medfed.config import validate
from medfed.datasets.scaling import combine_moments, released_moments, site_moments
from medfed.privacy.ledger import Ledger
from medfed.privacy.site_stats import StatsBudgetExhausted, calibrate
from medfed.privacy.small_cells import small_test_metrics, summary_moments


def hospital(n: int, smokers: int, seed: int = 0) -> np.ndarray:
    """(n, 4): age (continuous), smoker (0/1), grade (1/2/3), sex (0/1, balanced)."""
    rng = np.random.default_rng(seed)
    smoker = np.zeros(n)
    smoker[rng.choice(n, smokers, replace=False)] = 1
    grade = rng.choice([1.0, 2.0, 3.0], n, p=[0.45, 0.45, 0.10])
    sex = (np.arange(n) % 2).astype(float)
    return np.column_stack([rng.normal(60, 9, n), smoker, grade, sex])


def test_three_moments_give_a_three_level_feature_exact_counts():
    """Why count-like features are checked: n, sum and sum of squares solve for the number of
    patients at each of three levels (here grade 1/2/3)."""
    x = hospital(40, 12)[:, 2]
    n, s, q = len(x), x.sum(), np.square(x).sum()
    # c1 + c2 + c3 = n, c1 + 2 c2 + 3 c3 = s, c1 + 4 c2 + 9 c3 = q
    counts = np.linalg.solve([[1, 1, 1], [1, 2, 3], [1, 4, 9]], [n, s, q])
    assert np.allclose(counts, [np.sum(x == g) for g in (1, 2, 3)])


def test_a_small_cell_is_withheld_and_large_cells_are_sent_exactly():
    x = hospital(60, smokers=4)  # 4 smokers: a cell below k = 10
    grade_small = np.sum(x[:, 2] == 3) < 10
    moments = released_moments(x, min_count=10)
    assert 1 in moments.suppressed and moments.n[1] == 0 and moments.sums[1] == 0
    assert (2 in moments.suppressed) == grade_small
    assert 0 not in moments.suppressed and moments.sums[0] == pytest.approx(x[:, 0].sum())
    assert moments.sums[3] == 30 and moments.n[3] == 60  # 30/30: both cells >= k
    assert moments.count_like == [1, 2, 3]
    # the smoker cell is large enough at another hospital: sent there
    assert 1 not in released_moments(hospital(60, smokers=25), 10).suppressed


def test_a_site_smaller_than_k_withholds_every_feature():
    moments = released_moments(hospital(8, smokers=4), min_count=10)
    assert moments.suppressed == [0, 1, 2, 3] and not moments.n.any() and not moments.sums.any()


def test_pooling_skips_withheld_features_per_site():
    a, b, c = hospital(60, 4, seed=1), hospital(80, 30, seed=2), hospital(70, 25, seed=3)
    mean, std = combine_moments((m.n, m.sums, m.squares)
                                for m in (released_moments(x, 10) for x in (a, b, c)))
    # smoker: a withheld it, so its mean is b and c's pooled mean
    bc = np.concatenate([b, c])
    assert mean[1] == pytest.approx(bc[:, 1].mean(), rel=1e-6)
    assert std[1] == pytest.approx(bc[:, 1].std(), rel=1e-5)
    # age: sent by everyone, equal to pooling all rows
    everyone = np.concatenate([a, b, c])
    assert mean[0] == pytest.approx(everyone[:, 0].mean(), rel=1e-6)
    # the old call (one row count per site) still pools exactly
    old_mean, _ = combine_moments(site_moments(x) for x in (a, b, c))
    assert np.allclose(old_mean, everyone.mean(axis=0), rtol=1e-6)
    # a feature no site sent: not rescaled
    none_mean, none_std = combine_moments([(np.array([0, 5]), np.zeros(2), np.zeros(2) + 5)])
    assert none_mean[0] == 0 and none_std[0] == 1


def test_with_a_privacy_mode_count_like_sums_are_noised_and_spent_in_the_ledger(tmp_path):
    cfg = validate({"privacy": {"mode": "dp-sgd", "epsilon": 3.0, "summary_epsilon": 0.5}})
    x = hospital(200, smokers=60)
    ledger = Ledger.open(tmp_path, "hospital-a")
    moments = summary_moments(x, cfg, 10, ledger, "summary-run-1",
                              np.random.default_rng(1))
    exact = released_moments(x, 10)
    assert moments.sums[0] == exact.sums[0]  # continuous: no count in it, sent as is
    for j in (1, 2, 3):  # smoker, grade, sex: no longer the exact counts
        assert moments.sums[j] != exact.sums[j]
    assert moments.squares[1] == moments.sums[1]  # 0/1: the square sum is the sum
    (spend,) = Ledger.open(tmp_path, "hospital-a").spends
    # releases: smoker 1, grade 2 (sum and squares), sex 1
    assert spend.run_id == "stats/summary-run-1" and spend.steps == 4
    assert spend.noise_multiplier == pytest.approx(calibrate(0.5, cfg.privacy.delta, 4))
    assert Ledger.open(tmp_path, "hospital-a").epsilon(cfg.privacy.delta) <= 0.5 + 1e-6


def test_noise_has_the_calibrated_spread(tmp_path):
    cfg = validate({"privacy": {"mode": "central", "epsilon": 100.0, "summary_epsilon": 1.0}})
    x = hospital(300, smokers=90)[:, [1]]  # one 0/1 feature: one release per query
    sigma = calibrate(1.0, cfg.privacy.delta, 1)
    draws = [summary_moments(x, cfg, 10, Ledger.open(tmp_path, "s"), f"q{i}",
                             np.random.default_rng(i)).sums[0] for i in range(60)]
    assert np.std(draws) == pytest.approx(sigma, rel=0.25)
    assert abs(np.mean(draws) - 90) < 3 * sigma / np.sqrt(60) + 1e-9


def test_the_summary_is_refused_past_the_site_budget(tmp_path):
    cfg = validate({"privacy": {"mode": "dp-sgd", "epsilon": 0.22, "summary_epsilon": 0.2}})
    x = hospital(200, smokers=60)
    ledger = Ledger.open(tmp_path, "h")
    summary_moments(x, cfg, 10, ledger, "first", np.random.default_rng(0))
    with pytest.raises(StatsBudgetExhausted, match="privacy budget exhausted"):
        summary_moments(x, cfg, 10, Ledger.open(tmp_path, "h"), "second",
                        np.random.default_rng(0))


def test_metrics_of_a_small_test_set_are_not_sent():
    metrics = {"accuracy": 0.75, "auroc": 0.8}
    assert all(np.isnan(v) for v in small_test_metrics(metrics, 8, 10).values())
    assert small_test_metrics(metrics, 10, 10) == metrics


def _data_dir() -> Path | None:
    folder = Path(os.environ.get("MEDFED_DATA_DIR", "")) / "tcga-brca"
    return folder if (folder / "brca.csv").is_file() else None


@pytest.mark.skipif(_data_dir() is None, reason="real TCGA-BRCA files not in MEDFED_DATA_DIR")
def test_real_tcga_brca_small_region_withholds_its_rare_flags_and_the_report_says_so(tmp_path):
    """The real TCGA-BRCA clinical table, 6 natural regions: every withheld feature at a site
    really has a value held by 1..k-1 of its patients, and report.json/md list them."""
    from medfed.config import load_config
    from medfed.datasets.sites import simulated_federation
    from medfed.reports.report import markdown
    from medfed.simulation.runner import run_simulation

    cfg = load_config(Path(__file__).parents[1] / "configs" / "tcga-brca.yaml",
                      ["rounds=1", "baselines.centralized=false", "baselines.local_only=false"])
    report = run_simulation(cfg).report
    small = report["small_cells"]["sites"]
    sites, _ = simulated_federation(cfg.to_json())
    assert any(s["withheld_features"] for s in small.values())
    for site in sites:
        x = site.x_train.reshape(site.n_train, -1)
        for j in small[site.name]["withheld_features"]:
            _, counts = np.unique(x[:, j], return_counts=True)
            assert len(counts) <= 3 and counts.min() < 10
        sent = set(range(x.shape[1])) - set(small[site.name]["withheld_features"])
        for j in sent:  # nothing count-like with a small cell was sent
            _, counts = np.unique(x[:, j], return_counts=True)
            assert len(counts) > 3 or counts.min() >= 10
    assert "Small cells in the feature scaling" in markdown(report)


def test_too_many_count_like_sums_for_the_epsilon_are_withheld_not_sent(tmp_path):
    """Noise for 40 sums at epsilon 0.01 would exceed any bound: they are withheld, nothing
    is spent, the continuous feature still goes."""
    cfg = validate({"privacy": {"mode": "dp-sgd", "epsilon": 3.0, "summary_epsilon": 0.01}})
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=300), rng.integers(0, 2, (300, 40)).astype(float)])
    moments = summary_moments(x, cfg, 10, Ledger.open(tmp_path, "h"), "q")
    assert moments.suppressed == list(range(1, 41)) and not moments.sums[1:].any()
    assert moments.n[0] == 300 and not Ledger.open(tmp_path, "h").spends
