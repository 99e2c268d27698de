"""`medfed stats`: exact pooled moments, small cells suppressed at the site (in the reply
message itself), noise recorded in the privacy ledger with refusal past the budget, and a site
with shifted image intensities flagged. In-process engine, small data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from medfed.cli.main import app
from medfed.config import validate
from medfed.datasets.clinical.heart_disease import read_centre
from medfed.datasets.sites import simulated_sites_and_schema
from medfed.datasets.stats_view import simulated_views
from medfed.errors import MedFedError
from medfed.federation import messages
from medfed.privacy.ledger import Ledger
from medfed.simulation.stats import run_stats_simulation
from tests.uci_files import FILES, write_uci_heart

HD = {"name": "hd-stats", "dataset": {"name": "heart-disease"},
      "partition": {"scheme": "natural"}, "model": {"name": "logreg"}}


@pytest.fixture
def heart(tmp_path, monkeypatch) -> Path:
    """UCI files of four centres; switzerland has only 5 cholesterol values left."""
    write_uci_heart(tmp_path / "data", seed=3)
    swiss = tmp_path / "data" / "heart-disease" / FILES["switzerland"]
    rows = [line.split(",") for line in swiss.read_text().splitlines()]
    for i, row in enumerate(rows):
        row[4] = row[4] if i < 5 and row[4] != "?" else "?"
    swiss.write_text("\n".join(",".join(r) for r in rows) + "\n")
    monkeypatch.setenv("MEDFED_DATA_DIR", str(tmp_path / "data"))
    simulated_views.cache_clear()  # views are cached per experiment, not per data folder
    simulated_sites_and_schema.cache_clear()
    return tmp_path / "data" / "heart-disease"


def raw_frames(folder: Path) -> dict[str, pd.DataFrame]:
    return {centre: read_centre(folder / name) for centre, name in FILES.items()}


def recorded_replies(monkeypatch) -> list[dict]:
    """Every statistics reply exactly as the site put it in the Flower message."""
    from medfed.simulation import engine

    replies: list[dict] = []
    deliver = engine.InProcessGrid._deliver

    def recording(self, message):
        reply = deliver(self, message)
        if not reply.has_error() and messages.STATS in reply.content:
            replies.append(json.loads(str(reply.content[messages.STATS][messages.STATS_REPLY])))
        return reply

    monkeypatch.setattr(engine.InProcessGrid, "_deliver", recording)
    return replies


def test_pooled_moments_and_counts_equal_the_pooled_rows(heart):
    result = run_stats_simulation(validate(dict(HD)))
    frames = raw_frames(heart)
    everyone = pd.concat(frames.values(), ignore_index=True)
    assert result["pooled"]["rows"] == {"count": len(everyone), "suppressed_at": []}
    for name in ("age", "trestbps", "thalach", "oldpeak"):
        pooled = result["pooled"]["variables"][name]
        values = everyone[name].dropna()
        assert pooled["n"] == len(values)
        assert pooled["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert pooled["std"] == pytest.approx(values.std(ddof=1), rel=1e-9)
        assert sum(pooled["hist"]) <= len(values)
        for site, frame in frames.items():
            reply = result["sites"][site]["variables"][name]
            assert reply["n"] == frame[name].notna().sum()
            assert reply["sum"] == pytest.approx(frame[name].sum(), rel=1e-12)
    # chol: switzerland holds 5 values (< min_count 10): pooled over the other three only
    chol = result["pooled"]["variables"]["chol"]
    others = pd.concat([f for s, f in frames.items() if s != "switzerland"])["chol"].dropna()
    assert chol["sites_not_summarised"] == ["switzerland"]
    assert chol["n"] == len(others) and chol["mean"] == pytest.approx(others.mean(), rel=1e-12)
    labels = result["pooled"]["labels"]
    for label, sick in (("disease", True), ("no disease", False)):
        released = [s for s, f in frames.items()
                    if isinstance(result["sites"][s]["labels"][label], int)]
        expected = sum(int(((f["num"] > 0) == sick).sum()) for s, f in frames.items()
                       if s in released)
        assert labels[label]["count"] == expected
        assert sorted(labels[label]["suppressed_at"]) == sorted(set(frames) - set(released))


def test_small_cells_are_suppressed_in_the_sites_reply(heart, monkeypatch):
    replies = recorded_replies(monkeypatch)
    run_stats_simulation(validate(dict(HD)))
    summaries = {r["site"]: r for r in replies if "sum" in json.dumps(r)}
    frames = raw_frames(heart)
    swiss = summaries["switzerland"]["variables"]["chol"]
    # no sum, no histogram, and no missing count (rows minus it would give the 5 away)
    assert swiss == {"kind": "numeric", "n": "<10", "missing": "suppressed", "summarised": False}
    checked = 0
    for site, frame in frames.items():
        for name in ("cp", "restecg", "slope", "ca", "thal", "fbs", "exang", "sex"):
            entry = summaries[site]["variables"][name]
            assert entry["kind"] == "categorical", (site, name, entry)
            released = entry["counts"] if entry["summarised"] else {}
            for level, count in frame[name].value_counts().items():
                cell = released.get(str(int(level)) if float(level).is_integer() else str(level))
                if 0 < count < 10:
                    assert cell is None or cell == "<10", (site, name, level, cell)
                    checked += 1
                elif cell is not None and cell not in ("<10", "suppressed"):
                    assert cell == count, (site, name, level, released)
    assert checked > 0  # the data has small cells, and none left a site
    for reply in summaries.values():  # no released count below 10
        for entry in reply["variables"].values():
            for value in [*entry.get("hist", []), *entry.get("counts", {}).values()]:
                assert not (isinstance(value, int) and 0 < value < 10)


def test_noise_is_a_ledger_spend_and_a_repeat_past_the_budget_is_refused(heart, tmp_path):
    config = {**HD, "privacy": {"epsilon": 1.2, "delta": 1e-5,
                                "ledger_dir": str(tmp_path / "ledgers")},
              "stats": {"privacy": {"epsilon": 1.0, "delta": 1e-5,
                                    "bounds": {"age": [20, 90], "thalach": [60, 210]}}}}
    cfg = validate(config)
    result = run_stats_simulation(cfg)
    assert set(result["privacy"]) == set(FILES)
    for site in FILES:
        spends = Ledger.open(tmp_path / "ledgers", site).spends
        assert len(spends) == 1 and spends[0].run_id.startswith("stats/")
        assert spends[0].steps == result["privacy"][site]["releases"]
        assert 0.9 < spends[0].epsilon_after <= 1.0 + 1e-6
    everyone = pd.concat(raw_frames(heart).values())
    age = result["pooled"]["variables"]["age"]
    sigma = result["privacy"]["va"]["noise_multiplier"]
    truth, n = everyone["age"].mean(), everyone["age"].notna().sum()
    spread = 2 * sigma * (90 + truth) / n  # 4 sites: sd of the noised sum and count, / n
    assert abs(age["mean"] - truth) < 5 * spread  # noised but centred on the truth
    assert age["mean"] != pytest.approx(everyone["age"].mean(), abs=1e-9)
    assert "trestbps" not in result["pooled"]["variables"]  # no bounds declared: not released
    with pytest.raises(MedFedError, match="budget exhausted"):
        run_stats_simulation(cfg)
    assert all(len(Ledger.open(tmp_path / "ledgers", s).spends) == 1 for s in FILES)


def shift_site(site: Path, offset: float) -> None:
    for path in site.rglob("image.nii.gz"):
        image = nib.load(path)
        data = np.asarray(image.dataobj).astype(np.float32) + offset
        nib.save(nib.Nifti1Image(data.astype(np.int16), image.affine, image.header), path)


def test_site_with_shifted_intensities_is_flagged(tmp_path):
    from medfed.datasets.imaging.demo import write_demo_sites

    sites = write_demo_sites(tmp_path / "seg", 3, "segmentation", "nifti", 3, patients=12,
                             size=16)
    shift_site(sites[2], 120.0)
    config = {"name": "seg-stats", "dataset": {"name": "site-folders", "options": {
        "roots": [str(s) for s in sites], "task": "segmentation", "spatial_size": [16, 16, 8]}},
        "partition": {"scheme": "natural", "sites": 3}, "model": {"name": "unet"}}
    path = tmp_path / "seg.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    done = CliRunner().invoke(app, ["stats", str(path), "--out", str(out)])
    assert done.exit_code == 0, done.output + repr(done.exception)
    result = json.loads((out / "stats.json").read_text())
    flagged = {(f["site"], f["variable"]) for f in result["flags"]}
    assert ("site-3", "image intensity") in flagged
    assert not {s for s, v in flagged if v == "image intensity"} - {"site-3"}
    assert "warning — harmonisation" in (out / "stats.md").read_text()
    assert {"stats.json", "stats.md", "histograms.png", "missingness.png"} <= {
        p.name for p in out.iterdir()}
    images = result["pooled"]["images"]
    assert images["n"]["count"] == 36 and images["shape"]["16x16x8"]["count"] == 36


@pytest.mark.skipif(not (Path(os.environ.get("MEDFED_DATA_DIR", "/nonexistent")) /
                         "tcga-brca" / "brca.csv").is_file(), reason="TCGA-BRCA not present")
def test_tcga_brca_kaplan_meier_per_site(tmp_path):
    out = tmp_path / "tcga"
    done = CliRunner().invoke(app, ["stats", "configs/tcga-brca.yaml", "--out", str(out)])
    assert done.exit_code == 0, done.output + repr(done.exception)
    result = json.loads((out / "stats.json").read_text())
    curves = result["pooled"]["survival"]["km_per_site"]
    assert len(curves) == 6 and (out / "km.png").is_file()
    for curve in curves.values():
        values = [p["survival"] for p in curve]
        assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)
    assert sum(len(c) for c in curves.values()) >= 6
    frame = pd.read_csv(Path(os.environ["MEDFED_DATA_DIR"]) / "tcga-brca" / "brca.csv")
    age = result["pooled"]["variables"]["age_at_index"]
    split = pd.read_csv(Path(os.environ["MEDFED_DATA_DIR"]) / "tcga-brca" /
                        "train_test_split.csv")
    kept = frame[frame["pid"].isin(split["pid"])]["age_at_index"]
    assert age["n"] == len(kept) and age["mean"] == pytest.approx(kept.mean(), rel=1e-6)


def test_simulate_report_header_warns_of_a_shifted_site(heart):
    from medfed.reports.report import markdown
    from medfed.simulation.runner import run_simulation

    va = heart / FILES["va"]
    rows = [line.split(",") for line in va.read_text().splitlines()]
    for row in rows:  # thalach recorded 40 beats higher at one hospital
        row[7] = row[7] if row[7] == "?" else f"{float(row[7]) + 40:.1f}"
    va.write_text("\n".join(",".join(r) for r in rows) + "\n")
    cfg = validate({**HD, "rounds": 1, "baselines": {"centralized": False, "local_only": False},
                    "dataset": {"name": "heart-disease",  # switzerland: too few complete rows
                                "options": {"centres": ["cleveland", "hungarian", "va"]}}})
    report = run_simulation(cfg).report
    flags = report["harmonisation"]["flags"]
    assert [(f["site"], f["variable"]) for f in flags] == [("va", "thalach")]
    header = markdown(report).split("## ")[0]
    assert "warning — harmonisation" in header and "va on thalach" in header


def test_bad_bins_are_one_line_and_nothing_is_written(heart, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({**HD, "stats": {"edges": {"age": [50, 40]}}}))
    out = tmp_path / "never"
    done = CliRunner().invoke(app, ["stats", str(path), "--out", str(out)])
    assert done.exit_code != 0 and isinstance(done.exception, MedFedError)
    assert "stats.edges.age" in str(done.exception) and not out.exists()


def test_cells_count_individuals_not_rows():
    """40 hours of 2 ICU stays in one bin: below min_count individuals, suppressed."""
    from medfed.datasets.stats_view import SiteView
    from medfed.privacy.site_stats import answer_summary

    hr = np.r_[np.full(40, 200.0), np.full(20, 80.0)]
    stays = np.r_[np.repeat([1, 2], 20), np.arange(3, 23)]
    view = SiteView("icu", "stay-hours", pd.DataFrame({"HR": hr}), "raw", units=stays)
    reply = answer_summary(view, {"numeric": {"HR": [0.0, 100.0, 300.0]}}, k=10)
    assert reply["individuals"] == 22 and reply["rows"] == 60
    assert reply["variables"]["HR"]["hist"] == [20, "<10"]


SEPSIS = Path(os.environ.get("MEDFED_DATA_DIR", "/nonexistent")) / "physionet2019-sample"


@pytest.mark.skipif(not SEPSIS.is_dir(), reason="PhysioNet 2019 sample not present")
def test_physionet_sample_missingness_per_hospital():
    cfg = validate({"dataset": {"name": "sepsis", "options": {"path": str(SEPSIS),
                                                               "max_stays": 60}},
                    "partition": {"scheme": "natural"}})
    result = run_stats_simulation(cfg)
    a, b = result["sites"]["training_setA"], result["sites"]["training_setB"]
    assert a["individuals"] == b["individuals"] == 60 and a["unit"] == "stay-hours"
    # system A never records EtCO2 and B's first 60 stays in fewer than 10 stays: no site
    # released a range, so no site was asked for it
    assert "EtCO2" in result["query"]["not_shared"] and "EtCO2" not in b["variables"]
    hr = result["pooled"]["variables"]["HR"]
    assert hr["sites_summarised"] == ["training_setA", "training_setB"]
    assert 60 < hr["mean"] < 110 and hr["missing"]["count"] > 0
