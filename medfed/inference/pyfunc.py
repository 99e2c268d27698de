"""The model as an MLflow pyfunc: `mlflow models serve` and `medfed serve` answer with the same
scores as `medfed predict`.

The pyfunc folder carries the signed model folder as an artifact (weights, card with its
preprocessing) and MedFed's code (``code_paths``), with an input signature listing the
table's columns and an output signature listing predictions.csv's columns. Tables only:
imaging studies and PhysioNet stays are files, scored with `medfed predict`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from medfed.errors import MedFedError

ARTIFACT = "medfed_model"


def score_frame(bundle: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """predictions.csv's columns for the rows of ``frame`` (an optional ``id`` column)."""
    from medfed.inference.inputs import frame_table
    from medfed.inference.predict import class_columns, score_rows

    table = frame_table(bundle, frame.reset_index(drop=True), "request", labelled=False)
    scores = score_rows(bundle, table.x)
    out = pd.DataFrame({"id": table.ids})
    for key, value in class_columns(bundle, scores).items():
        out[key] = value
    return out


def example_frame(bundle: Any) -> pd.DataFrame:
    """One row of the columns a request must carry (feature columns before one-hot)."""
    from medfed.inference.inputs import _raw_columns, model_features

    names = model_features(bundle)
    categorical = list(bundle.options.get("categorical") or [])
    row: dict[str, Any] = {"id": "example"}
    for column in _raw_columns(names, categorical):
        if column in categorical and column not in names:
            level = next(n for n in names if n.startswith(f"{column}_"))
            row[column] = level[len(column) + 1:]
        else:
            row[column] = 0.0
    return pd.DataFrame([row])


def save_pyfunc(model_dir: str | Path, path: str | Path) -> Path:
    """Write the pyfunc folder for ``model_dir`` (a verified model folder) at ``path``."""
    import logging

    import mlflow.pyfunc
    from mlflow.models import infer_signature

    logging.getLogger("mlflow").setLevel(logging.ERROR)

    import medfed
    from medfed.inference.bundle import load_bundle

    bundle = load_bundle(model_dir, device="cpu")
    if bundle.is_image or bundle.task_name == "timeseries":
        raise MedFedError(f"{model_dir}: a {bundle.task_name} model on "
                          f"{bundle.pre['dataset']} data is scored from files; use `medfed "
                          "predict` (serving takes table rows)")
    example = example_frame(bundle)
    output = score_frame(bundle, example)
    mlflow.pyfunc.save_model(
        path=str(path), python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
        artifacts={ARTIFACT: str(model_dir)},
        code_paths=[str(Path(medfed.__file__).parent)],
        signature=infer_signature(example, output), input_example=example,
        metadata={"medfed_task": bundle.task_name, "medfed_model": bundle.card.get("name"),
                  "medfed_weights_sha256": bundle.card.get("weights_sha256"),
                  "medfed_preprocessing": {k: v for k, v in bundle.pre.items()
                                           if k != "scaling"}})
    return Path(path)


def serve_model(model_dir: str | Path, host: str, port: int) -> None:
    """MLflow's scoring server (FastAPI under uvicorn) in this process, until stopped."""
    import uvicorn
    from mlflow.pyfunc import load_model
    from mlflow.pyfunc.scoring_server import init

    staging = Path(tempfile.mkdtemp(prefix="medfed-serve-"))
    try:
        folder = save_pyfunc(model_dir, staging / "pyfunc")
        uvicorn.run(init(load_model(str(folder))), host=host, port=port, log_level="warning")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
