"""`medfed model`: the signed models of deployed runs in the registry (MLflow)."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

out_console = Console()
err_console = Console(stderr=True)

model_app = typer.Typer(help="Signed models in the registry (MLflow).", no_args_is_help=True)


def _quiet() -> None:
    for name in ("flwr", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@model_app.command("list")
def model_list() -> None:
    """Registered models and versions (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db)."""
    from medfed.deploy.registry import list_models

    _quiet()
    table = Table(title="Registered models")
    for column in ("name", "version", "kind", "run"):
        table.add_column(column)
    for row in list_models():
        table.add_row(row["name"], row["version"], row["kind"], row["run_id"])
    out_console.print(table)


@model_app.command("download")
def model_download(
    name: str = typer.Argument(..., help="Registered model name (see `medfed model list`)."),
    version: str = typer.Option("latest", help="A version number or 'latest'."),
    out: Path = typer.Option(..., "--out", "-o", help="New folder for the model."),
    trusted_key: Path | None = typer.Option(None, "--key", help="The coordinator's "
                                            "coordinator.pub to pin (recommended)."),
    audit_log: Path | None = typer.Option(None, help="Append the download to this audit log."),
) -> None:
    """Download weights (safetensors) + model card; verifies hash and signature FIRST and
    refuses a model that does not match. Prints a `warning:` line when a registered
    hospital did not take part in the model's last round (its card says since when)."""
    from medfed.deploy.registry import download_model
    from medfed.deploy.signing import load_public_key
    from medfed.io import check_output_dir

    _quiet()
    check_output_dir(out, "--out", empty=True)
    trusted = load_public_key(trusted_key) if trusted_key else None
    info = download_model(name, version, out, trusted)
    if audit_log is not None:
        from medfed.deploy import audit

        audit.append(audit_log, "model_downloaded", **info, folder=str(out))
    out_console.print(f"{name} version {info['version']} ({info['kind']}) -> {out}; signature "
                      f"OK (key {info['key_id']})", highlight=False, soft_wrap=True)
    warning = _card_warning(out)
    if warning:
        err_console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False,
                          soft_wrap=True)


def _card_warning(folder: Path) -> str | None:
    """The signed card's warning (a registered hospital missing at the end), if any."""
    import json

    card = json.loads((folder / "model_card.json").read_text(encoding="utf-8"))
    warning = card.get("warning") if isinstance(card, dict) else None
    return str(warning) if warning else None


@model_app.command("verify")
def model_verify(
    folder: Path = typer.Argument(..., help="A folder from `medfed model download`."),
    trusted_key: Path | None = typer.Option(None, "--key", help="coordinator.pub to pin."),
) -> None:
    """Check the weights' and card's SHA-256 against the Ed25519 signature."""
    from medfed.deploy.signing import load_public_key, verify_model_dir

    info = verify_model_dir(folder, load_public_key(trusted_key) if trusted_key else None)
    out_console.print(f"{folder}: OK (weights {info['weights_sha256'][:16]}..., signed by key "
                      f"{info['key_id']})", highlight=False)
