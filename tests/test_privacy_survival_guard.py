"""DP-SGD refuses a Cox model: its loss couples patients, so per-sample clipping means nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd

from tests.conftest import run_cli


def test_dp_sgd_with_survival_is_refused(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    n = 200
    pd.DataFrame({"age": rng.normal(60, 10, n), "stage": rng.integers(1, 4, n),
                  "time": rng.exponential(500, n).round(1) + 1,
                  "event": rng.integers(0, 2, n)}).to_csv(tmp_path / "surv.csv", index=False)
    config = tmp_path / "surv.yaml"
    config.write_text(f"dataset: {{name: csv-survival, options: {{path: {tmp_path}/surv.csv}}}}\n"
                      "partition: {scheme: iid, sites: 2}\nmodel: {name: cox}\nrounds: 2\n"
                      "privacy: {mode: dp-sgd, epsilon: 3.0}\n")
    out = tmp_path / "out"
    code, _, stderr = run_cli(["simulate", str(config), "--no-track", "--out", str(out)],
                              monkeypatch, capsys)
    assert code == 2 and "survival task" in stderr and "Traceback" not in stderr
    assert not out.exists()
