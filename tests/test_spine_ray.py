"""The same ServerApp and ClientApp under Flower's Simulation Engine (Ray backend)."""

from __future__ import annotations

import subprocess

from medfed.simulation.runner import run_simulation
from tests.conftest import small_config


def test_ray_engine_runs_the_same_apps():
    cfg = small_config(engine="ray", rounds=2, partition={"scheme": "iid", "sites": 2},
                       baselines={"centralized": False, "local_only": False})
    seen: list[int] = []
    report = run_simulation(cfg, on_round=lambda r: seen.append(r["round"])).report
    assert [h["round"] for h in report["history"]] == [1, 2]
    assert seen == [1, 2]  # progress followed live from the ServerApp
    assert report["history"][-1]["pooled"]["auroc"] > 0.9  # central evaluation hook ran
    assert report["history"][-1]["federated_eval"]["accuracy"] > 0.8
    assert report["metrics"]["federated"]["pooled"]["auroc"] > 0.9
    leftover = subprocess.run(["pgrep", "-f", "flower-superlink --insecure --simulation"],
                              capture_output=True, text=True).stdout.strip()
    assert leftover == ""  # the SuperLink we started is stopped
