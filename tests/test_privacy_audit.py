"""`medfed privacy audit`: the one-run epsilon lower bound (Steinke, Nasr, Jagielski 2023),
its canaries, and audits of a DP-SGD and a non-private federation on breast-cancer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from medfed.datasets.base import Site
from medfed.privacy.audit import (
    CanarySpec,
    epsilon_lower_bound,
    guess,
    p_value,
    site_canaries,
    with_canaries,
)
from tests.conftest import run_cli


def reference_p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The paper's own code (appendix, Algorithm 2), line for line."""
    q = 1 / (1 + math.exp(-eps))
    beta = scipy.stats.binom.sf(v - 1, r, q)
    alpha, total = 0.0, 0.0
    for i in range(1, v + 1):
        total = total + scipy.stats.binom.pmf(v - i, r, q)
        if total > i * alpha:
            alpha = total / i
    return min(beta + alpha * delta * 2 * m, 1)


@pytest.mark.parametrize(("m", "r", "v", "eps", "delta"), [
    (1000, 100, 80, 1.0, 1e-5), (1000, 100, 95, 2.5, 1e-5), (50, 24, 20, 0.3, 1e-3),
    (200, 40, 40, 4.0, 0.0), (10, 10, 3, 0.0, 0.01),
])
def test_p_value_is_the_papers_algorithm(m, r, v, eps, delta):
    assert p_value(m, r, v, eps, delta) == pytest.approx(reference_p_value(m, r, v, eps, delta),
                                                         rel=1e-9, abs=1e-15)


def test_bound_with_every_guess_right_has_a_closed_form():
    # delta = 0, v = r: P[Binomial(r, q) >= r] = q^r = 0.05  ->  eps = logit(0.05^(1/r))
    for r in (10, 24, 100):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, 0.0) == pytest.approx(math.log(q / (1 - q)),
                                                                     abs=1e-6)
    assert epsilon_lower_bound(1000, 10, 10, 0.0) == pytest.approx(1.0519, abs=1e-4)


def test_bound_is_zero_at_chance_and_grows_with_right_guesses():
    bounds = [epsilon_lower_bound(1000, 100, v, 1e-5) for v in range(40, 101)]
    assert bounds[:19] == [0.0] * 19  # 40..58 right of 100: within chance at 95 %
    assert bounds[19] > 0  # 59 right: P[Binomial(100, 1/2) >= 59] = 0.044 < 0.05
    assert all(b2 >= b1 for b1, b2 in zip(bounds, bounds[1:], strict=False))
    assert bounds[-1] > bounds[-10] > 0.0
    # the bound is valid: at the bound, the p-value is the significance level
    eps = epsilon_lower_bound(1000, 100, 90, 1e-5)
    assert p_value(1000, 100, 90, eps, 1e-5) == pytest.approx(0.05, abs=1e-6)
    # more delta, more room for chance: a lower bound
    assert epsilon_lower_bound(1000, 100, 90, 1e-2) < eps


def test_guesses_count_right_ins_and_outs():
    scores = np.array([9.0, 8.0, 1.0, 0.0, 5.0, 4.0])
    included = np.array([True, False, False, False, True, True])
    g = guess(scores, included, 2, 2)  # in: 9, 8 (one right); out: 1, 0 (both right)
    assert (g.r, g.v) == (4, 3)


def _site(n: int = 30, units: bool = False) -> Site:
    rng = np.random.default_rng(0)
    return Site("a", rng.normal(size=(n, 4)).astype(np.float32), rng.integers(0, 2, n),
                np.zeros((5, 4), np.float32), np.zeros(5, np.int64),
                units_train=np.arange(n) if units else None)


def test_canaries_join_training_rows_only_when_their_coin_says_in():
    site, spec = _site(units=True), CanarySpec(40, 7)
    canaries = site_canaries(site, 2, spec)
    audited = with_canaries(site, 2, spec.to_json())
    k = int(canaries.included.sum())
    assert 0 < k < 40 and audited.n_train == site.n_train + k
    np.testing.assert_array_equal(audited.x_train[site.n_train:], canaries.x[canaries.included])
    np.testing.assert_array_equal(audited.x_test, site.x_test)
    assert len(set(audited.units_train)) == audited.n_train  # each canary its own unit
    again = site_canaries(site, 2, spec)  # the sites and the auditor rebuild the same ones
    np.testing.assert_array_equal(again.included, canaries.included)
    other = site_canaries(site, 2, CanarySpec(40, 8))
    assert not np.array_equal(other.included, canaries.included)


def _audit(tmp_path, monkeypatch, capsys, config: str, *overrides: str) -> dict:
    sets = [arg for o in overrides for arg in ("--set", o)]
    code, out, err = run_cli(["privacy", "audit", config, "--canaries", "40", "--out",
                              str(tmp_path), *sets], monkeypatch, capsys)
    assert code == 0, err
    assert "Privacy audit" in out
    return json.loads((tmp_path / "audit.json").read_text())


FAST = ("rounds=2", "partition.sites=3", "partition.scheme=iid")


def test_non_private_federation_leaks_far_beyond_epsilon_1(tmp_path, monkeypatch, capsys):
    result = _audit(tmp_path, monkeypatch, capsys, "configs/breast-cancer.yaml", *FAST)
    assert result["privacy_mode"] == "none" and len(result["sites"]) == 3
    for row in result["sites"].values():
        assert row["claimed_epsilon"] is None
        assert row["epsilon_lower_bound"] > 1.0, row  # the site's updates give canaries away


def test_dp_sgd_audit_stays_below_the_claim(tmp_path, monkeypatch, capsys):
    """...and, audited into a simulate run's folder, the audit is on its signed model card."""
    sets = [arg for o in (*FAST, "privacy.epsilon=1") for arg in ("--set", o)]
    code, _, err = run_cli(["simulate", "configs/breast-cancer-dp.yaml", "--out", str(tmp_path),
                            "--no-track", *sets], monkeypatch, capsys)
    assert code == 0, err
    result = _audit(tmp_path, monkeypatch, capsys, "configs/breast-cancer-dp.yaml", *FAST,
                    "privacy.epsilon=1")
    card = json.loads((tmp_path / "model" / "model_card.json").read_text())
    audit_on_card = card["privacy"]["audit"]["per_site"]
    assert {s: r["audited_epsilon_lower_bound"] for s, r in audit_on_card.items()} == {
        s: r["epsilon_lower_bound"] for s, r in result["sites"].items()}
    assert "audited epsilon >=" in (tmp_path / "model" / "model_card.md").read_text()
    from medfed.deploy.signing import verify_model_dir

    verify_model_dir(tmp_path / "model")  # signed again after the audit was added
    for row in result["sites"].values():
        assert 0 < row["claimed_epsilon"] <= 1.0 + 1e-9
        assert row["epsilon_lower_bound"] <= row["claimed_epsilon"], row
        assert row["within_claim"] is True
    # what `medfed privacy report --audit` shows: every site, claim beside bound
    from rich.console import Console

    from medfed.cli.privacy import audit_table
    from medfed.simulation.privacy_audit import read_audit

    console = Console(record=True, width=200)
    console.print(audit_table(read_audit(tmp_path / "audit.json")))
    text = console.export_text()
    assert all(site in text for site in result["sites"]) and "consistent" in text


def test_a_damaged_audit_file_is_one_clear_error(tmp_path):
    from medfed.errors import MedFedError
    from medfed.simulation.privacy_audit import read_audit

    (tmp_path / "audit.json").write_text('{"sites": {"a": {}}}')
    with pytest.raises(MedFedError, match="not an audit.json"):
        read_audit(tmp_path / "audit.json")


def test_audit_refuses_tasks_it_cannot_score(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["privacy", "audit", "configs/tcga-brca.yaml", "--out",
                            str(tmp_path)], monkeypatch, capsys)
    assert code == 2 and "error: the audit needs a classification task" in err
    assert not (tmp_path / "audit.json").exists()
