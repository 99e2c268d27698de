"""End to end: a tiny multimodal federation with a clinical-only site, and the HAM10000 sample."""

from __future__ import annotations

from pathlib import Path

from medfed.config import validate
from medfed.reports.report import markdown
from medfed.simulation.runner import run_simulation

MODEL = {"name": "multimodal", "image_shape": [1, 16, 16],
         "encoder_options": {"channels": [4, 8]}}


def test_tiny_demo_federation_reports_every_arm(tmp_path):
    cfg = validate({
        "dataset": {"name": "multimodal-sites", "options": {
            "path": str(tmp_path / "data"), "cache_dir": str(tmp_path / "cache"),
            "demo": {"sites": 3, "patients": 24, "missing_image": 0.3,
                     "clinical_only_sites": 1, "size": 16},
            "clinical": {"numeric": ["age", "crp"], "categorical": ["sex", "smoker"]},
            "spatial_size": [16, 16]}},
        "partition": {"scheme": "natural", "sites": 3},
        "model": MODEL, "strategy": {"name": "fedavg-partial", "min_sites": 3},
        "train": {"batch_size": 16, "lr": 0.01, "optimizer": "adam"}, "rounds": 2, "seed": 1})
    report = run_simulation(cfg).report
    assert {"federated", "local_only", "centralized"} <= set(report["metrics"])  # spine keys
    section = report["multimodal"]
    assert set(section["models"]) == {"multimodal", "image_only", "clinical_only"}
    assert set(section["modality_removed"]) == {"without_image", "without_clinical"}
    assert section["site_modalities"]["site-3"] == ["clinical"]
    for scores in [*section["models"].values(), *section["modality_removed"].values()]:
        assert set(scores["per_site"]) == {"site-1", "site-2", "site-3"}
        assert 0.0 <= scores["pooled"]["auroc"] <= 1.0
    row = section["clinical_only_sites"]["site-3"]
    assert set(row) == {"with", "without"} and row["without"]["site"] is not None
    assert "Multimodal: auroc by model" in markdown(report)


def test_ham10000_sample_runs_end_to_end(shared_data, tmp_path):
    from medfed.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "ham10000-sample.yaml",
                      [f"dataset.options.path={shared_data / 'ham10000-sample'}",
                       f"dataset.options.cache_dir={tmp_path}", "rounds=1",
                       "baselines.local_only=false"])
    report = run_simulation(cfg).report
    assert report["dataset"] == "ham10000"
    assert sum(s["n_train"] + s["n_test"] for s in report["sites"]) == 70
    assert report["multimodal"]["site_modalities"]["site-1"] == ["clinical", "image"]
    assert "auroc" in report["metrics"]["federated"]["pooled"]
