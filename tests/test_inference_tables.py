"""predict / validate / explain on tables: binary, multiclass, survival (CSV) and sepsis
(PhysioNet .psv stays), from the CLI in this process, on generated data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.inference_data import card, clinical_frame, simulate, table_config, tamper


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """One tiny federated model per task, plus a new hospital's CSV of each."""
    root = tmp_path_factory.mktemp("tables")
    out = {}
    for kind in ("binary", "multiclass", "survival"):
        folder = root / kind
        folder.mkdir()
        model = simulate(table_config(folder, kind), folder / "run")
        new = clinical_frame(80, 7, kind).drop(columns=["site"])
        new.to_csv(folder / "new.csv", index=False)
        out[kind] = (model, folder / "new.csv", new)
    return out


def expected_scores(model, frame: pd.DataFrame) -> np.ndarray:
    """Scores computed by hand from the card: one-hot, scale with its moments, forward."""
    import torch

    from medfed.inference.bundle import load_bundle

    bundle = load_bundle(model, device="cpu")
    names = bundle.pre["feature_names"]
    rows = frame.dropna(subset=["x1", "x2"])
    x = pd.get_dummies(rows[["x1", "x2", "cat"]], columns=["cat"], dtype=np.float32)
    x = x.reindex(columns=names, fill_value=0.0).to_numpy(np.float32)
    mean = np.asarray(bundle.pre["scaling"]["mean"], np.float32)
    std = np.asarray(bundle.pre["scaling"]["std"], np.float32)
    with torch.no_grad():
        return bundle.task.scores(bundle.model(torch.as_tensor((x - mean) / std))).numpy()


@pytest.mark.parametrize("kind", ["binary", "multiclass", "survival"])
def test_predict_applies_the_training_preprocessing(kind, tables, tmp_path, monkeypatch,
                                                    capsys):
    model, new_csv, frame = tables[kind]
    code, _, err = run_cli(["predict", str(model), str(new_csv), "--out",
                            str(tmp_path / "p")], monkeypatch, capsys)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "p" / "predictions.csv")
    kept = frame.dropna(subset=["x1", "x2"])
    assert preds["id"].tolist() == kept["id"].tolist()  # rows with a missing value skipped
    expected = expected_scores(model, frame)
    pre = card(model)["preprocessing"]
    if kind == "binary":
        np.testing.assert_allclose(preds["score_1"], expected, rtol=1e-4, atol=1e-5)
        assert (preds["predicted"] == (expected >= 0.5).astype(int)).all()
        assert (preds["threshold"] == pre["threshold"]).all()
    elif kind == "multiclass":
        names = pre["class_names"]
        np.testing.assert_allclose(preds[[f"score_{n}" for n in names]], expected, rtol=1e-4,
                                   atol=1e-5)
        assert preds["predicted"].tolist() == [names[i] for i in expected.argmax(1)]
    else:
        np.testing.assert_allclose(preds["risk"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["binary", "multiclass", "survival"])
def test_validate_writes_metrics_calibration_and_comparison(kind, tables, tmp_path,
                                                           monkeypatch, capsys):
    model, new_csv, frame = tables[kind]
    code, out, err = run_cli(["validate", str(model), str(new_csv), "--out",
                              str(tmp_path / "v")], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "v" / "validation.json").read_text())
    primary = {"binary": "auroc", "multiclass": "auroc", "survival": "c_index"}[kind]
    assert result["n"] == frame.dropna(subset=["x1", "x2"]).shape[0]
    assert 0.0 <= result["metrics"][primary] <= 1.0
    card_sites = {r["site"] for r in card(model)["per_site_metrics"]}
    assert set(result["comparison"]["training_sites"]) == card_sites == {"h1", "h2", "h3"}
    assert result["comparison"]["verdict"].split()[0] in ("inside", "below", "above")
    markdown = (tmp_path / "v" / "validation.md").read_text()
    assert result["comparison"]["verdict"] in markdown
    if kind == "binary":
        from medfed.tasks.metrics import binary_metrics

        preds = expected_scores(model, frame)
        y = frame.dropna(subset=["x1", "x2"])["label"].to_numpy()
        assert result["metrics"]["auroc"] == pytest.approx(binary_metrics(y, preds)["auroc"],
                                                           abs=1e-6)
        target = result["threshold_for_target"]
        assert target["sensitivity"] >= 0.9
        # recomputed scores may differ from the model's in the last float32 bit
        assert ((preds >= target["threshold"] - 1e-6)[y == 1]).mean() == pytest.approx(
            target["sensitivity"])
        curve = result["calibration"]
        assert sum(curve["counts"]) == len(y) and 0 <= curve["ece"] <= 1
        assert (tmp_path / "v" / "calibration.png").stat().st_size > 1000


@pytest.mark.parametrize("kind", ["binary", "multiclass"])
def test_explain_attributions_sum_to_the_logit_change(kind, tables, tmp_path, monkeypatch,
                                                      capsys):
    """Integrated gradients' completeness: per row, attributions add up to the explained
    logit minus the logit of the mean patient."""
    import torch

    from medfed.inference.bundle import load_bundle

    model, new_csv, _ = tables[kind]
    code, _, err = run_cli(["explain", str(model), str(new_csv), "--out",
                            str(tmp_path / "e")], monkeypatch, capsys)
    assert code == 0, err
    attributions = pd.read_csv(tmp_path / "e" / "attributions.csv")
    bundle = load_bundle(model, device="cpu")
    names = bundle.pre["feature_names"]
    assert list(attributions.columns) == ["id", *names]
    importance = json.loads((tmp_path / "e" / "importance.json").read_text())
    assert set(importance["mean_abs_attribution"]) == set(names)
    preds = pd.read_csv(new_csv).dropna(subset=["x1", "x2"])
    x = pd.get_dummies(preds[["x1", "x2", "cat"]], columns=["cat"], dtype=np.float32)
    x = bundle.scale(x.reindex(columns=names, fill_value=0.0).to_numpy(np.float32))
    with torch.no_grad():
        logits = bundle.model(torch.as_tensor(x)).numpy()
        base = bundle.model(torch.zeros(1, x.shape[1])).numpy()
    if kind == "binary":
        change = logits.reshape(-1) - base.reshape(-1)
    else:
        top = logits.argmax(1)
        change = logits[np.arange(len(x)), top] - base[0, top]
    np.testing.assert_allclose(attributions[names].sum(axis=1), change, atol=0.02)


def test_each_command_refuses_a_tampered_model(tables, tmp_path, monkeypatch, capsys):
    model, new_csv, _ = tables["binary"]
    bad = tamper(model, tmp_path / "tampered")
    for command in ("predict", "validate", "explain"):
        code, _, err = run_cli([command, str(bad), str(new_csv), "--out",
                                str(tmp_path / command)], monkeypatch, capsys)
        assert code == 2
        assert "SHA-256 does not match" in err and "model.safetensors" in err
        assert not (tmp_path / command).exists()  # nothing half-written


def test_a_pinned_key_of_another_coordinator_is_refused(tables, tmp_path, monkeypatch, capsys):
    model, new_csv, _ = tables["binary"]
    other, _, _ = tables["multiclass"]
    key = other.parent / "signing" / "coordinator.pub"
    code, _, err = run_cli(["predict", str(model), str(new_csv), "--out", str(tmp_path / "p"),
                            "--key", str(key)], monkeypatch, capsys)
    assert code == 2 and "not by the trusted coordinator key" in err


def test_missing_columns_name_the_columns_and_the_fix(tables, tmp_path, monkeypatch, capsys):
    model, new_csv, frame = tables["binary"]
    frame.drop(columns=["x2"]).to_csv(tmp_path / "no-x2.csv", index=False)
    code, _, err = run_cli(["predict", str(model), str(tmp_path / "no-x2.csv"), "--out",
                            str(tmp_path / "p")], monkeypatch, capsys)
    assert code == 2
    assert "missing column(s) ['x2']" in err and "add them" in err
    assert len(err.strip().splitlines()) == 1


def test_a_table_model_refuses_images(tables, tmp_path, monkeypatch, capsys):
    model, _, _ = tables["binary"]
    (tmp_path / "scan.nii.gz").write_bytes(b"not really")
    code, _, err = run_cli(["predict", str(model), str(tmp_path / "scan.nii.gz"), "--out",
                            str(tmp_path / "p")], monkeypatch, capsys)
    assert code == 2 and "takes a table (CSV)" in err and "images" in err


def test_model_card_has_use_sites_cis_calibration_privacy_limits(tables):
    model, _, _ = tables["binary"]
    info = card(model)
    assert info["intended_use"] and info["threshold"] == 0.5
    assert info["training"]["sites"] == ["h1", "h2", "h3"] and info["training"]["date"]
    for row in info["per_site_metrics"]:
        value, ci = row["metrics"]["auroc"], row["ci95"]
        assert ci is None or ci[0] <= value <= ci[1]
    assert 0 <= info["calibration"]["ece"] <= 1
    assert set(info["privacy_per_site"]) == {"h1", "h2", "h3"}
    assert info["known_limits"]
    markdown = (model / "model_card.md").read_text()
    assert "## Intended use" in markdown and "95 % CI" in markdown


# ---------------------------------------------------------------- sepsis
@pytest.fixture(scope="module")
def sepsis(tmp_path_factory):
    from medfed.datasets.timeseries.sepsis_demo import write_demo
    from tests.inference_data import write_yaml

    root = tmp_path_factory.mktemp("sepsis")
    write_demo(root / "train", sites=2, patients=60, septic_share=0.15, seed=1)
    write_demo(root / "new", sites=1, patients=20, septic_share=0.3, seed=9)
    config = write_yaml(root / "sepsis.yaml", {
        "name": "sepsis-test",
        "dataset": {"name": "sepsis", "options": {"path": str(root / "train"),
                                                  "alarm": {"dwell": 2, "cooldown": 6}}},
        "partition": {"scheme": "natural"}, "model": {"name": "mlp", "hidden": [16]},
        "train": {"local_epochs": 1, "batch_size": 256}, "rounds": 1,
        "baselines": {"local_only": False, "centralized": False}})
    return simulate(config, root / "run"), root / "new"


def test_sepsis_predict_scores_every_hour_and_alarms_per_stay(sepsis, tmp_path, monkeypatch,
                                                              capsys):
    from medfed.tasks.timeseries import stay_alarms

    model, new = sepsis
    code, _, err = run_cli(["predict", str(model), str(new), "--out", str(tmp_path / "p")],
                           monkeypatch, capsys)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "p" / "predictions.csv")
    stays = sorted(p.stem for p in new.rglob("*.psv"))
    assert sorted(preds["id"].unique()) == stays
    hours = sum(len(p.read_text().splitlines()) - 1 for p in new.rglob("*.psv"))
    assert len(preds) == hours
    for _, stay in preds.groupby("id"):
        assert stay["hour"].tolist() == list(range(len(stay)))
        fired, on = stay_alarms(stay["score"].to_numpy(), 0.5, dwell=2, cooldown=6)
        assert stay["alarm"].to_numpy().nonzero()[0].tolist() == fired.tolist()
        assert (stay["in_alarm"].to_numpy() == on).all()


def test_sepsis_validate_and_explain(sepsis, tmp_path, monkeypatch, capsys):
    model, new = sepsis
    code, _, err = run_cli(["validate", str(model), str(new), "--out", str(tmp_path / "v")],
                           monkeypatch, capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert result["task"] == "timeseries" and 0 <= result["metrics"]["auroc"] <= 1
    assert "alarm_ppv" in result["metrics"] and "threshold_for_target" in result
    code, _, err = run_cli(["explain", str(model), str(new), "--out", str(tmp_path / "e")],
                           monkeypatch, capsys)
    assert code == 0, err
    attributions = pd.read_csv(tmp_path / "e" / "attributions.csv")
    assert {"id", "hour"} <= set(attributions.columns)
    assert len(attributions.columns) == 2 + len(card(model)["preprocessing"]["feature_names"])


def test_sepsis_model_refuses_a_csv(sepsis, tables, tmp_path, monkeypatch, capsys):
    model, _ = sepsis
    _, new_csv, _ = tables["binary"]
    code, _, err = run_cli(["predict", str(model), str(new_csv), "--out", str(tmp_path / "p")],
                           monkeypatch, capsys)
    assert code == 2 and "takes PhysioNet .psv stays" in err


def test_sepsis_model_on_real_physionet_stays(shared_data, tmp_path, monkeypatch, capsys):
    """Trained on 100 real stays of hospital system A, scored on 5 real stays of B: every
    hour gets a score, stays keep their file names, and validate reads B's real labels."""
    import shutil

    from tests.inference_data import write_yaml

    sample = shared_data / "physionet2019-sample"
    config = write_yaml(tmp_path / "a.yaml", {
        "name": "sepsis-a",
        "dataset": {"name": "sepsis", "options": {"path": str(sample / "training_setA"),
                                                  "max_stays": 100}},
        "partition": {"scheme": "iid", "sites": 2}, "model": {"name": "mlp", "hidden": [16]},
        "train": {"local_epochs": 1, "batch_size": 256}, "rounds": 1,
        "baselines": {"local_only": False, "centralized": False}})
    model = simulate(config, tmp_path / "run")
    stays = sorted((sample / "training_setB").glob("*.psv"))[:5]
    (tmp_path / "b").mkdir()
    for path in stays:  # a few real files in a temporary folder, never in the repository
        shutil.copyfile(path, tmp_path / "b" / path.name)
    code, _, err = run_cli(["predict", str(model), str(tmp_path / "b"), "--out",
                            str(tmp_path / "p")], monkeypatch, capsys)
    assert code == 0, err
    preds = pd.read_csv(tmp_path / "p" / "predictions.csv")
    hours = {p.stem: len(p.read_text().splitlines()) - 1 for p in stays}
    assert preds.groupby("id").size().to_dict() == hours
    assert preds["score"].between(0, 1).all()
    code, _, err = run_cli(["validate", str(model), str(tmp_path / "b"), "--out",
                            str(tmp_path / "v")], monkeypatch, capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "v" / "validation.json").read_text())
    assert result["n"] == sum(hours.values())
