"""`medfed audit`: check the hash-chained audit logs of coordinators and hospitals."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

out_console = Console()

audit_app = typer.Typer(help="Hash-chained audit logs.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(log: Path = typer.Argument(..., help="An audit.jsonl file.")) -> None:
    """Check the hash chain of an audit log; names the first altered line."""
    from medfed.deploy.audit import verify_log

    count = verify_log(log)
    out_console.print(f"{log}: OK, {count} entries, chain intact", highlight=False)
