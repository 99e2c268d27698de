"""The privacy CLI: plan, report, sweep; bad inputs are one line and exit code 2."""

from __future__ import annotations

import json

import pytest
import yaml

from medfed.privacy.ledger import Ledger, Spend
from tests.conftest import ROOT, run_cli


def small_yaml(tmp_path) -> str:
    raw = yaml.safe_load((ROOT / "configs/breast-cancer.yaml").read_text())
    raw.update(rounds=2, model={"name": "logreg"})
    raw["partition"]["sites"] = 3
    path = tmp_path / "bc.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_plan_prints_noise_and_epsilon_per_site(tmp_path, monkeypatch, capsys):
    code, out, _ = run_cli(["privacy", "plan", small_yaml(tmp_path), "--epsilon", "3"],
                           monkeypatch, capsys)
    assert code == 0 and "noise" in out and "site-1" in out and "eps end" in out


@pytest.mark.parametrize("args, words", [
    (["--epsilon", "0"], "privacy.epsilon=0 must be > 0"),
    (["--epsilon", "-2"], "must be > 0"),
    (["--delta", "0.5"], "not below 1/n"),
    (["--epsilon", "1e-7"], "no noise multiplier"),
])
def test_plan_bad_inputs_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, words):
    code, _, err = run_cli(["privacy", "plan", small_yaml(tmp_path), *args], monkeypatch,
                           capsys)
    assert code == 2 and words in err.replace("\n", " ")
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2  # rich may wrap


def test_simulate_bad_epsilon_exits_2(tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["simulate", small_yaml(tmp_path), "--out", str(tmp_path / "o"),
                            "--no-track", "--set", "privacy.mode=dp-sgd",
                            "--set", "privacy.epsilon=0"], monkeypatch, capsys)
    assert code == 2 and "privacy.epsilon" in err and not (tmp_path / "o").exists()


def test_report_reads_ledgers_and_rejects_a_corrupted_one(tmp_path, monkeypatch, capsys):
    led = Ledger.open(tmp_path, "site-1")
    led.record(Spend("run-a", 1, 10, 0.1, 1.1, 1.0, 0.3, 1e-5, "rdp"))
    led.record(Spend("run-a", 2, 10, 0.1, 1.1, 1.0, 0.4, 1e-5, "rdp"))
    code, out, _ = run_cli(["privacy", "report", "--ledger", str(tmp_path), "--budget", "1",
                            "--rounds"], monkeypatch, capsys)
    assert code == 0 and "site-1" in out and "run-a" in out and "round 2" in out
    (tmp_path / "site-2.json").write_text('{"format": "medfed-privacy-ledger/1", "spe')
    code, _, err = run_cli(["privacy", "report", "--ledger", str(tmp_path)], monkeypatch,
                           capsys)
    assert code == 2 and "corrupted" in err and "Traceback" not in err


def test_simulate_sweep_writes_table_and_plot(tmp_path, monkeypatch, capsys):
    out = tmp_path / "sweep"
    code, stdout, err = run_cli(["simulate", small_yaml(tmp_path), "--out", str(out),
                                 "--no-track", "--set", "baselines.local_only=false",
                                 "--sweep", "privacy.epsilon=2,inf"], monkeypatch, capsys)
    assert code == 0, err
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["privacy.epsilon"] for r in rows] == ["2", "inf"]
    assert rows[0]["max_site_epsilon"] <= 2.0 and rows[1]["max_site_epsilon"] is None
    assert all(0 <= r["federated"] <= 1 for r in rows)
    assert (out / "sweep.png").stat().st_size > 1000 and "| 2 |" in (out / "sweep.md").read_text()
    report = json.loads((out / "privacy.epsilon=2" / "report.json").read_text())
    assert report["privacy"]["mode"] == "dp-sgd" and report["privacy"]["baselines"]
    assert (out / "privacy.epsilon=2" / "privacy").is_dir()
