"""Central (client-level) DP through Flower's fixed-clipping strategy wrappers."""

from __future__ import annotations

import pytest

from medfed.simulation.runner import run_simulation
from tests.conftest import small_config


@pytest.mark.parametrize("clipping", ["server", "client"])
def test_central_dp_runs_and_reports_client_level_guarantee(clipping):
    cfg = small_config(privacy__mode="central", privacy__epsilon=5.0, privacy__delta=0.01,
                       privacy__clipping=clipping, privacy__clipping_norm=0.5,
                       baselines__centralized=False, baselines__local_only=False)
    report = run_simulation(cfg).report
    privacy = report["privacy"]
    assert privacy["mode"] == "central" and privacy["level"] == "client"
    assert 0 < privacy["epsilon"] <= 5.0 and privacy["noise_multiplier"] > 0
    assert "client level" in privacy["guarantee"] and privacy["rounds"] == cfg.rounds
    assert report["metrics"]["federated"]["pooled"]["auroc"] == report["metrics"]["federated"][
        "pooled"]["auroc"]  # a number, not NaN


def test_central_dp_delta_must_be_below_one_over_sites():
    from medfed.errors import MedFedError

    cfg = small_config(privacy__mode="central", privacy__delta=0.5)
    with pytest.raises(MedFedError, match="not below 1/3"):
        run_simulation(cfg)
