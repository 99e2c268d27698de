"""`medfed ui` in a real browser: a benchmark's runs listed on MLflow's experiment page.

Needs full mlflow (`pip install -e '.[ui]'`) and Chromium (`apt-get install -y chromium`);
skips cleanly without them. The server and the browser are stopped by their process ids.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from medfed.errors import MedFedError
from tests.conftest import run_cli
from tests.deploy_procs import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BENCHMARK = {"name": "ui-bench", "dataset": {"name": "breast-cancer"},
             "partition": {"scheme": "iid", "sites": 3}, "model": {"name": "logreg"},
             "rounds": 1, "baselines": {"centralized": False},
             "benchmark": {"grid": {"strategy.name": ["fedavg"]}, "seeds": 2}}


def _ui_installed() -> bool:
    from medfed.cli.ui import check_ui_installed

    try:
        check_ui_installed()
    except MedFedError:
        return False
    return True


def test_ui_without_full_mlflow_is_one_clear_line(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flask" else real(name, *a))
    code, _, err = run_cli(["ui", "--port", str(free_port())], monkeypatch, capsys)
    assert code == 2 and "pip install 'medfed[ui]'" in err and "Traceback" not in err


@pytest.mark.skipif(not _ui_installed(), reason="full mlflow not installed (.[ui] extra)")
def test_ui_without_a_store_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    code, _, err = run_cli(["ui", "--port", str(free_port())], monkeypatch, capsys)
    assert code == 2 and "no MLflow tracking store" in err and "mlflow.db" in err
    assert not (tmp_path / "mlflow.db").exists()


def _wait_http(url: str, proc: subprocess.Popen, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"medfed ui exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"{url} did not answer in {seconds:.0f} s")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group we started (the server and its uvicorn child)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # a child that outlived its parent
        os.killpg(proc.pid, signal.SIGKILL)


def _dump_dom(url: str, profile: Path) -> str:
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
            "--virtual-time-budget=30000", "--dump-dom", url]
    browser = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True, start_new_session=True)
    try:
        dom, _ = browser.communicate(timeout=240)
    finally:
        _stop_group(browser)
    return dom


@pytest.mark.deploy
@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
@pytest.mark.skipif(not _ui_installed(), reason="full mlflow not installed (.[ui] extra)")
def test_benchmark_runs_are_listed_in_the_browser(tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    config = tmp_path / "ui-bench.yaml"
    config.write_text(yaml.safe_dump(BENCHMARK))
    code, _, err = run_cli(["benchmark", str(config), "--out", str(tmp_path / "out"),
                            "--jobs", "1"], monkeypatch, capsys)
    assert code == 0, err
    uri = os.environ["MLFLOW_TRACKING_URI"]  # this test's own store (conftest)
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("medfed-breast-cancer").experiment_id
    child = client.search_runs([experiment], filter_string="tags.mlflow.parentRunId != ''")[0]
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "medfed.cli", "ui", "--port", str(port)],
                              cwd=tmp_path, env={**os.environ, "MLFLOW_TRACKING_URI": uri},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/", server, 180)
        page = f"http://127.0.0.1:{port}/#/experiments/{experiment}/runs"
        listed = _dump_dom(page, tmp_path / "chromium-profile")
        cell = _dump_dom(f"{page}/{child.info.run_id}", tmp_path / "chromium-profile")
    finally:
        _stop_group(server)
    # the experiment's runs list shows the benchmark (its cells are folded under it) ...
    assert "benchmark-ui-bench" in _words(listed)
    # ... and a cell's page names its parent run
    assert child.info.run_name in _words(cell)
    assert "Parent run" in _words(cell) and "benchmark-ui-bench" in _words(cell)


def _words(dom: str) -> str:
    """The page's visible words (tags dropped), as rendered by MLflow's JavaScript."""
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())
