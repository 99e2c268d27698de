"""Tamper-evident audit logs: append-only JSON lines, each chained to the previous by hash.

Every entry is ``{"seq", "time", "event", ..., "prev", "hash"}`` where ``hash`` is the
SHA-256 of the entry's canonical JSON without ``hash`` and ``prev`` is the previous entry's
hash (64 zeros for the first). Editing, removing or reordering any line breaks the chain,
which ``verify_log`` (``medfed audit verify LOG``) reports with the line number.
Writers hold an exclusive lock while appending, so concurrent processes keep one chain.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from medfed.errors import MedFedError

GENESIS = "0" * 64


def _digest(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _last_entry(handle, path: Path) -> dict[str, Any] | None:
    """The log's last entry; a damaged log is refused (appending would hide the damage)."""
    handle.seek(0)
    last, number = None, 0
    try:
        for index, line in enumerate(handle, start=1):
            if line.strip():
                last, number = line, index
    except UnicodeDecodeError:
        raise MedFedError("audit log is binary, not JSON lines", where=str(path),
                          fix="restore it from a backup; MedFed never appends to a damaged "
                          "log") from None
    if last is None:
        return None
    entry = _entry(path, number, last)
    if not isinstance(entry.get("seq"), int):
        raise MedFedError("audit entry lacks its integer 'seq'", where=f"{path} line {number}",
                          fix="restore the log from a backup")
    return entry


def append(path: str | Path, event: str, **fields: Any) -> dict[str, Any]:
    """Append one event to the log at ``path`` (created with its parents if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            last = _last_entry(handle, path)
            entry = {"seq": (last["seq"] + 1) if last else 1,
                     "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                     "event": event, **fields, "prev": last["hash"] if last else GENESIS}
            entry["hash"] = _digest(entry)
            handle.seek(0, os.SEEK_END)
            handle.write(json.dumps(entry, sort_keys=True, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    return entry


def _log_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise MedFedError("audit log not found", where=str(path),
                          fix="coordinators find it in the state folder (audit.jsonl), sites "
                          "next to their node key")
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise MedFedError(f"audit log is binary, not JSON lines (byte offset {exc.start})",
                          where=str(path), fix="give the audit.jsonl MedFed wrote; restore it "
                          "from a backup if it was overwritten") from None


def _entry(path: Path, number: int, line: str) -> dict[str, Any]:
    where = f"{path} line {number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError:
        raise MedFedError("audit entry is not JSON", where=where,
                          fix="the log was edited; restore it from a backup") from None
    if not isinstance(entry, dict):
        raise MedFedError(f"audit entry is a JSON {type(entry).__name__}, not an object",
                          where=where, fix="the log was edited; restore it from a backup")
    if not isinstance(entry.get("hash"), str) or not isinstance(entry.get("prev"), str):
        raise MedFedError("audit entry lacks its 'prev'/'hash' chain fields", where=where,
                          fix="the log was edited or is not a MedFed audit log")
    return entry


def verify_log(path: str | Path) -> int:
    """Check the whole chain; returns the number of entries or raises naming the bad line."""
    path = Path(path)
    prev, count = GENESIS, 0
    for number, line in enumerate(_log_lines(path), start=1):
        if not line.strip():
            continue
        entry = _entry(path, number, line)
        if entry["prev"] != prev:
            raise MedFedError(f"audit entry does not follow line {number - 1} (chain broken: "
                              "an entry was removed, reordered or inserted)",
                              where=f"{path} line {number}", fix="treat the log as tampered "
                              "with; compare it with its backup")
        if entry["hash"] != _digest(entry):
            raise MedFedError("audit entry altered after it was written (hash mismatch)",
                              where=f"{path} line {number}", fix="treat the log as tampered "
                              "with; compare it with its backup")
        prev, count = entry["hash"], count + 1
    return count


def entries(path: str | Path) -> list[dict[str, Any]]:
    """Every entry of a log (empty when there is none yet); raises on a damaged line."""
    path = Path(path)
    if not path.is_file():
        return []
    return [_entry(path, number, line)
            for number, line in enumerate(_log_lines(path), start=1) if line.strip()]


def describe_arrays(arrays: Any) -> dict[str, Any]:
    """What left a site for an ArrayRecord: names, shapes, bytes and SHA-256 (never data)."""
    digest = hashlib.sha256()
    items, total = [], 0
    for name, array in arrays.items():
        data = bytes(array.data)
        digest.update(name.encode() + b"\0" + data)
        total += len(data)
        items.append({"name": name, "shape": list(array.shape), "dtype": array.dtype})
    return {"arrays": items, "bytes": total, "sha256": digest.hexdigest()}
