"""The patient (or ICU stay) is the DP-SGD unit: sampled and clipped whole, its sensitivity
bounded by the clipping norm, and report.json's ``privacy.level`` names it truthfully."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medfed.config import validate
from medfed.errors import MedFedError
from medfed.privacy.units import ROW_LEVEL, resolve_unit
from tests.conftest import run_cli

CLIP = 0.05  # small: every row's and every unit's gradient is clipped


def _stays_folder(tmp_path: Path) -> tuple[Path, int | None]:
    """Real PhysioNet stays when MEDFED_DATA_DIR has them (first k per hospital), else
    generated stays (sepsis_demo: the real files' prevalence, missingness and lengths)."""
    real = Path(os.environ.get("MEDFED_DATA_DIR", "/nonexistent")) / "physionet2019-sample"
    if (real / "training_setA").is_dir() and (real / "training_setB").is_dir():
        return real, 25
    from medfed.datasets.timeseries.sepsis_demo import write_demo

    write_demo(tmp_path / "sepsis", sites=2, patients=25, seed=3)
    return tmp_path / "sepsis", None


def _clipped_sum(x, y, units, task, model) -> torch.Tensor:
    """The clipped gradient sum of one DP-SGD step over ALL units (rate 1, no noise): with
    SGD at lr 1 the step is -sum / expected batch, so sum = (w0 - w1) * batch."""
    from medfed.config import TrainConfig
    from medfed.privacy.dp import train_dp
    from medfed.privacy.units import unit_index

    w0 = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    n = unit_index(units, len(y))[1]
    cfg = TrainConfig(batch_size=10 * len(y), optimizer="sgd", lr=1.0, momentum=0.0,
                      device="cpu")
    result = train_dp(model, x, y, task, cfg, noise_multiplier=0.0, max_grad_norm=CLIP,
                      epochs=1, seed=0, units=units, mode="hooks")
    assert result.history == [(0.0, 1.0, 1)]  # every unit drawn: the sum is deterministic
    w1 = torch.cat([p.detach().flatten() for p in model.parameters()])
    return (w0 - w1) * n


def test_one_patients_rows_move_the_clipped_sum_by_at_most_the_clip(tmp_path):
    """Add/remove one stay (many hourly rows): per-unit clipping bounds the change by the
    clipping norm; clipping per row would let that stay move it several times as far."""
    from medfed.datasets.timeseries.sepsis import load
    from medfed.models.clinical import logreg
    from medfed.tasks import get_task

    folder, max_stays = _stays_folder(tmp_path)
    data = load(str(folder), max_stays=max_stays, seed=0)
    x, y, stays = data.x[:1500], data.y[:1500], data.units[:1500]
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    lengths = np.bincount(stays)
    gone = int(np.argmax(lengths))  # the longest stay
    keep = stays != gone
    assert lengths[gone] >= 8
    task = get_task("timeseries")
    torch.manual_seed(0)
    start = logreg(x.shape[1], 1).state_dict()

    def summed(rows, units):
        model = logreg(x.shape[1], 1)
        model.load_state_dict(start)
        return _clipped_sum(x[rows], y[rows], units, task, model)

    every = np.ones(len(y), bool)
    by_unit = (summed(every, stays) - summed(keep, stays[keep])).norm()
    by_row = (summed(every, None) - summed(keep, None)).norm()
    assert 0 < by_unit <= CLIP * 1.001
    assert by_row > 3 * CLIP  # the row-level sensitivity of that patient: the test means it


def test_unit_step_samples_units_at_batch_over_units():
    """Poisson sampling by unit: rate 1 / ceil(units / batch), that many steps an epoch."""
    from medfed.config import TrainConfig
    from medfed.models.clinical import logreg
    from medfed.privacy.dp import UNIT_MODE, train_dp
    from medfed.tasks import get_task

    rng = np.random.default_rng(0)
    units = np.repeat(np.arange(50), rng.integers(1, 6, 50))
    x = rng.normal(size=(len(units), 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    result = train_dp(logreg(4, 1), x, y, get_task("binary"), TrainConfig(batch_size=8),
                      noise_multiplier=1.0, max_grad_norm=1.0, epochs=2, seed=1, units=units)
    assert result.grad_sample_mode == UNIT_MODE
    assert result.history == [(1.0, 1 / math.ceil(50 / 8), 2 * math.ceil(50 / 8))]


def _simulate(raw: dict, out: Path, monkeypatch, capsys, *sets: str) -> tuple[int, str, dict]:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(json.dumps(raw))
    code, _, err = run_cli(["simulate", str(path), "--out", str(out), "--no-track",
                            *[a for s in sets for a in ("--set", s)]], monkeypatch, capsys)
    report = json.loads((out / "report.json").read_text()) if code == 0 else {}
    return code, err, report


def _base(dataset: dict, model: dict, partition: dict | None = None, **extra) -> dict:
    return {"dataset": dataset, "model": model,
            "partition": partition or {"scheme": "natural"},
            "strategy": {"name": "fedavg"}, "rounds": 1, "seed": 0,
            "train": {"batch_size": 4, "local_epochs": 1, "optimizer": "sgd", "lr": 0.01},
            "privacy": {"mode": "dp-sgd", "epsilon": 20.0, "delta": 1e-3},
            "baselines": {"centralized": False, "local_only": False}, **extra}


def _check_trained_per(report: dict, out: Path, unit: str, units_at: dict[str, int]) -> None:
    """The report names ``unit``; each site sampled its units at batch / units; the ledgers
    recorded the unit."""
    privacy = report["privacy"]
    assert privacy["unit"] == unit and privacy["level"] == unit
    assert "each" in privacy["guarantee"] and unit in privacy["guarantee"]
    for site, n_units in units_at.items():
        assert privacy["per_site"][site]["sample_rate"] == pytest.approx(
            1 / math.ceil(n_units / 4))
        spends = json.loads((out / "privacy" / f"{site}.json").read_text())["spends"]
        assert {s["unit"] for s in spends if s["run_id"] == privacy["run_id"]} == {unit}
    card = json.loads((out / "model" / "model_card.json").read_text())
    assert card["privacy"]["unit"] == unit and card["privacy"]["level"] == unit


def _train_units(cfg_raw: dict) -> dict[str, int]:
    from medfed.datasets.sites import simulated_federation

    sites, _ = simulated_federation(validate(cfg_raw).to_json())
    counts = {s.name: len(np.unique(s.units_train.astype(str))) for s in sites}
    assert all(counts[s.name] < s.n_train for s in sites)  # several rows per unit
    return counts


def test_sepsis_trains_per_stay_end_to_end(tmp_path, monkeypatch, capsys):
    folder, max_stays = _stays_folder(tmp_path)
    options = {"path": str(folder), "max_stays": max_stays or 25, "features": "basic"}
    raw = _base({"name": "sepsis", "options": options}, {"name": "logreg"})
    code, err, report = _simulate(raw, tmp_path / "sepsis-run", monkeypatch, capsys)
    assert code == 0, err
    _check_trained_per(report, tmp_path / "sepsis-run", "stay", _train_units(raw))


def _image_sites(tmp_path: Path, task: str, dims: int) -> list[str]:
    from medfed.datasets.imaging.demo import write_demo_sites

    folders = write_demo_sites(tmp_path / f"{task}{dims}", sites=2, task=task, fmt="nifti",
                               dims=dims, patients=12, size=16, seed=1)
    if dims == 2:  # several images per patient: rows 2k and 2k+1 are one patient's
        for folder in folders:
            manifest = pd.read_csv(folder / "manifest.csv")
            manifest["patient_id"] = [f"P{i // 2}" for i in range(len(manifest))]
            manifest.drop(columns="split").to_csv(folder / "manifest.csv", index=False)
    return [str(f) for f in folders]


@pytest.mark.parametrize("task, dims", [("segmentation", 3), ("classification", 2)])
def test_slices_and_multi_image_sites_train_per_patient(tmp_path, monkeypatch, capsys, task,
                                                        dims):
    """A volume's slices (as_slices) and a patient's several images are one unit."""
    options = {"roots": _image_sites(tmp_path, task, dims), "task": task,
               "spatial_size": [16, 16], "as_slices": dims == 3,
               "cache_dir": str(tmp_path / "cache")}
    model = {"name": "unet", "channels": [4, 8], "strides": [2]} if task == "segmentation" \
        else {"name": "small_cnn", "channels": [4, 8]}
    raw = _base({"name": "site-folders", "options": options}, model,
                {"scheme": "natural", "min_site_size": 4})
    code, err, report = _simulate(raw, tmp_path / "run", monkeypatch, capsys)
    assert code == 0, err
    _check_trained_per(report, tmp_path / "run", "patient", _train_units(raw))


def test_unknown_unit_refuses_dp_sgd_unless_row(shared_data, tmp_path, monkeypatch, capsys):
    """MedMNIST (real BreastMNIST) names no patients: one error line, nothing written; with
    privacy.unit=row it trains and the report says patients are NOT protected as patients."""
    raw = _base({"name": "medmnist", "options": {"name": "breastmnist"}},
                {"name": "small_cnn", "channels": [4, 8]}, {"scheme": "iid", "sites": 2})
    out = tmp_path / "mm"
    code, err, _ = _simulate(raw, out, monkeypatch, capsys)
    assert code == 2 and err.startswith("error: ") and "privacy.unit=row" in err
    assert "Traceback" not in err and not out.exists()
    code, err, report = _simulate(raw, out, monkeypatch, capsys, "privacy.unit=row",
                                  "train.batch_size=64")
    assert code == 0, err
    assert report["privacy"]["level"] == ROW_LEVEL and report["privacy"]["unit"] == "row"
    card = json.loads((out / "model" / "model_card.json").read_text())
    assert card["privacy"]["level"] == ROW_LEVEL


def test_binary_table_is_per_patient_and_multiclass_csv_groups_patient_rows(
        tmp_path, monkeypatch, capsys):
    """binary: breast-cancer, one row per patient (Opacus' own path, level patient);
    multiclass: a CSV whose patient_id repeats is sampled and clipped per patient."""
    code, err, report = _simulate(_base({"name": "breast-cancer"}, {"name": "logreg"},
                                        {"scheme": "iid", "sites": 2}),
                                  tmp_path / "bc", monkeypatch, capsys)
    assert code == 0, err
    assert report["privacy"]["level"] == "patient"
    assert {e["grad_sample_mode"] for e in report["privacy"]["per_site"].values()} == {"hooks"}
    rng = np.random.default_rng(0)
    rows = 120
    frame = pd.DataFrame({"patient_id": [f"P{i // 3}" for i in range(rows)],
                          "a": rng.normal(size=rows), "b": rng.normal(size=rows),
                          "label": rng.choice(["x", "y", "z"], rows)})
    frame.to_csv(tmp_path / "visits.csv", index=False)
    raw = _base({"name": "csv", "options": {"path": str(tmp_path / "visits.csv"),
                                            "drop_columns": ["patient_id"]}},
                {"name": "logreg"}, {"scheme": "iid", "sites": 2})
    code, err, report = _simulate(raw, tmp_path / "csv", monkeypatch, capsys)
    assert code == 0, err
    _check_trained_per(report, tmp_path / "csv", "patient", _train_units(raw))


def test_survival_never_claims_a_dp_sgd_level(tmp_path, monkeypatch, capsys):
    """survival: the Cox likelihood couples patients, DP-SGD is refused (no level claimed)."""
    frame = pd.DataFrame({"time": np.arange(1, 41), "event": [1, 0] * 20,
                          "age": np.linspace(40, 80, 40)})
    frame.to_csv(tmp_path / "s.csv", index=False)
    raw = _base({"name": "csv-survival", "options": {"path": str(tmp_path / "s.csv")}},
                {"name": "cox"}, {"scheme": "iid", "sites": 2})
    code, err, _ = _simulate(raw, tmp_path / "surv", monkeypatch, capsys)
    assert code == 2 and "survival" in err and not (tmp_path / "surv").exists()


def test_multimodal_levels(shared_data, tmp_path):
    """multimodal-sites (one row per patient_id) protect patients; HAM10000 rows are lesions
    with no patient id: refused unless privacy.unit=row, then stated as row."""
    from medfed.datasets.multimodal.demo import write_multimodal_sites
    from medfed.datasets.sites import simulated_federation
    from medfed.privacy.simulation import privacy_unit

    roots = write_multimodal_sites(tmp_path / "mm", sites=2, patients=20, clinical_only_sites=0,
                                   size=16)
    demo = validate(_base({"name": "multimodal-sites", "options": {
        "roots": [str(r) for r in roots], "cache_dir": str(tmp_path / "c"),
        "spatial_size": [16, 16],
        "clinical": {"numeric": ["age", "crp"], "categorical": ["sex", "smoker"]}}},
        {"name": "logreg"}))
    sites, _ = simulated_federation(demo.to_json())
    assert privacy_unit(demo, sites).level == "patient"
    ham = validate(_base({"name": "ham10000", "options": {
        "path": str(shared_data / "ham10000-sample"), "cache_dir": str(tmp_path / "c")}},
        {"name": "logreg"}))
    sites, _ = simulated_federation(ham.to_json())
    with pytest.raises(MedFedError, match="privacy.unit=row"):
        privacy_unit(ham, sites)
    row = ham.model_copy(update={"privacy": ham.privacy.model_copy(update={"unit": "row"})})
    assert privacy_unit(row, sites).level == ROW_LEVEL


@pytest.mark.parametrize("requested, data, expected", [
    ("auto", "patient", "patient"), ("auto", "stay", "stay"), ("patient", "patient", "patient"),
    ("row", None, ROW_LEVEL), ("row", "stay", ROW_LEVEL)])
def test_resolve_unit(requested, data, expected):
    assert resolve_unit(requested, data).level == expected


@pytest.mark.parametrize("requested, data", [("auto", None), ("patient", "stay"),
                                             ("stay", "patient"), ("patient", None)])
def test_resolve_unit_refuses_with_one_line(requested, data):
    with pytest.raises(MedFedError) as info:
        resolve_unit(requested, data, where="site 'a'")
    assert "\n" not in str(info.value) and "privacy.unit" in str(info.value)


def test_report_and_privacy_report_name_the_recorded_unit(tmp_path, monkeypatch, capsys):
    """A run whose spends mix units (e.g. an arm that trained per row) is stated as row;
    `medfed privacy report` shows each run's unit and what it guarantees."""
    from medfed.privacy.ledger import Ledger, Spend
    from medfed.privacy.report import dp_sgd_section
    from medfed.privacy.units import PrivacyUnit
    from tests.conftest import small_config

    cfg = small_config(privacy__mode="dp-sgd")
    Ledger.open(tmp_path, "a").record(Spend("run-1", 1, 4, 0.25, 1.0, 1.0, 0.5, 1e-5, "rdp",
                                            unit="stay"))
    stays = dp_sgd_section(cfg, ["a"], tmp_path, "run-1", [], {}, unit=PrivacyUnit("stay"))
    assert stays["level"] == "stay"
    Ledger.open(tmp_path, "a").record(Spend("run-1/personal", 1, 4, 0.25, 1.0, 1.0, 0.6, 1e-5,
                                            "rdp"))
    mixed = dp_sgd_section(cfg, ["a"], tmp_path, "run-1", [], {}, unit=PrivacyUnit("stay"))
    assert mixed["level"] == ROW_LEVEL and mixed["per_site"]["a"]["units"] == ["row", "stay"]
    code, out, _ = run_cli(["privacy", "report", "--ledger", str(tmp_path)], monkeypatch,
                           capsys)
    assert code == 0 and "stay" in out and "all hours of a stay" in " ".join(out.split())


def test_a_hospital_folder_carries_its_patients(tmp_path):
    """Real-site loading (`load_site`, as `medfed client start` reads a folder) carries the
    units too: a CSV export with a repeated patient_id is grouped per patient."""
    from medfed.datasets.site_folder import load_site_folder

    rng = np.random.default_rng(1)
    (tmp_path / "site").mkdir()
    pd.DataFrame({"patient_id": [f"P{i // 2}" for i in range(40)], "a": rng.normal(size=40),
                  "label": [0, 1] * 20}).to_csv(tmp_path / "site" / "export.csv", index=False)
    site, _ = load_site_folder(tmp_path / "site", "csv", {"drop_columns": ["patient_id"]})
    assert site.unit == "patient" and len(site.units_train) == site.n_train
    assert len(set(site.units_train)) < site.n_train


def test_a_patients_rows_never_train_and_test_at_once(tmp_path):
    """The split keeps each patient whole (real site and simulated sites alike): a patient
    with several rows is all train or all test, so test metrics are on unseen patients."""
    from medfed.datasets.site_folder import load_site_folder
    from medfed.datasets.splits import split_rows, split_units

    rng = np.random.default_rng(3)
    units = np.repeat([f"P{i}" for i in range(30)], rng.integers(1, 5, 30))
    y = rng.integers(0, 2, len(units))
    rows = np.arange(len(units))
    train, test = split_units(rows, y, units, 0.3, seed=0)
    assert not set(units[train]) & set(units[test])
    assert sorted([*train, *test]) == list(rows)
    by_row = split_rows(rows, y, 0.3, 0)  # what the split was: patients on both sides
    assert set(units[by_row[0]]) & set(units[by_row[1]])

    (tmp_path / "site").mkdir()
    frame = pd.DataFrame({"patient_id": units, "a": rng.normal(size=len(units)), "label": y})
    frame.to_csv(tmp_path / "site" / "export.csv", index=False)
    site, _ = load_site_folder(tmp_path / "site", "csv", {"drop_columns": ["patient_id"]})
    train_ids = set(site.units_train)
    assert len(train_ids) < 30 and site.n_train + site.n_test == len(units)
    test_rows = len(units) - sum(np.isin(units, list(train_ids)))
    assert site.n_test == test_rows  # every row of a test patient is in test, none in train
