"""``medfed``: the command line for hospitals, coordinators and researchers."""

from __future__ import annotations

import sys
import warnings

import click
import typer
from rich.console import Console
from rich.markup import escape

from medfed.cli.audit import audit_app
from medfed.cli.benchmark import benchmark
from medfed.cli.data import data_app, demo_app
from medfed.cli.deploy import register as register_deployment
from medfed.cli.model import model_app
from medfed.cli.privacy import privacy_app
from medfed.cli.simulate import datasets_app, simulate
from medfed.cli.stats import stats
from medfed.cli.ui import ui
from medfed.cli.use import register as register_use
from medfed.errors import MedFedError, MedFedWarning, one_line

app = typer.Typer(
    help="MedFed: train one model across hospitals while every record stays on site.\n\n"
         "Researchers: `medfed simulate configs/breast-cancer.yaml`. "
         "See `medfed COMMAND --help` for each step.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
    rich_markup_mode="markdown")
app.command()(simulate)
app.command()(stats)  # federated statistics (cli/stats.py)
app.command()(benchmark)  # grid × seeds with error bars (cli/benchmark.py)
app.command()(ui)  # MLflow's UI on the tracking store (cli/ui.py)
app.add_typer(datasets_app, name="datasets")
app.add_typer(data_app, name="data")
app.add_typer(demo_app, name="demo-data")
register_deployment(app)  # certs, server, nodes, keys, client, run
app.add_typer(model_app, name="model")
app.add_typer(audit_app, name="audit")
app.add_typer(privacy_app, name="privacy")
register_use(app)  # predict, validate, explain, serve, crops
err_console = Console(stderr=True)
_library_warning = warnings.showwarning  # how other warnings print


@app.callback()
def _global(verbose: bool = typer.Option(False, "--verbose", help="On an error, also print "
                                         "the Python traceback (for bug reports).")) -> None:
    """MedFed: train one model across hospitals while every record stays on site."""


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors print one line ``error: WHAT (WHERE): FIX`` and exit 2; no
    traceback unless ``--verbose`` is given (anywhere on the command line)."""
    args = sys.argv[1:] if argv is None else list(argv)
    verbose = "--verbose" in args
    args = [a for a in args if a != "--verbose"]  # accepted after any command, not only first
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # MedFedWarning: one `warning: ...` line
            code = app(args=args, prog_name="medfed", standalone_mode=False)
    except MedFedError as exc:
        _fail(str(exc), verbose)
    except click.exceptions.UsageError as exc:
        _fail(_usage_line(exc), verbose)
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except OSError as exc:  # the file system refused something no check foresaw
        if exc.filename is None:  # a socket, connection or TLS error: not a path problem
            _fail(f"unexpected {exc.__class__.__name__}: {one_line(exc)[:300]} (medfed "
                  f"{' '.join(args[:2])}): this is a bug in MedFed; rerun with --verbose "
                  "and report the traceback", verbose, code=1)
        _fail(f"{exc.strerror or exc.__class__.__name__} ({exc.filename or 'medfed'}): check "
              "that the path exists and is writable", verbose)
    except Exception as exc:  # a bug: one line, the traceback with --verbose
        _fail(f"unexpected {exc.__class__.__name__}: {one_line(exc)[:300]} (medfed "
              f"{' '.join(args[:2])}): this is a bug in MedFed; rerun with --verbose and "
              "report the traceback", verbose, code=1)
    if isinstance(code, int) and code:
        sys.exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, MedFedWarning):
        err_console.print(f"[yellow]warning:[/yellow] {escape(one_line(message))}",
                          highlight=False, soft_wrap=True)
    else:
        _library_warning(message, category, filename, lineno, file, line)


def _usage_line(exc: click.exceptions.UsageError) -> str:
    command = exc.ctx.command_path if exc.ctx else "medfed"
    return f"{one_line(exc.format_message())} ({command}): see `{command} --help`"


def _fail(message: str, verbose: bool, code: int = 2) -> None:
    if verbose:
        err_console.print_exception()
    err_console.print(f"[red]error:[/red] {escape(one_line(message))}", highlight=False,
                      soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
