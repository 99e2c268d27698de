"""Serving: the model as an MLflow pyfunc (registry) and `medfed serve` on loopback answer
with the same scores as `medfed predict`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import run_cli
from tests.inference_data import clinical_frame, simulate, table_config, tamper


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    model = simulate(table_config(root, "binary"), root / "run")
    new = clinical_frame(12, 5, "binary").drop(columns=["site", "label"]).dropna()
    new.to_csv(root / "new.csv", index=False)
    return model, root / "new.csv", new


def predicted(model, csv, out, monkeypatch, capsys) -> pd.DataFrame:
    code, _, err = run_cli(["predict", str(model), str(csv), "--out", str(out)], monkeypatch,
                           capsys)
    assert code == 0, err
    return pd.read_csv(out / "predictions.csv")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def post(port: int, frame: pd.DataFrame) -> list[dict]:
    body = json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split",
                                                                   index=False))}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"]


def test_medfed_serve_answers_like_predict(binary, tmp_path, monkeypatch, capsys):
    model, csv, frame = binary
    expected = predicted(model, csv, tmp_path / "p", monkeypatch, capsys)
    port = free_port()
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true"}
    server = subprocess.Popen([sys.executable, "-m", "medfed.cli", "serve", str(model),
                               "--port", str(port), "--key",
                               str(model.parent / "signing" / "coordinator.pub")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "server did not start in 120 s"
                time.sleep(0.5)
        answer = post(port, frame.iloc[:3])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert [a["id"] for a in answer] == expected["id"].tolist()[:3]
    np.testing.assert_allclose([a["score_1"] for a in answer], expected["score_1"][:3],
                               rtol=1e-5)
    assert [str(a["predicted"]) for a in answer] == expected["predicted"].astype(str)[:3].tolist()


def test_serve_refuses_a_tampered_model(binary, tmp_path, monkeypatch, capsys):
    model, _, _ = binary
    code, _, err = run_cli(["serve", str(tamper(model, tmp_path / "bad")), "--port", "1"],
                           monkeypatch, capsys)
    assert code == 2 and "SHA-256 does not match" in err


def test_registered_pyfunc_loads_from_the_registry_and_scores_like_predict(
        binary, tmp_path, monkeypatch, capsys):
    """What register_run logs: a pyfunc (signature, preprocessing metadata) whose folder
    also holds the signed files, so `model download` verifies it and MLflow serves it."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from medfed.deploy.registry import download_model, servable
    from medfed.reports.tracking import tracking_uri

    model, csv, frame = binary
    expected = predicted(model, csv, tmp_path / "p", monkeypatch, capsys)
    client = MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())
    experiment = client.create_experiment("serve-test")
    run = client.create_run(experiment)
    with servable(model) as folder:
        assert (folder / "MLmodel").is_file()
        client.log_artifacts(run.info.run_id, str(folder), artifact_path="models/final")
    client.create_registered_model("serve-test")
    client.create_model_version("serve-test", f"{run.info.artifact_uri}/models/final",
                                run_id=run.info.run_id)
    mlflow.set_registry_uri(tracking_uri())
    loaded = mlflow.pyfunc.load_model("models:/serve-test/1")
    inputs = [c.name for c in loaded.metadata.get_input_schema().inputs]
    assert inputs == ["id", "x1", "x2", "cat"]
    assert loaded.metadata.metadata["medfed_task"] == "binary"
    answer = loaded.predict(frame)
    np.testing.assert_allclose(answer["score_1"], expected["score_1"], rtol=1e-5)
    local = Path(mlflow.artifacts.download_artifacts(
        f"{run.info.artifact_uri}/models/final", dst_path=str(tmp_path / "raw")))
    weights = next((local / "artifacts").rglob("model.safetensors"))  # the pyfunc's copy
    weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
    with pytest.raises(Exception, match="SHA-256 does not match"):
        mlflow.pyfunc.load_model(str(local))  # the pyfunc itself refuses altered weights
    info = download_model("serve-test", "latest", tmp_path / "download")
    assert info["weights_sha256"] == json.loads(
        (model / "signature.json").read_text())["signed"]["weights_sha256"]
