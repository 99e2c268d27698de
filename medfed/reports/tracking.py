"""MLflow tracking: a local SQLite store by default, ``MLFLOW_TRACKING_URI`` overrides it."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:500]
    return out


class Tracker:
    """One MLflow run: parameters, per-round metrics, final metrics and artifacts."""

    def __init__(self, experiment: str, run_name: str, params: dict[str, Any],
                 uri: str | None = None) -> None:
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        self.uri = uri or tracking_uri()
        self.client = MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        params_list = [_param(k, v) for k, v in flatten(params).items()]
        for start in range(0, len(params_list), 100):  # MLflow takes at most 100 per batch
            self.client.log_batch(self.run_id, params=params_list[start:start + 100])

    def log_metrics(self, metrics: dict[str, float | None], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and v == v]
        if batch:
            self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, folder: str | Path) -> None:
        self.client.log_artifacts(self.run_id, str(folder))

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def log_run(report: dict[str, Any], out: str | Path, experiment: str,
            run_name: str) -> dict[str, str]:
    """Log a written report (params, per-round and final metrics, --out as artifacts).

    Returns ``{"tracking_uri", "run_id"}`` of the MLflow run.
    """
    from medfed.privacy.report import mlflow_metrics

    tracker = Tracker(experiment, run_name, report["config"])
    for h in report["history"]:
        tracker.log_metrics({f"pooled_{k}": v for k, v in (h.get("pooled") or {}).items()}
                            | {"train_loss": h.get("train_loss")}, step=h["round"])
    for arm, m in report["metrics"].items():
        tracker.log_metrics({f"{arm}_{k}": v for k, v in m["pooled"].items()})
    tracker.log_metrics(mlflow_metrics(report.get("privacy")))
    tracker.log_artifacts(out)
    tracker.finish()
    return {"tracking_uri": tracker.uri, "run_id": tracker.run_id}


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)
