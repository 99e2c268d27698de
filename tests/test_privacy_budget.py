"""The budget is enforced: no site passes epsilon = 1, an over-budget site stops, the run
completes; and the spend accumulates across runs kept in the same ledger folder."""

from __future__ import annotations

import json

import pytest

from medfed.simulation.runner import run_simulation
from tests.conftest import small_config


def dp_config(tmp_path, **more):
    return small_config(privacy__mode="dp-sgd", privacy__epsilon=1.0,
                        privacy__ledger_dir=str(tmp_path), baselines__centralized=False,
                        baselines__local_only=False, **more)


def test_fixed_noise_site_stops_at_budget_and_run_completes(tmp_path):
    # noise far too low for 6 rounds at epsilon 1: sites must refuse the rounds that would pass
    cfg = dp_config(tmp_path, privacy__noise_multiplier=3.5, rounds=6)
    report = run_simulation(cfg).report
    assert len(report["history"]) == 6 and report["metrics"]["federated"]["pooled"]
    per_site = report["privacy"]["per_site"]
    for entry in per_site.values():
        assert entry["epsilon"] <= 1.0 + 1e-9
        assert entry["exhausted"]
        assert 0 < entry["rounds_trained"] < 6 and entry["rounds_refused"] > 0
    refused = [h.get("sites_refused", {}) for h in report["history"]]
    reasons = [reason for r in refused for reason in r.values()]
    assert reasons and all("privacy budget exhausted" in reason for reason in reasons)
    assert report["history"][-1].get("sites_refused")  # the last round: the server saw it


@pytest.mark.parametrize("rounds", [2, 7])
def test_epsilon_never_passes_budget_whatever_the_rounds(tmp_path, rounds):
    report = run_simulation(dp_config(tmp_path / str(rounds), rounds=rounds)).report
    for entry in report["privacy"]["per_site"].values():
        assert entry["epsilon"] <= 1.0 + 1e-9
        assert entry["rounds_trained"] == rounds  # planned noise: every round fits


def test_budget_accumulates_over_runs_and_a_spent_site_does_not_train(tmp_path):
    first = run_simulation(dp_config(tmp_path, rounds=3)).report["privacy"]
    # the second run plans with what remains: far more noise, and never past the budget
    second = run_simulation(dp_config(tmp_path, rounds=3)).report["privacy"]
    for site, entry in second["per_site"].items():
        assert first["per_site"][site]["epsilon"] <= entry["epsilon"] <= 1.0 + 1e-9
        assert entry["runs_in_ledger"] in (1, 2)
        if entry["rounds_trained"]:
            assert entry["noise_multiplier"] > 5 * first["per_site"][site]["noise_multiplier"]
    # a third run at a fixed, ordinary noise level cannot afford a single round
    third = run_simulation(dp_config(tmp_path, rounds=3, privacy__noise_multiplier=2.0)).report
    for site, entry in third["privacy"]["per_site"].items():
        assert entry["rounds_trained"] == 0 and entry["exhausted"]
        assert entry["epsilon"] == pytest.approx(second["per_site"][site]["epsilon"])
        ledger = json.loads((tmp_path / f"{site}.json").read_text())
        assert len(ledger["spends"]) == first["per_site"][site]["rounds_trained"] + \
            second["per_site"][site]["rounds_trained"]
    n_sites = len(third["privacy"]["per_site"])
    assert all(len(h.get("sites_refused", {})) == n_sites for h in third["history"])
