"""A real federation's model folder (registry.build_model_dir) carries the preprocessing
contract and the card sections, and `medfed predict` uses it."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from medfed.datasets.base import DataInfo
from tests.conftest import run_cli


def fake_run(tmp_path):
    """A finished deployed run: final weights, result.json (history, sites, summary with the
    federated scaling) and the coordinator's state folder."""
    from safetensors.torch import save

    from medfed.config import validate
    from medfed.federation.messages import FEATURE_MEAN, FEATURE_STD
    from medfed.models import for_experiment

    cfg = validate({"name": "deployed", "dataset": {"name": "csv", "options": {"label": "y"}},
                    "model": {"name": "mlp", "hidden": [4]}, "rounds": 2, "seed": 3})
    model = for_experiment(cfg, DataInfo("binary", (3,), 2), seed=3)
    run_dir = tmp_path / "state" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    (run_dir / "final.safetensors").write_bytes(save({k: v.contiguous() for k, v in
                                                      model.state_dict().items()}))
    mean, std = [1.0, -2.0, 0.5], [2.0, 4.0, 1.0]
    (run_dir / "result.json").write_text(json.dumps({
        "run_id": "r1",
        "history": [{"round": 1, "sites_trained": 2}, {"round": 2, "sites_trained": 1,
                                                        "sites_refused": {"7": "budget"}}],
        "sites": {"7": {"n_train": 40, "n_test": 10, "metrics": {"auroc": 0.7}},
                  "8": {"n_train": 30, "n_test": 8, "metrics": {"auroc": None}}},
        "summary": {"task": "binary", "input_shape": [3], "n_classes": 2, "n_train": 70,
                    "scaling": {FEATURE_MEAN: mean, FEATURE_STD: std}}}))
    nodes = {"hospital-a": {"node_id": "7"}, "hospital-b": {"node_id": "8"}}
    (tmp_path / "state" / "nodes.json").write_text(json.dumps(nodes))
    return cfg, run_dir, model, np.array(mean, np.float32), np.array(std, np.float32)


def test_deployed_card_and_predict(tmp_path, monkeypatch, capsys):
    from medfed.deploy.registry import build_model_dir

    cfg, run_dir, model, mean, std = fake_run(tmp_path)
    folder = build_model_dir(run_dir, cfg, "final", tmp_path / "state")
    card = json.loads((folder / "model_card.json").read_text())
    pre = card["preprocessing"]
    assert pre["scaling"]["mean"] == mean.tolist() and pre["threshold"] == 0.5
    assert [r["site"] for r in card["per_site_metrics"]] == ["hospital-a", "hospital-b"]
    assert all(r["ci95"] is None for r in card["per_site_metrics"])  # no per-row scores
    limits = " ".join(card["known_limits"])
    assert "hospital-b: single-class test split" in limits and "node(s) 7 stopped" in limits
    assert "## Known limits" in (folder / "model_card.md").read_text()
    # the coordinator never saw column names: rows come already encoded as f0, f1, f2
    rows = pd.DataFrame({"id": ["a", "b"], "f0": [0.0, 3.0], "f1": [1.0, -1.0],
                         "f2": [2.0, 0.0]})
    rows.to_csv(tmp_path / "rows.csv", index=False)
    code, _, err = run_cli(["predict", str(folder), str(tmp_path / "rows.csv"), "--out",
                            str(tmp_path / "p"), "--key",
                            str(tmp_path / "state" / "coordinator.pub")], monkeypatch, capsys)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "p" / "predictions.csv")
    x = (rows[["f0", "f1", "f2"]].to_numpy(np.float32) - mean) / std
    with torch.no_grad():
        expected = torch.sigmoid(model(torch.as_tensor(x))[:, 0]).numpy()
    np.testing.assert_allclose(preds["score_1"], expected, rtol=1e-5)
