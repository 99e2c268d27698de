"""The model card of a deployed run is honest about who trained it: per round the sites that
trained and evaluated, each site's metrics from the last round it took part in (dated),
pooled figures labelled with the sites they cover, and `medfed model download` warns when a
registered hospital was missing at the end.

The first tests build the card from a run folder (no processes); the ``deploy`` test reads
the card of a real federation where hospital-c died after round 1 (tests/deploy_scenario.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfed.config import validate
from medfed.deploy.registry import build_model_dir, card_markdown, model_card
from medfed.deploy.signing import verify_model_dir

NODES = {"hospital-a": "11", "hospital-b": "22", "hospital-c": "33"}


def _round(rnd: int, nodes: list[str], auroc: float) -> dict:
    """A history record as the coordinator writes it (medfed.deploy.participation)."""
    return {"round": rnd, "sites_trained": len(nodes), "federated_eval": {"auroc": auroc},
            "participants": {"trained": nodes, "evaluated": nodes},
            "site_train": {n: {"n_train": 100 + int(n)} for n in nodes},
            "site_eval": {n: {"n_test": 40, "metrics": {"auroc": auroc + int(n) / 1000}}
                          for n in nodes},
            "finished_at": f"2026-01-0{rnd}T10:00:00+00:00"}


def _run_dir(root: Path, rounds: int = 4, dropped_after: int = 2) -> tuple[Path, object]:
    cfg = validate({"name": "hd", "dataset": {"name": "heart-disease"},
                    "partition": {"sites": 3}, "model": {"name": "logreg"},
                    "rounds": rounds})
    state = root / "state"
    run_dir = state / "runs" / "hd-1"
    run_dir.mkdir(parents=True)
    (state / "nodes.json").write_text(json.dumps(
        {name: {"node_id": node, "key_sha256": "0" * 64} for name, node in NODES.items()}))
    history = [_round(r, ["11", "22", "33"] if r <= dropped_after else ["11", "22"],
                      0.70 + r / 100) for r in range(1, rounds + 1)]
    (run_dir / "result.json").write_text(json.dumps({
        "run_id": "hd-1", "history": history, "sites": {},
        "summary": {"task": "binary", "input_shape": [13], "n_classes": 2, "n_train": 300,
                    "scaling": {}}}))
    (run_dir / "final.safetensors").write_bytes(b"weights")
    return run_dir, cfg


def test_card_shows_each_round_and_the_site_that_left(tmp_path):
    run_dir, cfg = _run_dir(tmp_path)
    card = model_card(run_dir, cfg, "final", json.loads(
        (tmp_path / "state" / "nodes.json").read_text()))
    rounds = card["participation"]["rounds"]
    assert [r["trained"] for r in rounds] == [["hospital-a", "hospital-b", "hospital-c"]] * 2 \
        + [["hospital-a", "hospital-b"]] * 2
    assert card["federated_metrics_cover"] == {"round": 4,
                                               "sites": ["hospital-a", "hospital-b"]}
    sites = {s["site"]: s for s in card["sites"]}
    assert sites["hospital-c"]["metrics_round"] == 2 and not sites["hospital-c"]["to_the_end"]
    assert sites["hospital-c"]["metrics_date"] == "2026-01-02T10:00:00+00:00"
    assert sites["hospital-c"]["metrics"]["auroc"] == pytest.approx(0.72 + 0.033)
    assert sites["hospital-a"]["metrics_round"] == 4 and sites["hospital-a"]["to_the_end"]
    assert "hospital-c (last took part in round 2)" in card["warning"]
    assert card["known_limits"][0] == card["warning"]
    rows = {r["site"]: r for r in card["per_site_metrics"]}
    assert (rows["hospital-c"]["round"], rows["hospital-a"]["round"]) == (2, 4)
    text = card_markdown(card)
    assert "pooled over hospital-a, hospital-b, round 4" in text
    assert "**Warning: round 4 of this model was trained without hospital-c" in text
    assert "| hospital-c | 133 | 40 |" in text and "| 2 (left) |" in text


def test_card_of_a_complete_run_has_no_warning_and_is_signed(tmp_path):
    run_dir, cfg = _run_dir(tmp_path, rounds=3, dropped_after=3)
    folder = build_model_dir(run_dir, cfg, "final", tmp_path / "state")
    card = json.loads((folder / "model_card.json").read_text())
    assert card["warning"] is None
    assert card["federated_metrics_cover"]["sites"] == ["hospital-a", "hospital-b",
                                                         "hospital-c"]
    assert all(s["to_the_end"] for s in card["sites"])
    assert verify_model_dir(folder)["card_sha256"]  # the warning is part of the signed card


def test_best_model_card_describes_its_own_round(tmp_path):
    run_dir, cfg = _run_dir(tmp_path)
    (run_dir / "best.json").write_text(json.dumps({"round": 2, "score": 0.72}))
    card = model_card(run_dir, cfg, "best", json.loads(
        (tmp_path / "state" / "nodes.json").read_text()))
    assert card["round"] == 2 and card["warning"] is None  # all three trained round 2
    assert [r["round"] for r in card["participation"]["rounds"]] == [1, 2]
    assert {s["site"]: s["metrics_round"] for s in card["sites"]} == {
        "hospital-a": 2, "hospital-b": 2, "hospital-c": 2}


@pytest.fixture(scope="module")
def fed(tmp_path_factory):
    from tests.deploy_scenario import run_once

    return run_once(tmp_path_factory.getbasetemp())


@pytest.mark.deploy
def test_dropout_on_the_card_and_download_warning(fed, tmp_path):
    from tests.deploy_scenario import NAME

    history = json.loads((fed.run_dir / "result.json").read_text())["history"]
    assert [h["round"] for h in history] == [1, 2, 3], fed.log
    out = tmp_path / "model"
    done = fed.cli("model", "download", NAME, "--version", "latest", "-o", str(out), "--key",
                   str(fed.state / "coordinator.pub"))
    assert done.returncode == 0, done.stderr
    warning = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "without hospital-c" in warning[0], done.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert card["kind"] == "final" and card["round"] == 3
    rounds = card["participation"]["rounds"]
    assert rounds[0]["trained"] == ["hospital-a", "hospital-b", "hospital-c"]
    assert rounds[-1]["trained"] == ["hospital-a", "hospital-b"]  # killed after round 1
    assert card["federated_metrics_cover"] == {"round": 3,
                                               "sites": ["hospital-a", "hospital-b"]}
    site_c = next(s for s in card["sites"] if s["site"] == "hospital-c")
    last = site_c["last_round"]
    assert last in (1, 2) and site_c["metrics_round"] == last and not site_c["to_the_end"]
    assert site_c["metrics_date"] == rounds[last - 1]["date"]
    assert f"hospital-c (last took part in round {last})" in warning[0]
    assert "pooled over hospital-a, hospital-b, round 3" in (out / "model_card.md").read_text()
