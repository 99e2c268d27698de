"""Generated data and tiny trained models for the predict / validate / explain tests.

The tables mimic what hospitals export: skewed site sizes, a minority class, a categorical
column and a few percent missing values. Models are trained with `medfed simulate` (1-2
rounds) in this process.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

SITE_SIZES = {"h1": 0.5, "h2": 0.3, "h3": 0.2}


def clinical_frame(n: int, seed: int, kind: str) -> pd.DataFrame:
    """Rows with id, x1, x2 (5 % missing), cat (a/b/c), site and the label columns of
    ``kind`` (binary, multiclass or survival)."""
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.lognormal(size=n)
    cat = rng.choice(["a", "b", "c"], size=n, p=[0.5, 0.3, 0.2])
    risk = 1.5 * x1 - 0.8 * np.log(x2) + (cat == "a")
    frame = pd.DataFrame({"id": [f"p{seed}-{i}" for i in range(n)], "x1": x1, "x2": x2,
                          "cat": cat,
                          "site": rng.choice(list(SITE_SIZES), size=n,
                                             p=list(SITE_SIZES.values()))})
    if kind == "binary":
        frame["label"] = (rng.random(n) < 1 / (1 + np.exp(1.0 - risk))).astype(int)  # ~30 % pos
    elif kind == "multiclass":
        frame["label"] = np.select([risk < -0.5, risk < 1.0], ["mild", "moderate"], "severe")
    else:
        frame["time"] = np.round(rng.exponential(365 * np.exp(-0.7 * risk)) + 1, 1)
        frame["event"] = (rng.random(n) < 0.6).astype(int)
    frame.loc[rng.random(n) < 0.05, "x2"] = np.nan
    return frame


def write_yaml(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def table_config(folder: Path, kind: str, n: int = 300) -> Path:
    """A training CSV and its experiment YAML (natural sites, 2 rounds)."""
    clinical_frame(n, 0, kind).to_csv(folder / "train.csv", index=False)
    options = {"path": str(folder / "train.csv"), "site_column": "site",
               "categorical": ["cat"], "drop_columns": ["id"]}
    if kind == "survival":
        dataset, model = "csv-survival", {"name": "cox"}
    else:
        dataset, model = "csv", {"name": "mlp", "hidden": [8]}
        options["label"] = "label"
    return write_yaml(folder / f"{kind}.yaml", {
        "name": f"{kind}-test", "dataset": {"name": dataset, "options": options},
        "partition": {"scheme": "natural"}, "model": model,
        "strategy": {"name": "fedavg", "min_sites": 3},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.01}, "rounds": 2,
        "baselines": {"local_only": False, "centralized": False}})


def simulate(config: Path, out: Path, *extra: str) -> Path:
    """`medfed simulate CONFIG --out OUT` in this process; returns OUT/model."""
    from medfed.cli.main import main

    main(["simulate", str(config), "--out", str(out), "--no-track", *extra])
    assert (out / "model" / "signature.json").is_file()
    return out / "model"


def card(model: Path) -> dict:
    return json.loads((model / "model_card.json").read_text())


def tamper(model: Path, copy_to: Path) -> Path:
    """A copy of the model folder with one weight byte flipped."""
    import shutil

    shutil.copytree(model, copy_to)
    weights = bytearray((copy_to / "model.safetensors").read_bytes())
    weights[-1] ^= 0x01
    (copy_to / "model.safetensors").write_bytes(bytes(weights))
    return copy_to
