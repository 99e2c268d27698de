"""``medfed``: the command line for hospitals, coordinators and researchers."""

from __future__ import annotations

import sys

import click
import typer
from rich.console import Console

from medfed.cli.audit import audit_app
from medfed.cli.data import data_app, demo_app
from medfed.cli.deploy import register as register_deployment
from medfed.cli.model import model_app
from medfed.cli.privacy import privacy_app
from medfed.cli.simulate import datasets_app, simulate
from medfed.errors import MedFedError

app = typer.Typer(
    help="MedFed: train one model across hospitals while every record stays on site.\n\n"
         "Researchers: `medfed simulate configs/breast-cancer.yaml`. "
         "See `medfed COMMAND --help` for each step.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    rich_markup_mode="markdown")
app.command()(simulate)
app.add_typer(datasets_app, name="datasets")
app.add_typer(data_app, name="data")
app.add_typer(demo_app, name="demo-data")
register_deployment(app)  # certs, server, nodes, keys, client, run
app.add_typer(model_app, name="model")
app.add_typer(audit_app, name="audit")
app.add_typer(privacy_app, name="privacy")
err_console = Console(stderr=True)


def main() -> None:
    """Entry point: user errors print one line and exit 2; no traceback."""
    try:
        app(standalone_mode=False)
    except MedFedError as exc:
        err_console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.UsageError as exc:
        exc.show()
        sys.exit(2)
    except click.exceptions.Abort:
        err_console.print("interrupted")
        sys.exit(130)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
