"""`medfed audit`: check the hash-chained audit logs of coordinators and hospitals."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

out_console = Console()

audit_app = typer.Typer(help="Hash-chained audit logs with a signed head.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(
    log: Path = typer.Argument(..., help="An audit.jsonl file (its signed head, "
                               "audit.head.json, lies beside it)."),
    key: Path | None = typer.Option(None, "--key", help="The public key (PEM) the head must "
                                    "be signed with, e.g. a copy of the coordinator's "
                                    "coordinator.pub kept elsewhere (default: coordinator.pub "
                                    "or audit-signing.pub beside the log)."),
    chain_only: bool = typer.Option(False, "--chain-only", help="Check only the hash chain, "
                                    "for a log written before heads were signed: removed LAST "
                                    "lines then go unnoticed."),
) -> None:
    """Check an audit log: the hash chain (an entry edited, deleted, reordered) and its signed
    head (the log truncated or rewritten). Exit 0 when intact, 2 naming what happened.
    Entries after the signed head (a crash between an append and its signature) are reported
    as an unsigned tail, not as tampering."""
    from medfed.deploy.audit import check_log, verify_log
    from medfed.deploy.signing import load_public_key

    if chain_only:
        count = verify_log(log)
        out_console.print(f"{log}: chain intact, {count} entries (head not checked: removed "
                          "last lines would go unnoticed)", highlight=False)
        return
    if key is not None:
        load_public_key(key)  # a bad --key is one line before the log is read
    found = check_log(log, key)
    signer = f"key {found.key_id}" + (f" = {found.pinned}" if found.pinned else
                                      " (not pinned: give --key)")
    line = f"{log}: OK, {found.entries} entries, chain intact, head signed by {signer}"
    if found.unsigned_tail:
        line += (f"; signed head covers {found.signed} ({found.signed_at}), unsigned tail, "
                 f"{found.unsigned_tail} entries (written after the last signature: a crash "
                 "or a writer still running)")
    out_console.print(line, highlight=False, soft_wrap=True)
