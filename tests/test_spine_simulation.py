"""The researcher's journey: `medfed simulate` end to end, every strategy, report schema."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medfed.simulation.runner import run_simulation
from medfed.strategies import STRATEGIES
from tests.conftest import ROOT, run_cli, small_config

REPORT_KEYS = {"dataset", "task", "config", "sites", "metrics", "history", "privacy", "timing"}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_trains_a_federation(strategy):
    options = {"fedprox": {"proximal_mu": 0.01}, "fedadam": {"eta": 0.05},
               "fedyogi": {"eta": 0.05}, "fedadagrad": {"eta": 0.05},
               "krum": {"num_malicious_nodes": 0}}.get(strategy, {})
    cfg = small_config(strategy={"name": strategy, **options}, partition__sites=4, rounds=4,
                       baselines={"centralized": False, "local_only": False})
    result = run_simulation(cfg)
    history = result.report["history"]
    assert [h["round"] for h in history] == [1, 2, 3, 4]
    assert result.report["metrics"]["federated"]["pooled"]["auroc"] > 0.9
    losses = [h["train_loss"] for h in history]
    assert losses[-1] < losses[0]  # the federation learns


def test_fedprox_proximal_term_changes_training():
    plain = run_simulation(small_config(strategy={"name": "fedprox", "proximal_mu": 0.0},
                                        baselines={"centralized": False, "local_only": False}))
    prox = run_simulation(small_config(strategy={"name": "fedprox", "proximal_mu": 5.0},
                                       baselines={"centralized": False, "local_only": False}))
    a = [h["train_loss"] for h in plain.report["history"]]
    b = [h["train_loss"] for h in prox.report["history"]]
    assert not np.allclose(a, b)


def test_report_schema_and_baselines():
    report = run_simulation(small_config(partition={"scheme": "dirichlet", "sites": 3,
                                                    "alpha": 1.0})).report
    assert REPORT_KEYS <= set(report)
    names = [s["name"] for s in report["sites"]]
    for site in report["sites"]:
        assert {"name", "n_train", "n_test", "label_counts"} <= set(site)
        assert sum(site["label_counts"]["train"].values()) == site["n_train"]
    assert sum(s["n_train"] + s["n_test"] for s in report["sites"]) == 569
    for arm in ("federated", "local_only", "centralized"):
        assert set(report["metrics"][arm]["per_site"]) == set(names)
        pooled = report["metrics"][arm]["pooled"]
        assert {"accuracy", "balanced_accuracy", "auroc", "auprc", "sensitivity",
                "specificity"} <= set(pooled)
    h = report["history"][-1]
    assert {"round", "train_loss", "pooled"} <= set(h) and h["pooled"]["auroc"] is not None
    assert report["timing"]["total_s"] >= report["timing"]["federated_s"] > 0
    assert report["privacy"] is None
    json.dumps(report)  # JSON-serialisable, NaN-free


def test_simulation_is_deterministic_for_a_seed():
    a = run_simulation(small_config(baselines={"centralized": False, "local_only": False}))
    b = run_simulation(small_config(baselines={"centralized": False, "local_only": False}))
    assert a.report["metrics"] == b.report["metrics"]


def test_cli_writes_report_plots_and_mlflow(tmp_path, monkeypatch, capsys):
    out = tmp_path / "bc"
    code, stdout, _ = run_cli(["simulate", str(ROOT / "configs/breast-cancer.yaml"), "--out",
                               str(out), "--set", "rounds=3", "--set", "partition.sites=3",
                               "--json"], monkeypatch, capsys)
    assert code == 0
    report = json.loads(stdout)  # --json: stdout holds the report and nothing else
    assert report["config"]["rounds"] == 3
    for name in ("report.json", "report.md", "metric_per_round.png", "comparison.png",
                 "global_model.safetensors"):
        assert (out / name).stat().st_size > 0
    assert (out / "metric_per_round.png").read_bytes()[:4] == b"\x89PNG"
    from mlflow.tracking import MlflowClient

    run = MlflowClient().get_run(report["mlflow"]["run_id"])
    assert run.data.params["strategy.name"] == "fedavg"
    assert "federated_auroc" in run.data.metrics


@pytest.mark.parametrize("args, needle", [
    (["--set", "dataset.name=nope"], "unknown dataset 'nope'"),
    (["--set", "strategy.name=fedfoo"], "unknown strategy 'fedfoo'"),
    (["--set", "rounds=many"], "rounds"),
    (["--set", "partition.scheme=zigzag"], "partition.scheme"),
    (["--set", "strategy.bogus=0.1"], "unknown key 'bogus'"),  # another strategy's: warning
    (["--set", "partition.sites=100"], "partition.sites"),
    (["--set", "partition.scheme=natural"], "natural needs a site column"),
    (["--set", "dataset.name=csv", "--set", "dataset.options.path=/nonexistent.csv"],
     "CSV file not found (/nonexistent.csv)"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(args, needle, tmp_path, monkeypatch,
                                                          capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["simulate", str(ROOT / "configs/breast-cancer.yaml"),
                                    "--out", str(out), "--no-track", *args], monkeypatch, capsys)
    assert code == 2
    assert needle in " ".join(stderr.split())
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 3
    assert not out.exists()


def test_label_with_one_class_at_a_site_trains_and_is_marked(tmp_path, monkeypatch, capsys):
    import pandas as pd

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x1": rng.normal(size=90), "site": np.repeat(["a", "b", "c"], 30),
                          "label": np.r_[rng.integers(0, 2, 60), np.zeros(30, int)]})
    frame.to_csv(tmp_path / "sites.csv", index=False)
    code, _, stderr = run_cli(["simulate", str(ROOT / "configs/breast-cancer.yaml"), "--no-track",
                               "--out", str(tmp_path / "o"), "--set", "dataset.name=csv",
                               "--set", f"dataset.options.path={tmp_path / 'sites.csv'}",
                               "--set", "dataset.options.site_column=site",
                               "--set", "partition.scheme=natural", "--set", "rounds=2"],
                              monkeypatch, capsys)
    assert code == 0 and "warning:" in stderr and "site 'c'" in stderr  # skewed sites are data
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["metrics"]["local_only"]["per_site"]["c"]["degenerate"] == (
        "single class in training")


def test_missing_config_and_bad_yaml(tmp_path, monkeypatch, capsys):
    code, _, stderr = run_cli(["simulate", str(tmp_path / "nope.yaml")], monkeypatch, capsys)
    assert code == 2 and "config file not found" in stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset: [unclosed\n")
    code, _, stderr = run_cli(["simulate", str(bad)], monkeypatch, capsys)
    assert code == 2 and "not valid YAML" in stderr and "bad.yaml" in stderr


def test_heart_disease_config_runs_on_uci_format_files(tmp_path, monkeypatch):
    from medfed.config import load_config
    from tests.uci_files import write_uci_heart

    monkeypatch.setenv("MEDFED_DATA_DIR", str(write_uci_heart(tmp_path)))
    cfg = load_config(ROOT / "configs/heart-disease.yaml", ["rounds=5"])
    report = run_simulation(cfg).report
    assert [s["name"] for s in report["sites"]] == ["cleveland", "hungarian", "switzerland", "va"]
    assert report["metrics"]["federated"]["pooled"]["auroc"] > 0.6


def test_demo_config_meets_its_targets():
    """The README's demo: 5 sites, Dirichlet 0.5, FedAvg; federated pooled AUROC >= 0.98
    and its mean per-site AUROC not below the local-only models' (like for like: the same
    sites' test splits)."""
    from medfed.config import load_config

    cfg = load_config(ROOT / "configs/breast-cancer.yaml")
    assert (cfg.partition.scheme, cfg.partition.sites, cfg.partition.alpha,
            cfg.strategy.name) == ("dirichlet", 5, 0.5, "fedavg")
    report = run_simulation(cfg).report
    fed = report["metrics"]["federated"]["pooled"]["auroc"]

    fed_sites, local_sites = (report["metrics"][arm]["per_site"]
                              for arm in ("federated", "local_only"))
    both = [s for s in fed_sites if None not in (fed_sites[s]["auroc"],
                                                local_sites[s]["auroc"])]
    assert len(both) >= 4  # at most one site has a test split without both classes

    def site_mean(arm: str) -> float:
        return np.mean([report["metrics"][arm]["per_site"][s]["auroc"] for s in both])

    assert fed >= 0.98 and site_mean("federated") >= site_mean("local_only")
