"""Survival datasets: FLamby's Fed-TCGA-BRCA (real files) and a hospital's own survival CSV."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from medfed.datasets.sites import build_sites
from medfed.errors import MedFedError


def test_tcga_brca_natural_six_regions(shared_data):
    from medfed.datasets.clinical.tcga_brca import load

    data = load(str(shared_data / "tcga-brca"))
    assert data.x.shape == (1088, 39) and data.y.shape == (1088, 2)
    assert set(np.unique(data.y[:, 1])) == {0.0, 1.0}
    sites = build_sites(data, "natural", 6)
    assert [s.name for s in sites] == [f"region-{k}" for k in range(6)]
    assert [s.n_train for s in sites] == [248, 156, 164, 129, 129, 40]  # FLamby's split
    assert [s.n_test for s in sites] == [63, 40, 42, 33, 33, 11]


def _write(path, rows):
    path.write_text("time,event,age,site\n" + "\n".join(rows) + "\n")
    return path


def test_csv_survival_loads_and_partitions(tmp_path):
    from medfed.datasets.clinical.csv_survival import load

    rng = np.random.default_rng(0)
    rows = [f"{rng.uniform(1, 100):.1f},{int(rng.random() < 0.4)},{rng.normal(60, 9):.1f},"
            f"{'AB'[i % 2]}" for i in range(80)]
    data = load(str(_write(tmp_path / "s.csv", rows)), time="time", event="event",
                site_column="site")
    assert data.task == "survival" and data.y.shape == (80, 2) and data.x.shape == (80, 1)
    sites = build_sites(data, "dirichlet", 2, alpha=1.0)  # label skew on the event flag
    assert sum(s.n_train + s.n_test for s in sites) == 80


@pytest.mark.parametrize("row, message", [("-3,1,50,A", "negative survival time"),
                                          ("3,2,50,A", "event values must be 0")])
def test_csv_survival_bad_values_one_line(tmp_path, row, message):
    from medfed.datasets.clinical.csv_survival import load

    path = _write(tmp_path / "bad.csv", ["5,1,60,A", "7,0,61,B", row])
    with pytest.raises(MedFedError, match=message) as info:
        load(str(path), time="time", event="event")
    assert "bad.csv" in str(info.value) and "\n" not in str(info.value)


def test_cli_bad_survival_csv_exits_2(tmp_path):
    path = _write(tmp_path / "bad.csv", ["5,1,60,A", "7,0,61,B", "-1,1,62,A"])
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset:\n  name: csv-survival\n  options:\n    path: {path}\n"
                      "    time: time\n    event: event\nmodel:\n  name: cox\n")
    done = subprocess.run([sys.executable, "-m", "medfed.cli", "simulate", str(config),
                           "--out", str(tmp_path / "out"), "--no-track"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "negative survival time" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
