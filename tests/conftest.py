"""Shared fixtures: real data under MEDFED_DATA_DIR (skipped when absent), fast configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolated_tracking(tmp_path, monkeypatch):
    """Every test logs to its own MLflow store, never the user's."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")


@pytest.fixture
def shared_data() -> Path:
    """The real files of ../shared/data (via MEDFED_DATA_DIR); skip when not there."""
    root = os.environ.get("MEDFED_DATA_DIR")
    if not root or not Path(root, "README.md").is_file():
        pytest.skip("MEDFED_DATA_DIR does not point at the shared real data")
    return Path(root)


def small_config(**overrides):
    """A breast-cancer experiment small enough for a unit test."""
    from medfed.config import validate

    raw = {"dataset": {"name": "breast-cancer"},
           "partition": {"scheme": "iid", "sites": 3},
           "model": {"name": "logreg"},
           "train": {"batch_size": 32, "lr": 0.1},
           "rounds": 3, "seed": 1}
    for key, value in overrides.items():
        node = raw
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return validate(raw)


def run_cli(args: list[str], monkeypatch, capsys) -> tuple[int, str, str]:
    """``medfed ARGS`` in this process: (exit code, stdout, stderr)."""
    import sys

    from medfed.cli.main import main

    monkeypatch.setattr(sys, "argv", ["medfed", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err
