"""The model registry: signed final and best models of each deployed run, in MLflow.

Each registered model version is a folder logged as MLflow artifacts: ``model.safetensors``
(no pickle), ``model_card.json`` + ``model_card.md`` (task, sites and sizes, config,
per-site metrics, privacy per site) and ``signature.json`` (Ed25519 by the coordinator over
the weights' SHA-256 and the card's SHA-256). MLflow's store is local SQLite by default;
``MLFLOW_TRACKING_URI`` points at any MLflow server. Downloads are verified before they
land in the output folder: a mismatch leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flwr.app import ConfigRecord

from medfed.config import ExperimentConfig
from medfed.datasets.base import DataInfo
from medfed.deploy.participation import (
    PRIVACY_PREFIXES,
    card_participation,
    dropout_warning,
)
from medfed.deploy.signing import (
    CARD_JSON,
    CARD_MD,
    SIGNATURE,
    WEIGHTS,
    ensure_signing_key,
    sha256_file,
    sign_model_dir,
    verify_model_dir,
)
from medfed.errors import MedFedError
from medfed.federation.messages import read_scaling
from medfed.inference.card import card_markdown_lines, deployment_sections, preprocessing_section
from medfed.io import atomic_write_json, atomic_write_text
from medfed.reports.tracking import tracking_uri

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient


def model_name(cfg: ExperimentConfig) -> str:
    return cfg.name or f"{cfg.dataset.name}-{cfg.strategy.name}"


def _client() -> MlflowClient:
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def open_tracking(run_dir: Path, cfg: ExperimentConfig) -> tuple[MlflowClient, str]:
    """The run's MLflow run (created once; a resumed run continues the same record)."""
    from medfed.reports.tracking import flatten

    client = _client()
    saved = run_dir / "mlflow.json"
    if saved.is_file():
        info = json.loads(saved.read_text())
        if info.get("tracking_uri") == tracking_uri():
            client.update_run(info["mlflow_run_id"], status="RUNNING")
            return client, info["mlflow_run_id"]
    experiment = f"medfed-{cfg.dataset.name}"
    found = client.get_experiment_by_name(experiment)
    exp_id = found.experiment_id if found else client.create_experiment(experiment)
    run = client.create_run(exp_id, run_name=run_dir.name, tags={"medfed.run_id": run_dir.name,
                                                                 "medfed.engine": "deployment"})
    from mlflow.entities import Param

    params = [Param(k, v) for k, v in flatten(json.loads(cfg.to_json())).items()]
    client.log_batch(run.info.run_id, params=params[:100])
    atomic_write_json(saved, {"tracking_uri": tracking_uri(), "mlflow_run_id": run.info.run_id,
                              "logged_round": 0})
    return client, run.info.run_id


def log_new_rounds(client: MlflowClient, mlflow_run_id: str, run_dir: Path,
                   history: list[dict[str, Any]]) -> None:
    """Log the rounds of ``history`` not yet in MLflow (so a resumed run never logs twice)."""
    import time

    from mlflow.entities import Metric

    saved = run_dir / "mlflow.json"
    info = json.loads(saved.read_text())
    done = int(info.get("logged_round", 0))
    now = int(time.time() * 1000)
    for record in history:
        if record["round"] <= done:
            continue
        values = {f"federated_{k}": v for k, v in (record.get("federated_eval") or {}).items()}
        values["train_loss"] = record.get("train_loss")
        values["sites_trained"] = record.get("sites_trained")
        batch = [Metric(k, float(v), now, record["round"]) for k, v in values.items()
                 if v is not None and v == v]
        if batch:
            client.log_batch(mlflow_run_id, metrics=batch)
        done = record["round"]
    atomic_write_json(saved, {**info, "logged_round": done})


def model_card(run_dir: Path, cfg: ExperimentConfig, kind: str,
               nodes: dict[str, Any]) -> dict[str, Any]:
    """What a reader of the model needs: task, sites and sizes, config, metrics, privacy;
    per round which hospitals trained and evaluated, each hospital's metrics from the last
    round it took part in (dated), the hospitals a pooled figure covers, and a warning when
    a registered hospital was missing at the end."""
    result = json.loads((run_dir / "result.json").read_text())
    names = {entry["node_id"]: name for name, entry in nodes.items()}
    best = json.loads((run_dir / "best.json").read_text()) if (run_dir / "best.json").is_file() \
        else None
    history = result["history"]
    chosen = best["round"] if kind == "best" and best else history[-1]["round"]
    participation = card_participation(history, names, sorted(nodes), chosen)
    sites = _card_sites(result, participation, names, cfg, chosen)
    record = next((h for h in history if h["round"] == chosen), history[-1])
    card = {"name": model_name(cfg), "kind": kind, "run_id": result["run_id"],
            "round": chosen, "rounds": cfg.rounds, "task": result["summary"]["task"],
            "input_shape": result["summary"]["input_shape"],
            "n_classes": result["summary"]["n_classes"], "dataset": cfg.dataset.name,
            "model": cfg.model.name, "strategy": cfg.strategy.name,
            "federated_metrics": record.get("federated_eval", {}),
            "federated_metrics_cover": participation["pooled_cover"], "sites": sites,
            "participation": participation,
            "privacy": json.loads(cfg.privacy.model_dump_json()),
            "config": json.loads(cfg.to_json()),
            "weights_format": "safetensors"}
    card["warning"] = dropout_warning(card)
    card["preprocessing"] = preprocessing_section(cfg, summary_info(result["summary"]),
                                                  read_scaling(ConfigRecord(
                                                      result["summary"].get("scaling") or {})),
                                                  None)
    trained = dt.datetime.fromtimestamp((run_dir / "result.json").stat().st_mtime, dt.UTC)
    card.update(deployment_sections(cfg, card["task"], sites, history,
                                    trained.isoformat(timespec="seconds")))
    _date_site_rows(card)
    return card


def _card_sites(result: dict[str, Any], participation: dict[str, Any], names: dict[str, str],
                cfg: ExperimentConfig, chosen: int) -> list[dict[str, Any]]:
    """One row per hospital that took part: sizes, its metrics from the last round it
    evaluated in (with that round and date), whether it stayed to round ``chosen``."""
    ledger = result.get("sites") or {}
    rows = []
    for site, seen in sorted(participation["sites"].items()):
        node = seen["node_id"]
        privacy = {k: v for k, v in seen.items() if k.startswith(PRIVACY_PREFIXES)}
        rows.append({"site": site, "node_id": node, "n_train": seen.get("n_train"),
                     "n_test": seen.get("n_test"), "metrics": seen.get("metrics", {}),
                     "metrics_round": seen.get("metrics_round"),
                     "metrics_date": seen.get("metrics_date"),
                     "last_round": seen["last_round"], "last_date": seen.get("last_date"),
                     "to_the_end": seen["last_round"] == chosen,
                     "privacy": privacy or (ledger.get(node) or {}).get("privacy")
                     or {"mode": cfg.privacy.mode}})
    if rows or not ledger:
        return rows
    for node_id, info in sorted(ledger.items()):  # a run from before rounds were tracked
        rows.append({"site": names.get(node_id, f"node {node_id}"), "node_id": node_id,
                     "n_train": info.get("n_train"), "n_test": info.get("n_test"),
                     "metrics": info.get("metrics", {}), "metrics_round": None,
                     "metrics_date": None, "last_round": None, "last_date": None,
                     "to_the_end": None,
                     "privacy": info.get("privacy") or {"mode": cfg.privacy.mode}})
    return rows


def _date_site_rows(card: dict[str, Any]) -> None:
    """Per-site metric rows say which round (and when) they come from; a hospital missing at
    the end is a known limit of the model."""
    by_site = {s["site"]: s for s in card["sites"]}
    for row in card.get("per_site_metrics", []):
        site = by_site.get(row["site"], {})
        row["round"], row["date"] = site.get("metrics_round"), site.get("metrics_date")
    if card["warning"]:
        card["known_limits"].insert(0, card["warning"])


def summary_info(summary: dict[str, Any]) -> DataInfo:
    return DataInfo(task=summary["task"], input_shape=tuple(summary["input_shape"]),
                    n_classes=int(summary["n_classes"]),
                    standardize=bool(summary.get("scaling")))


def card_markdown(card: dict[str, Any]) -> str:
    cover = card.get("federated_metrics_cover") or {}
    lines = [f"# {card['name']} ({card['kind']} model, round {card['round']} of "
             f"{card['rounds']})", ""]
    if card.get("warning"):
        lines += [f"**Warning: {card['warning']}.**", ""]
    lines += [f"- Task: {card['task']}; dataset format: {card['dataset']}; model: "
              f"{card['model']}; strategy: {card['strategy']}",
              f"- Run: {card['run_id']}; weights: model.safetensors (signed, see "
              "signature.json)",
              f"- Privacy: {card['privacy']['mode']}", "",
              "## Federated metrics" + (f" (pooled over {', '.join(cover['sites'])}, round "
                                        f"{cover['round']})" if cover else ""), ""]
    lines += [f"- {k}: {v:.4f}" for k, v in card["federated_metrics"].items() if v is not None]
    lines += ["", "## Sites", "", "| site | train | test | metrics | from round | last round "
              "| privacy |", "|---|---|---|---|---|---|---|"]
    for site in card["sites"]:
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in site["metrics"].items()
                            if k in ("auroc", "accuracy", "balanced_accuracy") and v is not None)
        privacy = ", ".join(f"{k} {v}" for k, v in site["privacy"].items())
        dated = f"{site.get('metrics_round')} ({site.get('metrics_date')})" \
            if site.get("metrics_round") else "—"
        last = "—" if site.get("last_round") is None else \
            f"{site['last_round']}" + ("" if site.get("to_the_end") else " (left)")
        lines.append(f"| {site['site']} | {site['n_train']} | {site['n_test']} | {metrics} | "
                     f"{dated} | {last} | {privacy} |")
    rounds = card.get("participation", {}).get("rounds") or []
    if rounds:
        lines += ["", "## Rounds", "", "| round | finished | trained | evaluated |",
                  "|---|---|---|---|"]
        lines += [f"| {r['round']} | {r['date']} | {', '.join(r['trained']) or '—'} | "
                  f"{', '.join(r['evaluated']) or '—'} |" for r in rounds]
    if "per_site_metrics" in card:  # intended use, CIs, calibration, limits
        lines += card_markdown_lines(card)
    return "\n".join(lines) + "\n"


def build_model_dir(run_dir: Path, cfg: ExperimentConfig, kind: str, state: Path) -> Path:
    """``run_dir/models/<kind>/``: weights, card (JSON + Markdown), signature."""
    source = run_dir / f"{kind}.safetensors"
    if not source.is_file():
        raise MedFedError(f"{source}: not found; the run has not finished")
    nodes_path = state / "nodes.json"
    nodes = json.loads(nodes_path.read_text()) if nodes_path.is_file() else {}
    folder = run_dir / "models" / kind
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=f".{kind}."))
    shutil.copyfile(source, tmp / WEIGHTS)
    card = model_card(run_dir, cfg, kind, nodes)
    card["weights_sha256"] = sha256_file(tmp / WEIGHTS)
    atomic_write_json(tmp / CARD_JSON, card)
    atomic_write_text(tmp / CARD_MD, card_markdown(card))
    sign_model_dir(tmp, ensure_signing_key(state))
    if folder.exists():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(folder)
    return folder


def register_run(run_dir: Path, cfg: ExperimentConfig, state: Path, client: MlflowClient,
                 mlflow_run_id: str) -> list[dict[str, str]]:
    """Build, sign and register the run's best then final model (latest = final)."""
    name = model_name(cfg)
    try:
        client.get_registered_model(name)
    except Exception:  # noqa: BLE001 - MLflow raises its own RestException when absent
        client.create_registered_model(name, description="MedFed federated model")
    registered = []
    run = client.get_run(mlflow_run_id)
    kinds = ["best", "final"] if (run_dir / "best.safetensors").is_file() else ["final"]
    for kind in kinds:
        folder = build_model_dir(run_dir, cfg, kind, state)
        with servable(folder) as logged:
            client.log_artifacts(mlflow_run_id, str(logged), artifact_path=f"models/{kind}")
        version = client.create_model_version(
            name, source=f"{run.info.artifact_uri}/models/{kind}", run_id=mlflow_run_id,
            tags={"kind": kind, "medfed.run_id": run_dir.name,
                  "medfed.pyfunc": str(logged != folder).lower()})
        registered.append({"name": name, "version": str(version.version), "kind": kind})
    return registered


@contextlib.contextmanager
def servable(folder: Path) -> Iterator[Path]:
    """The folder to log: for table models an MLflow pyfunc (MLmodel, code, signature, the
    signed files as its artifact) with the signed files also at its root, so that both
    `mlflow models serve -m models:/NAME/latest` and `medfed model download` work; imaging
    and sepsis models (scored from files) stay the plain signed folder."""
    from medfed.inference.pyfunc import save_pyfunc

    staging = Path(tempfile.mkdtemp(prefix="medfed-pyfunc-"))
    try:
        try:
            pyfunc = save_pyfunc(folder, staging / "pyfunc")
        except MedFedError:
            yield folder
            return
        for name in (WEIGHTS, CARD_JSON, CARD_MD, SIGNATURE):
            shutil.copyfile(folder / name, pyfunc / name)
        yield pyfunc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def list_models() -> list[dict[str, Any]]:
    client = _client()
    with asking_registry():
        models = list(client.search_registered_models())
    rows = []
    for model in models:
        for version in _model_versions(client, model.name):
            rows.append({"name": model.name, "version": str(version.version),
                         "kind": version.tags.get("kind", ""),
                         "run_id": version.tags.get("medfed.run_id", ""),
                         "created": version.creation_timestamp})
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))


def resolve_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    """The registered version ``version`` ("latest" or a number) of model ``name``."""
    versions = _model_versions(client, name)
    if not versions:
        raise MedFedError(f"model {name!r}: not in the registry at {tracking_uri()}; see "
                          "`medfed model list`")
    if version == "latest":
        return max(versions, key=lambda v: int(v.version))
    for candidate in versions:
        if str(candidate.version) == str(version):
            return candidate
    raise MedFedError(f"model {name!r}: no version {version}; versions are "
                      f"{sorted(int(v.version) for v in versions)}")


def _model_versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    """The versions of ``name``: [] when the registry has no such model."""
    try:
        with asking_registry():
            return list(client.search_model_versions(f"name='{name}'"))
    except LookupError:
        return []


@contextlib.contextmanager
def asking_registry() -> Iterator[None]:
    """MLflow calls inside: "no such model" becomes LookupError, any other failure (network,
    authentication, server) one line naming the registry and the fix."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - MLflow raises MlflowException/RestException
        if getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
            raise LookupError(str(exc)) from None
        raise MedFedError(f"cannot reach the model registry at {tracking_uri()} "
                          f"({registry_failure(exc)}): check MLFLOW_TRACKING_URI, that the "
                          "MLflow server runs and answers there, and its credentials "
                          "(MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD)") \
            from None


AUTH_ERRORS = {"UNAUTHENTICATED": "not authenticated", "PERMISSION_DENIED": "permission denied"}


def registry_failure(exc: Exception) -> str:
    """A few words on why an MLflow call failed: refused, timed out, HTTP 503, not allowed..."""
    code = str(getattr(exc, "error_code", "") or "")
    if code in AUTH_ERRORS:
        return AUTH_ERRORS[code]
    text = str(exc)
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if errno:
        return errno.group(1).strip()
    if "timed out" in text.lower():
        return "timed out"
    status = re.search(r"error code (\d{3})", text)
    if status:
        return f"HTTP {status.group(1)}"
    first = text.strip().splitlines()[0][:120] if text.strip() else ""
    return f"{exc.__class__.__name__}: {first}" if first else exc.__class__.__name__


def download_model(name: str, version: str, out: Path,
                   trusted: Ed25519PublicKey | None = None) -> dict[str, Any]:
    """Fetch a registered model into ``out`` only after its hashes and signature check."""
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow.artifacts

    if out.exists() and any(out.iterdir()):
        raise MedFedError(f"{out}: folder not empty; choose a new -o folder")
    client = _client()
    chosen = resolve_version(client, name, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=chosen.source,
                                                         dst_path=str(staging),
                                                         tracking_uri=tracking_uri()))
        checked = verify_model_dir(local, trusted)
        if out.exists():
            out.rmdir()
        local.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"name": name, "version": str(chosen.version), "kind": chosen.tags.get("kind", ""),
            **checked}
