"""`medfed data check`: every site format `client start` and the datasets accept passes when
correct, and a broken site has each of its problems named in one pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medfed.datasets.site_folder import check_site_folder
from tests.conftest import run_cli
from tests.deploy_procs import write_heart_site
from tests.uci_files import write_uci_heart


def check(path: Path, monkeypatch, capsys, *extra: str) -> tuple[int, dict, str]:
    code, stdout, stderr = run_cli(["data", "check", str(path), "--json", *extra], monkeypatch,
                                   capsys)
    assert "Traceback" not in stderr
    return code, json.loads(stdout.strip().splitlines()[-1]), stderr


@pytest.fixture
def uci(tmp_path) -> Path:
    return write_uci_heart(tmp_path / "uci") / "heart-disease"


def test_heart_disease_site_folder_and_file_pass(uci, tmp_path, monkeypatch, capsys):
    site = tmp_path / "switzerland"
    site.mkdir()
    shutil.copy(uci / "processed.switzerland.data", site)
    for path in (site, site / "processed.switzerland.data"):
        code, result, _ = check(path, monkeypatch, capsys)
        assert code == 0 and result["kind"] == "heart-disease" and result["problems"] == []
        assert result["summary"]["patients"] == 46 and result["summary"]["n_train"] == 30
        assert any("one class" in w for w in result["warnings"])  # the Swiss skew, named
    assert check_site_folder(site, "heart-disease")["n_train"] == 30  # client start agrees


def test_heart_disease_csv_with_header_passes(tmp_path, monkeypatch, capsys):
    site = write_heart_site(tmp_path / "hospital", 80, seed=1)
    code, result, _ = check(site, monkeypatch, capsys)
    assert code == 0 and result["kind"] == "heart-disease", result


def test_broken_heart_disease_file_names_every_problem(uci, tmp_path, monkeypatch, capsys):
    site = tmp_path / "va"
    site.mkdir()
    lines = (uci / "processed.va.data").read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:13])  # line 4: a value short
    lines[9] = lines[9].replace(lines[9].split(",")[0], "sixty", 1)  # line 10: a word
    cells = lines[19].split(",")
    cells[2] = "7.0"  # line 20: chest pain type 7
    lines[19] = ",".join(cells)
    lines[29] = ",".join([*lines[29].split(",")[:13], "?"])  # line 30: no diagnosis
    (site / "processed.va.data").write_text("\n".join(lines) + "\n")
    code, result, stderr = check(site, monkeypatch, capsys)
    assert code == 2 and "4 problem(s)" in " ".join(stderr.split())
    text = "\n".join(result["problems"])
    for needle in ("line 4: 13 values, expected 14", "line 10: age is 'sixty'",
                   "line 20: cp is 7.0, outside [1, 2, 3, 4]", "line 30: num (the diagnosis)"):
        assert needle in text, text


def test_uci_folder_of_four_centres_checks_each(uci, monkeypatch, capsys):
    code, result, _ = check(uci, monkeypatch, capsys)
    assert code == 0 and set(result["summary"]) == {
        "processed.cleveland.data", "processed.hungarian.data", "processed.switzerland.data",
        "processed.va.data"}
    assert result["summary"]["processed.hungarian.data"]["patients"] == 261


def _csv_site(folder: Path, n: int = 40) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    pd.DataFrame({"patient_id": [f"p{i}" for i in range(n)], "age": rng.normal(60, 9, n),
                  "crp": rng.normal(5, 2, n), "label": rng.integers(0, 2, n)}).to_csv(
        folder / "export.csv", index=False)
    return folder


def test_csv_site_passes_and_matches_client_start(tmp_path, monkeypatch, capsys):
    site = _csv_site(tmp_path / "csv-site")
    code, result, _ = check(site, monkeypatch, capsys, "--format", "csv")
    assert code == 0 and result["kind"] == "csv" and result["summary"]["patients"] == 40
    assert any("['patient_id'] train as features" in w for w in result["warnings"])
    loaded = check_site_folder(site, "csv", {"label": "label", "drop_columns": ["patient_id"]})
    assert loaded["n_train"] == result["summary"]["n_train"]


def test_csv_text_column_is_a_category_as_the_loader_treats_it(tmp_path, monkeypatch, capsys):
    site = _csv_site(tmp_path / "csv-site")
    frame = pd.read_csv(site / "export.csv")
    frame["sex"] = ["F" if i % 2 else "M" for i in range(len(frame))]  # one-hot, not an error
    frame.to_csv(site / "export.csv", index=False)
    code, result, _ = check(site, monkeypatch, capsys)
    assert code == 0 and result["ok"], result["problems"]


def test_broken_csv_site_names_every_problem(tmp_path, monkeypatch, capsys):
    site = _csv_site(tmp_path / "csv-site")
    frame = pd.read_csv(site / "export.csv")
    frame["crp"] = frame["crp"].astype(object)
    frame.loc[4, "crp"] = "n/a (lab down)"
    frame.loc[7, "label"] = np.nan
    frame.loc[9, "patient_id"] = "p2"
    frame.to_csv(site / "export.csv", index=False)
    code, result, _ = check(site, monkeypatch, capsys)
    text = "\n".join(result["problems"])
    assert code == 2 and len(result["problems"]) == 3, text
    assert "line 6: column 'crp'" in text and "line 9: no label" in text
    assert "line 11: patient p2 repeats" in text


def _psv(path: Path, rows: list[list], header: list[str]) -> None:
    path.write_text("|".join(header) + "\n" + "\n".join(
        "|".join("NaN" if v is None else str(v) for v in row) for row in rows) + "\n")


def test_psv_folder_passes_on_real_stays(shared_data, tmp_path, monkeypatch, capsys):
    site = tmp_path / "setA"
    site.mkdir()
    for path in sorted((shared_data / "physionet2019-sample" / "training_setA").glob("*.psv"))[:30]:
        shutil.copy(path, site)
    code, result, _ = check(site, monkeypatch, capsys)
    assert code == 0 and result["kind"] == "sepsis" and result["summary"]["stays"] == 30


def test_broken_psv_folder_names_every_file(tmp_path, monkeypatch, capsys):
    from medfed.datasets.timeseries.sepsis_features import COLUMNS, LABEL

    site = tmp_path / "icu"
    site.mkdir()
    good = [[80 + h, *([None] * (len(COLUMNS) - 1)), 0] for h in range(10)]
    _psv(site / "p1.psv", good, [*COLUMNS, LABEL])
    _psv(site / "p2.psv", [row[:-1] for row in good], COLUMNS)  # no SepsisLabel
    bad_value = [list(r) for r in good]
    bad_value[3][0] = "high"
    _psv(site / "p3.psv", bad_value, [*COLUMNS, LABEL])
    bad_label = [list(r) for r in good]
    bad_label[5][-1] = 2
    _psv(site / "p4.psv", bad_label, [*COLUMNS, LABEL])
    code, result, _ = check(site, monkeypatch, capsys)
    text = "\n".join(result["problems"])
    assert code == 2 and len(result["problems"]) == 3, text
    assert "p2.psv: no 'SepsisLabel' column" in text and "p3.psv: line 5" in text
    assert "p4.psv" in text and "0 or 1" in text


def test_imaging_manifest_folder_goes_to_the_imaging_checker(tmp_path, monkeypatch, capsys):
    from medfed.datasets.imaging.demo import write_demo_sites

    site = write_demo_sites(tmp_path / "img", sites=1, fmt="nifti", dims=2, patients=6,
                            size=16)[0]
    code, result, _ = check(site, monkeypatch, capsys)
    assert code == 0 and result["kind"] == "imaging"
    manifest = pd.read_csv(site / "manifest.csv")
    manifest.loc[0, "image"] = "gone.nii.gz"
    manifest.to_csv(site / "manifest.csv", index=False)
    code, result, _ = check(site, monkeypatch, capsys)
    assert code == 2 and "gone.nii.gz" in "\n".join(result["problems"])


def test_a_folder_with_no_site_data_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_cli(["data", "check", str(tmp_path / "empty")], monkeypatch, capsys)
    assert code == 2 and "no site data found" in stderr and "Traceback" not in stderr


def test_multimodal_site_goes_to_the_multimodal_checker(tmp_path, monkeypatch, capsys):
    from medfed.datasets.multimodal.demo import write_multimodal_sites

    site = write_multimodal_sites(tmp_path / "mm", sites=1, patients=12, missing_image=0.2,
                                  clinical_only_sites=0, size=16)[0]
    code, result, _ = check(site, monkeypatch, capsys, "--clinical", "age,crp,sex:cat")
    assert code == 0 and result["kind"] == "multimodal", result
    code, result, _ = check(site, monkeypatch, capsys, "--clinical", "age,nope")
    assert code == 2 and "nope" in "\n".join(result["problems"])


def test_a_table_that_is_not_heart_disease_format_is_named(tmp_path, monkeypatch, capsys):
    site = write_heart_site(tmp_path / "hospital", 20, seed=2)
    frame = pd.read_csv(site / "data.csv").drop(columns=["thalach", "oldpeak"])
    frame.to_csv(site / "data.csv", index=False)
    code, result, _ = check(site, monkeypatch, capsys, "--format", "heart-disease")
    assert code == 2 and "header lacks ['thalach', 'oldpeak']" in result["problems"][0]
