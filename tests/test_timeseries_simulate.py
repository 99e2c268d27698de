"""End to end: a 2-site sepsis federation on generated stays writes the alarm report."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("model, representation", [("mlp", "window"), ("gru", "sequence")])
def test_sepsis_simulation_report(tmp_path, model, representation):
    from medfed.config import validate
    from medfed.datasets.timeseries.sepsis_demo import write_demo
    from medfed.reports.report import write_report
    from medfed.simulation.runner import run_simulation

    write_demo(tmp_path / "stays", sites=2, patients=25, septic_share=0.3, seed=1)
    cfg = validate({
        "dataset": {"name": "sepsis", "options": {
            "path": str(tmp_path / "stays"), "representation":
            representation, "hours": 6, "windows": [3, 6],
            "alarm": {"thresholds": [0.5, 0.9], "dwell": 2, "cooldown": 4}}},
        "partition": {"scheme": "natural"},
        "model": {"name": model, "hidden": 8 if model == "gru" else [8]},
        "train": {"batch_size": 128, "optimizer": "adam", "lr": 0.01},
        "baselines": {"local_only": False, "centralized": False},
        "rounds": 1, "seed": 0})
    report = run_simulation(cfg).report
    assert [s["name"] for s in report["sites"]] == ["site-1", "site-2"]
    assert report["sites"][0]["label_counts"]["train"]["stays"] > 0
    alarms = report["task_report"]["alarms"]
    assert [r["threshold"] for r in alarms["rows"]] == [0.5, 0.9]
    assert alarms["stays"] == sum(s["label_counts"]["test"]["stays"] for s in report["sites"])
    pooled = report["metrics"]["federated"]["pooled"]
    assert "auprc" in pooled and -5 <= pooled["utility"] <= 1  # challenge score, 1 = best
    assert all(r["utility"] is None or r["utility"] <= 1 for r in alarms["rows"])
    write_report(report, tmp_path / "out")
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "Alarm policy" in markdown and "| threshold | utility |" in markdown
    assert (tmp_path / "out" / "precision_recall.png").stat().st_size > 1000
    json.loads((tmp_path / "out" / "report.json").read_text())
