"""Privacy accounting: MedFed's epsilon equals Opacus' own accountant on the recorded history,
and the plan meets the budget at the last round."""

from __future__ import annotations

import json

import pytest
from opacus.accountants import PRVAccountant, RDPAccountant

from medfed.errors import MedFedError
from medfed.privacy.accounting import epsilon_of, plan_site
from tests.conftest import small_config


def independent_epsilon(ledger_file, delta: float, accountant: str) -> float:
    """Replay every recorded step through a fresh Opacus accountant, step by step."""
    acc = RDPAccountant() if accountant == "rdp" else PRVAccountant()
    for spend in json.loads(ledger_file.read_text())["spends"]:
        for _ in range(spend["steps"]):
            acc.step(noise_multiplier=spend["noise_multiplier"],
                     sample_rate=spend["sample_rate"])
    return acc.get_epsilon(delta=delta)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_reported_epsilon_matches_opacus_from_ledger_history(tmp_path, accountant):
    from medfed.simulation.runner import run_simulation

    cfg = small_config(privacy__mode="dp-sgd", privacy__epsilon=2.0,
                       privacy__accountant=accountant, privacy__ledger_dir=str(tmp_path),
                       baselines__centralized=False, baselines__local_only=False)
    privacy = run_simulation(cfg).report["privacy"]
    assert privacy["mode"] == "dp-sgd" and privacy["accountant"] == accountant
    assert set(privacy["per_site"]) == {s.name for s in _sites(cfg)}
    for site, entry in privacy["per_site"].items():
        assert set(entry) >= {"epsilon", "noise_multiplier", "max_grad_norm", "steps",
                              "sample_rate", "exhausted"}
        expected = independent_epsilon(tmp_path / f"{site}.json", cfg.privacy.delta, accountant)
        assert entry["epsilon"] == pytest.approx(expected, rel=0.01)
        assert entry["epsilon"] <= cfg.privacy.epsilon * 1.001  # met at the end, not blown
        assert entry["epsilon"] > 0.8 * cfg.privacy.epsilon  # and not wasted either
        assert entry["steps"] == cfg.rounds * entry["steps"] // cfg.rounds > 0


def _sites(cfg):
    from medfed.datasets.sites import simulated_federation

    return simulated_federation(cfg.to_json())[0]


def test_plan_meets_budget_at_last_round_not_first():
    plan = plan_site(n_train=200, batch_size=20, local_epochs=2, rounds=10, epsilon=1.0,
                     delta=1e-5)
    eps = plan.epsilon_per_round
    assert len(eps) == 10 and all(a < b for a, b in zip(eps, eps[1:], strict=False))
    assert eps[0] < 0.6 and 0.95 <= eps[-1] <= 1.0
    # the same figure from Opacus' accountant on the whole planned training
    acc = RDPAccountant()
    acc.history = [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round * 10)]
    assert eps[-1] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)


def test_plan_with_prior_spend_uses_only_what_remains():
    first = plan_site(n_train=100, batch_size=10, local_epochs=1, rounds=5, epsilon=2.0,
                      delta=1e-5)
    half = [(first.noise_multiplier, first.sample_rate, first.steps_per_round * 3)]
    second = plan_site(n_train=100, batch_size=10, local_epochs=1, rounds=5, epsilon=2.0,
                       delta=1e-5, prior=half)
    assert second.noise_multiplier > first.noise_multiplier
    assert second.epsilon_per_round[-1] <= 2.0
    spent = [(first.noise_multiplier, first.sample_rate, first.steps_per_round * 5)] * 3
    done = plan_site(n_train=100, batch_size=10, local_epochs=1, rounds=5, epsilon=2.0,
                     delta=1e-5, prior=spent)
    assert done.noise_multiplier is None  # budget spent by earlier runs: exhausted


@pytest.mark.parametrize("kwargs, words", [
    ({"epsilon": 0.0}, "privacy.epsilon=0 must be > 0"),
    ({"epsilon": -1.0}, "must be > 0"),
    ({"delta": 0.02}, "not below 1/n = 1/100"),
    ({"epsilon": 1e-7}, "no noise multiplier"),
])
def test_bad_privacy_inputs_are_one_line_errors(kwargs, words):
    args = dict(n_train=100, batch_size=10, local_epochs=1, rounds=5, epsilon=1.0, delta=1e-5)
    with pytest.raises(MedFedError) as info:
        plan_site(**{**args, **kwargs})
    assert words in str(info.value) and "\n" not in str(info.value)


def test_epsilon_of_merges_rounds_like_opacus():
    rounds = [(1.2, 0.1, 10)] * 4
    assert epsilon_of(rounds, 1e-5) == pytest.approx(epsilon_of([(1.2, 0.1, 40)], 1e-5))
    assert epsilon_of([], 1e-5) == 0.0
