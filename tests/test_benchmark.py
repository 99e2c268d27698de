"""`medfed benchmark`: grid × seeds, resumable cells, statistics, paired tests, MLflow runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from medfed.reports.benchmark import build_summary, paired, summarize
from tests.conftest import run_cli

CONFIG = {"name": "bench-test", "dataset": {"name": "breast-cancer"},
          "partition": {"scheme": "dirichlet", "alpha": 1.0, "sites": 3},
          "model": {"name": "logreg"}, "strategy": {"name": "fedavg"},
          "train": {"batch_size": 64, "lr": 0.1}, "rounds": 1,
          "baselines": {"centralized": False},
          "benchmark": {"grid": {"strategy": [{"name": "fedavg"},
                                                {"name": "fedprox", "proximal_mu": 0.1}]},
                        "seeds": 2}}


def _config(tmp_path, **changes) -> str:
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, **changes}))
    return str(path)


def _record(strategy: str, seed: int, site_values: dict[str, float], local: float) -> dict:
    """A cell record whose report holds the given per-site AUROCs (federated) and a local arm."""
    per_site = {s: {"auroc": v} for s, v in site_values.items()}
    local_sites = {s: {"auroc": local, "note": "single class"} for s in site_values}
    return {"name": f"{strategy}-{seed}", "group": {"strategy.name": strategy}, "seed": seed,
            "report": {"dataset": "d", "primary_metric": "auroc",
                       "metrics": {"federated": {"pooled": {"auroc": np.mean(
                           list(site_values.values()))}, "per_site": per_site},
                                   "local_only": {"pooled": {"auroc": local},
                                                  "per_site": local_sites}}}}


def test_summary_matches_numpy_and_scipy():
    x = [0.71, 0.74, 0.69, 0.77, 0.73]
    s = summarize([*x, None, math.nan])  # undefined values are left out, not zeros
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert s["n"] == 5 and s["mean"] == pytest.approx(np.mean(x))
    assert s["std"] == pytest.approx(np.std(x, ddof=1))
    assert (s["ci_low"], s["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert summarize([0.5])["std"] is None and summarize([])["mean"] is None


def test_rows_site_means_and_paired_test_match_scipy():
    rng = np.random.default_rng(0)
    seeds = [0, 1, 2, 3]
    avg = {s: rng.uniform(0.6, 0.8, 3) for s in seeds}
    prox = {s: avg[s] + rng.normal(0.05, 0.01, 3) for s in seeds}  # clearly better
    records = [_record(name, s, dict(zip("abc", values[s], strict=True)), 0.6)
               for name, values in (("fedavg", avg), ("fedprox", prox)) for s in seeds]
    summary = build_summary(records, {"strategy.name": ["fedavg", "fedprox"]}, seeds, "c")
    rows = {(r["label"], r["arm"]): r for r in summary["rows"]}
    # local-only is the same in both combinations: one row, labelled "any"
    assert set(rows) == {("fedavg", "federated"), ("fedprox", "federated"),
                         ("any", "local_only")}
    site_means = [np.mean(prox[s]) for s in seeds]
    assert rows["fedprox", "federated"]["stats"]["auroc"]["site_mean"]["mean"] == \
        pytest.approx(np.mean(site_means))
    assert rows["fedprox", "federated"]["stats"]["auroc"]["per_site"]["b"]["std"] == \
        pytest.approx(np.std([prox[s][1] for s in seeds], ddof=1))
    test = next(p for p in summary["paired"] if p["label"] == "fedprox"
                and p["scope"] == "site_mean")
    expected = stats.ttest_rel(site_means, [np.mean(avg[s]) for s in seeds])
    assert test["p_value"] == pytest.approx(expected.pvalue)
    assert test["mean"] == pytest.approx(np.mean(site_means) - np.mean([np.mean(avg[s])
                                                                        for s in seeds]))
    assert test["exceeds_noise"] and test["ci_low"] > 0
    # a difference smaller than the seed noise is not flagged
    noisy = dict(rows["fedprox", "federated"], seeds=seeds)
    noisy["values"] = {"auroc": {"site_mean": [0.7, 0.5, 0.9, 0.62], "pooled": [0.7] * 4,
                                 "per_site": {}}}
    assert not paired(noisy, rows["fedavg", "federated"], "auroc", "site_mean")["exceeds_noise"]


def test_baselines_trained_once_are_one_row():
    records = [_record("fedavg", s, {"a": 0.7, "b": 0.8}, 0.6) for s in (0, 1)]
    for s in (0, 1):  # benchmark.baselines: once -> no local-only arm in later combinations
        record = _record("fedprox", s, {"a": 0.7, "b": 0.9}, 0.6)
        del record["report"]["metrics"]["local_only"]
        records.append(record)
    rows = build_summary(records, {"strategy.name": ["fedavg", "fedprox"]}, [0, 1], "c")["rows"]
    assert [(r["label"], r["arm"]) for r in rows] == [
        ("fedavg", "federated"), ("fedprox", "federated"), ("any", "local_only")]


def test_benchmark_runs_resumes_and_logs_parent_and_children(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    config, out = _config(tmp_path), tmp_path / "out"
    code, stdout, err = run_cli(["benchmark", config, "--out", str(out), "--json",
                                 "--jobs", "2"], monkeypatch, capsys)
    assert code == 0, err
    summary = json.loads(stdout)  # stdout is the JSON object only
    assert summary["cells_computed"] == 4 and summary["cells_reused"] == 0
    cells = sorted((out / "cells").glob("*/cell.json"))
    assert len(cells) == 4 and (out / "benchmark-auroc.png").stat().st_size > 1000
    # the table is the cells' numbers: FedProx's site mean from its two stored reports
    reports = [json.loads(c.read_text()) for c in cells]
    prox = [np.mean([m["auroc"] for m in r["report"]["metrics"]["federated"]["per_site"]
                     .values()]) for r in reports if r["group"]["strategy"] == "fedprox"]
    row = next(r for r in summary["rows"] if r["label"] == "fedprox"
               and r["arm"] == "federated")
    assert row["stats"]["auroc"]["site_mean"]["mean"] == pytest.approx(np.mean(prox))
    assert "| fedprox | federated |" in (out / "benchmark.md").read_text()

    mtimes = [c.stat().st_mtime_ns for c in cells]
    code, stdout, err = run_cli(["benchmark", config, "--out", str(out), "--json"],
                                monkeypatch, capsys)
    again = json.loads(stdout)
    assert code == 0 and again["cells_computed"] == 0 and again["cells_reused"] == 4
    assert [c.stat().st_mtime_ns for c in cells] == mtimes  # nothing recomputed
    assert again["rows"] == summary["rows"]

    client = MlflowClient(again["mlflow"]["tracking_uri"])
    children = client.search_runs(
        [client.get_run(again["mlflow"]["run_id"]).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{again['mlflow']['run_id']}'")
    assert len(children) == 4
    child = children[0]
    assert any(k.startswith("federated/site-") for k in child.data.metrics)
    assert client.get_metric_history(child.info.run_id, "pooled_auroc")[0].step == 1
    parent_files = {f.path for f in client.list_artifacts(again["mlflow"]["run_id"])}
    assert {"benchmark.md", "benchmark-auroc.png"} <= parent_files

    # a changed config never silently mixes with stored cells
    code, _, err = run_cli(["benchmark", config, "--out", str(out), "--set", "rounds=2"],
                           monkeypatch, capsys)
    assert code == 2 and "different config" in err and "Traceback" not in err
    assert [c.stat().st_mtime_ns for c in cells] == mtimes


@pytest.mark.parametrize("args,words", [
    (["--grid", "strategy.nmae=fedavg"], "nmae"),
    (["--grid", "strategy.name=fedavg,nosuch"], "nosuch"),
    (["--grid", "rounds=2,zero"], "rounds"),
    (["--grid", "strategy.name"], "KEY=V1,V2"),
    (["--grid", "seed=1,2"], "--seeds"),
    (["--seeds", "a,b"], "--seeds"),
])
def test_bad_grid_is_one_line_before_any_cell(tmp_path, monkeypatch, capsys, args, words):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["benchmark", _config(tmp_path), "--out", str(out), *args],
                                monkeypatch, capsys)
    assert code == 2 and err.startswith("error:") and words in err, err
    assert "Traceback" not in err and not out.exists()


SHIPPED = {"benchmark-heart-disease": None,  # UCI-format files written here
           "benchmark-breastmnist-shift": "medmnist/breastmnist.npz",
           "benchmark-tcga-brca": "tcga-brca/brca.csv"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_benchmark_configs_run_on_a_small_grid(name, tmp_path, monkeypatch, capsys):
    """Each configs/benchmark-*.yaml runs as shipped (its grid and arms), cut to 2 seeds and one
    short round: every arm of every cell is in the summary, with a mean and a CI."""
    import os
    from pathlib import Path

    if SHIPPED[name] is None:
        from tests.uci_files import write_uci_heart

        monkeypatch.setenv("MEDFED_DATA_DIR", str(write_uci_heart(tmp_path / "data", seed=3)))
    elif not (Path(os.environ.get("MEDFED_DATA_DIR", "/nonexistent")) / SHIPPED[name]).exists():
        pytest.skip(f"real {SHIPPED[name]} not under MEDFED_DATA_DIR")
    raw = yaml.safe_load(Path(f"configs/{name}.yaml").read_text())
    small = ["rounds=1", "train.local_epochs=1"]
    if "ditto" in raw.get("personalize", []):
        small.append("personalization.ditto.local_epochs=1")
    sets = [arg for s in small for arg in ("--set", s)]
    code, out, err = run_cli(["benchmark", f"configs/{name}.yaml", "--seeds", "2", "--jobs", "1",
                              "--no-track", "--json", "--out", str(tmp_path / "b"), *sets],
                             monkeypatch, capsys)
    assert code == 0, err[-3000:]
    summary = json.loads(out)
    arms = {"federated", *raw.get("personalize", [])}
    listed = json.dumps(summary)
    assert all(f'"{arm}"' in listed for arm in arms), (arms, listed[:2000])
    cells = list((tmp_path / "b" / "cells").glob("*/cell.json"))
    grid = raw["benchmark"].get("grid", {})
    assert len(cells) == 2 * math.prod(len(v) for v in grid.values())
