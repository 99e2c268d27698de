"""`medfed predict / validate / explain / serve / crops`: use a verified global model."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import typer
from rich.console import Console

from medfed.io import check_output_dir

out_console = Console()
err_console = Console(stderr=True)

MODEL_HELP = "Model folder (`medfed simulate` OUT/model, or `medfed model download`)."
KEY_HELP = "The coordinator's coordinator.pub to pin (recommended; simulate: OUT/signing/)."
OUT_HELP = "New folder for the outputs (written only when everything succeeded)."


def _quiet() -> None:
    import warnings

    for name in ("flwr", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def open_model(folder: Path, key: Path | None):
    """Verify hashes and signature (as `medfed model verify`), then load the model."""
    from medfed.deploy.signing import load_public_key, verify_model_dir
    from medfed.inference.bundle import load_bundle

    _quiet()
    verify_model_dir(folder, load_public_key(key) if key else None)
    return load_bundle(folder)


def check_port_free(host: str, port: int) -> None:
    """Bind once before serving, so a busy port is one line, not the server's own exit."""
    import socket

    from medfed.errors import MedFedError

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise MedFedError(f"cannot listen on {host}:{port} ({exc.strerror or exc})",
                              where="--host/--port",
                              fix="choose a free port, or stop what is using it") from None


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A staging folder renamed to ``out`` on success: a failure leaves nothing behind."""

    check_output_dir(out, "--out", empty=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        yield tmp
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def progress_bar(label: str) -> Iterator:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(TextColumn(f"[bold]{label}"), MofNCompleteColumn(), BarColumn(),
                  console=err_console, transient=True) as progress:
        task = progress.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield update


def predict(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    data: Path = typer.Argument(..., help="New data: a site folder, DICOM series folder, NIfTI "
                                "file, CSV, or a folder of PhysioNet .psv stays."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    then: Path | None = typer.Option(None, "--then", help="A second model (classifier) run "
                                     "on the region the first (segmentation) model finds."),
    margin: int = typer.Option(4, help="--then: voxels added around the segmented region."),
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
) -> None:
    """Score new data with the model, using exactly its training preprocessing.

    Writes predictions.csv (id, score per class, label at the model's threshold, the
    threshold); segmentation: `masks/ID.nii.gz` on the study's grid and, for DICOM,
    `seg/ID.dcm` (DICOM-SEG); sepsis: one row per stay-hour with score and alarm.

    Example: `medfed predict runs/heart/model new.csv --out preds/`;
    two stages: `medfed predict seg/model series/ --then cls/model --out preds/`
    """
    from medfed.inference.inputs import check_input
    from medfed.inference.predict import predict_any

    check_output_dir(out, "--out", empty=True)  # before the model loads
    bundle = open_model(model, key)
    check_input(bundle, data)
    second = open_model(then, key) if then is not None else None
    with staged(out) as tmp, progress_bar("studies") as update:
        if second is not None:
            from medfed.inference.two_stage import predict_two_stage

            summary = predict_two_stage(bundle, second, data, tmp, margin, update)
        else:
            summary = predict_any(bundle, data, tmp, update)
    out_console.print(f"{summary['rows']} prediction(s) -> {out / 'predictions.csv'}"
                      + (f" ({summary['note']})" if summary.get("note") else ""),
                      highlight=False)


def validate(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    site: Path = typer.Argument(..., help="A labelled site folder (or CSV / .psv folder with "
                                "labels) of the hospital that wants to use the model."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    target_sensitivity: float = typer.Option(0.9, min=0.01, max=1.0, help="Find the threshold "
                                             "reaching this sensitivity here."),
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
) -> None:
    """External validation at a new hospital: metrics at the model's threshold, calibration
    (curve, ECE), the threshold for a target sensitivity, and this site against the model
    card's per-site figures. Writes validation.md, validation.json and plots."""
    from medfed.inference.inputs import check_input
    from medfed.inference.validate import validate as run_validation

    check_output_dir(out, "--out", empty=True)  # before the model loads
    bundle = open_model(model, key)
    check_input(bundle, site)
    with staged(out) as tmp, progress_bar("studies") as update:
        result = run_validation(bundle, site, tmp, target_sensitivity, update)
    comparison = result["comparison"]
    value = comparison["this_site"]
    out_console.print(f"{comparison['metric']} {'—' if value is None else f'{value:.3f}'} here: "
                      f"{comparison['verdict']}. Report: {out / 'validation.md'}",
                      highlight=False)


def explain(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    data: Path = typer.Argument(..., help="The data to explain (as for predict)."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    method: str = typer.Option("gradcam", help="Imaging: gradcam, gradcampp or occlusion. "
                               "Tables always use integrated gradients."),
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
) -> None:
    """Why the model decided: saliency overlays per study (PNG; middle slices for 3D) or,
    for tables, per-prediction feature attributions and a global importance plot."""
    from medfed.errors import MedFedError
    from medfed.inference.explain import METHODS
    from medfed.inference.explain import explain as run_explain
    from medfed.inference.inputs import check_input

    if method not in METHODS:
        raise MedFedError(f"--method: {method!r}; choose one of {', '.join(METHODS)}")
    check_output_dir(out, "--out", empty=True)  # before the model loads
    bundle = open_model(model, key)
    check_input(bundle, data)
    with staged(out) as tmp, progress_bar("studies") as update:
        summary = run_explain(bundle, data, tmp, method, update)
    out_console.print(f"{summary['rows']} explanation(s) -> {out}", highlight=False)


def serve(
    model: Path = typer.Argument(..., help=MODEL_HELP),
    port: int = typer.Option(8080, min=1, max=65535, help="Port to listen on."),
    host: str = typer.Option("127.0.0.1", help="Interface (127.0.0.1: this machine only)."),
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
) -> None:
    """Serve the model over HTTP (MLflow's scoring server: POST /invocations with a JSON
    `dataframe_split` of feature rows). Verifies the signature first."""
    from medfed.inference.pyfunc import serve_model

    bundle = open_model(model, key)
    check_port_free(host, port)
    out_console.print(f"serving {bundle.card.get('name')} on http://{host}:{port}/invocations",
                      highlight=False)
    serve_model(model, host, port)


def crops(
    model: Path = typer.Argument(..., help="The first-stage segmentation model folder."),
    site: Path = typer.Argument(..., help="A site folder (manifest.csv with labels)."),
    out: Path = typer.Option(..., "--out", "-o", help="New site folder of cropped regions."),
    margin: int = typer.Option(4, help="Voxels added around the segmented region."),
    key: Path | None = typer.Option(None, "--key", help=KEY_HELP),
) -> None:
    """Crop each study around the first stage's predicted mask into a new site folder
    (manifest.csv + NIfTI) to train the second stage on (configs/two-stage-classifier.yaml)."""
    from medfed.inference.two_stage import write_crop_site

    check_output_dir(out, "--out", empty=True)  # before the model loads
    bundle = open_model(model, key)
    with staged(out) as tmp, progress_bar("studies") as update:
        summary = write_crop_site(bundle, site, tmp, margin, update)
    out_console.print(f"{summary['rows']} crop(s) ({summary['empty']} without a region) -> "
                      f"{out / 'manifest.csv'}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the commands to the top-level app."""
    for command in (predict, validate, explain, serve, crops):
        app.command()(command)


def save_simulation_model(cfg, report: dict, arrays, out: Path) -> Path | None:
    """``out/model/``: the federated model with its card, signed with ``out/signing/``'s key
    (None for a multimodal model, which `medfed predict` does not take yet)."""
    from medfed.deploy.registry import card_markdown
    from medfed.deploy.signing import (
        CARD_JSON,
        CARD_MD,
        WEIGHTS,
        ensure_signing_key,
        sha256_file,
        sign_model_dir,
    )
    from medfed.federation.checkpoint import arrays_to_bytes
    from medfed.inference.package import packable, simulation_card
    from medfed.io import atomic_write_bytes, atomic_write_json, atomic_write_text

    if not packable(cfg):
        return None
    folder = out / "model"
    tmp = Path(tempfile.mkdtemp(dir=out, prefix=".model."))
    try:
        atomic_write_bytes(tmp / WEIGHTS, arrays_to_bytes(arrays))
        card = simulation_card(cfg, report, arrays.to_torch_state_dict())
        card["weights_sha256"] = sha256_file(tmp / WEIGHTS)
        atomic_write_json(tmp / CARD_JSON, card)
        atomic_write_text(tmp / CARD_MD, card_markdown(card))
        sign_model_dir(tmp, ensure_signing_key(out / "signing"))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
