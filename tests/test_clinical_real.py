"""Real hospitals' clinical data: skewed sites train, tiny sites are one line, every strategy
runs heart-disease (FLamby's convention) end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfed.config import load_config
from medfed.datasets import load_dataset
from medfed.datasets.base import DataInfo, Site
from medfed.datasets.sites import build_sites
from medfed.datasets.splits import split_rows
from medfed.errors import MedFedError, MedFedWarning
from medfed.simulation.baselines import constant_model
from medfed.simulation.evaluation import score_sites
from medfed.simulation.runner import run_simulation
from medfed.strategies import STRATEGIES, build_strategy
from tests.conftest import ROOT, run_cli
from tests.uci_files import write_uci_heart

FLAMBY_SIZES = {"cleveland": (199, 104), "hungarian": (172, 89), "switzerland": (30, 16),
                "va": (85, 45)}


@pytest.fixture
def uci_dir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("MEDFED_DATA_DIR", str(write_uci_heart(tmp_path / "data")))
    return tmp_path / "data" / "heart-disease"


def _natural_sites() -> list[Site]:
    with pytest.warns(MedFedWarning) as caught:
        sites = build_sites(load_dataset("heart-disease"), "natural", 0)
    messages = " ".join(str(w.message) for w in caught)
    assert "random, not stratified" in messages and "'switzerland'" in messages
    assert "single class in its training split" in messages
    return sites


def test_generated_files_have_flamby_sizes_and_the_swiss_skew(uci_dir):
    sites = {s.name: s for s in _natural_sites()}
    assert {n: (s.n_train, s.n_test) for n, s in sites.items()} == FLAMBY_SIZES
    swiss = sites["switzerland"]
    assert (int(swiss.y_train.sum()), len(swiss.y_train)) == (30, 30)  # one class in training
    assert sorted(swiss.y_test.tolist()).count(0) == 1  # the one negative is tested
    assert len((uci_dir / "processed.switzerland.data").read_text().splitlines()) == 123


@pytest.mark.skipif(not Path(os.environ.get("MEDFED_DATA_DIR", "/nonexistent"),
                             "heart-disease", "processed.switzerland.data").is_file(),
                    reason="the real UCI files are not under MEDFED_DATA_DIR/heart-disease")
def test_real_uci_files_split_as_flamby():
    sites = {s.name: s for s in _natural_sites()}
    assert {n: (s.n_train, s.n_test) for n, s in sites.items()} == FLAMBY_SIZES
    assert sites["switzerland"].y_test.tolist().count(0) == 1


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_trains_heart_disease_and_marks_the_degenerate_site(strategy, uci_dir):
    cfg = load_config(ROOT / "configs/heart-disease.yaml",
                      ["rounds=2", f"strategy.name={strategy}", "baselines.centralized=false"])
    with pytest.warns(MedFedWarning):
        report = run_simulation(cfg).report
    assert [s["name"] for s in report["sites"]] == list(FLAMBY_SIZES)
    local = report["metrics"]["local_only"]["per_site"]["switzerland"]
    assert local["degenerate"] == "single class in training"
    assert local["specificity"] == 0.0 and local["sensitivity"] == 1.0  # says "disease" always
    assert local["auroc"] == 0.5  # constant scores: no ranking
    fed = report["metrics"]["federated"]["per_site"]["switzerland"]
    assert "degenerate" not in fed and fed["accuracy"] is not None
    assert all(np.isfinite(v) for v in report["metrics"]["federated"]["pooled"].values()
               if v is not None)


def test_cli_report_marks_the_constant_local_only_site(uci_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(["simulate", str(ROOT / "configs/heart-disease.yaml"),
                                    "--out", str(out), "--no-track", "--set", "rounds=2"],
                                   monkeypatch, capsys)
    assert code == 0, stderr
    assert "warning:" in stderr and "single class" in stderr and "Traceback" not in stderr
    assert "(constant)" in stdout  # the table's local-only cell for switzerland
    md = (out / "report.md").read_text()
    assert "degenerate (single class in training" in md and "| switzerland |" in md
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["local_only"]["per_site"]["switzerland"]["degenerate"] == (
        "single class in training")


def test_other_strategys_options_are_dropped_with_a_warning():
    with pytest.warns(MedFedWarning, match=r"\['eta', 'eta_l'\] belong to another strategy"):
        cfg = load_config(ROOT / "configs/tcga-brca.yaml", ["strategy.name=fedavg"])
    assert cfg.strategy.name == "fedavg" and not cfg.strategy.model_extra
    with pytest.raises(MedFedError, match="bogus"), pytest.warns(MedFedWarning):
        load_config(ROOT / "configs/tcga-brca.yaml", ["strategy.name=fedavg",
                                                      "strategy.bogus=1"])  # no one's


def test_every_shipped_config_takes_every_strategy():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        for strategy in STRATEGIES:
            cfg = load_config(path, [f"strategy.name={strategy}"])
            assert cfg.strategy.name == strategy, path
            built = build_strategy(cfg.strategy, max(cfg.strategy.min_sites, 4))
            assert type(built) is STRATEGIES[strategy], path


def test_stratified_split_falls_back_to_random_with_a_warning():
    y = np.array([0] + [1] * 19)
    with pytest.warns(MedFedWarning, match="random, not stratified.*site 'x'"):
        train, test = split_rows(np.arange(20), y, 0.3, 0, "binary", where="site 'x'")
    assert len(train) == 14 and len(test) == 6 and set(train) | set(test) == set(range(20))


def test_undefined_metrics_stay_null_with_the_reason():
    x = np.zeros((6, 2), np.float32)
    site = Site("one-class-test", x, np.array([0, 1, 0, 1, 0, 1]), x, np.ones(6, np.int64))
    info = DataInfo(task="binary", input_shape=(2,), n_classes=2)
    model = constant_model(info, np.array([1, 1, 1]))
    scores = score_sites({site.name: model}, [site], info, {site.name: None})
    metrics = scores["per_site"][site.name]
    assert metrics["auroc"] is None and metrics["specificity"] is None
    assert metrics["accuracy"] == 1.0  # the constant says class 1; every test row is class 1
    why = scores["undefined"]["per_site"][site.name]
    assert "needs both classes" in why["auroc"] and "no negative" in why["specificity"]
    assert "sensitivity" not in why


def _tiny_site_csv(path: Path, survival: bool) -> Path:
    rng = np.random.default_rng(0)
    n = 61
    frame = pd.DataFrame({"age": rng.normal(60, 9, n).round(), "crp": rng.normal(5, 2, n),
                          "site": ["big-a"] * 30 + ["big-b"] * 30 + ["tiny"]})
    frame.loc[57:59, "crp"] = np.nan  # cleaning drops rows: counts are after it
    if survival:
        frame["time"], frame["event"] = rng.integers(10, 900, n), rng.integers(0, 2, n)
    else:
        frame["label"] = rng.integers(0, 2, n)
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("dataset", ["csv", "csv-survival"])
def test_a_site_too_small_to_split_is_one_line(dataset, tmp_path, monkeypatch, capsys):
    table = _tiny_site_csv(tmp_path / "sites.csv", dataset == "csv-survival")
    code, _, stderr = run_cli(["simulate", str(ROOT / "configs/breast-cancer.yaml"),
                               "--no-track", "--out", str(tmp_path / "o"),
                               "--set", f"dataset.name={dataset}",
                               "--set", f"dataset.options={{path: {table}, site_column: site}}",
                               "--set", "partition.scheme=natural", "--set",
                               f"model={{name: {'mlp' if dataset == 'csv' else 'cox'}}}"],
                              monkeypatch, capsys)
    line = " ".join(stderr.split())
    assert code == 2 and "Traceback" not in stderr and "train set will be empty" not in line
    assert "site 'tiny'" in line and "1 usable row(s)" in line and "min_site_size" in line
    assert not (tmp_path / "o").exists()
