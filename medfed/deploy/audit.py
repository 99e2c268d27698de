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


def _last_entry(handle) -> dict[str, Any] | None:
    handle.seek(0)
    last = None
    for line in handle:
        if line.strip():
            last = line
    return json.loads(last) if last else None


def append(path: str | Path, event: str, **fields: Any) -> dict[str, Any]:
    """Append one event to the log at ``path`` (created with its parents if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            last = _last_entry(handle)
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


def verify_log(path: str | Path) -> int:
    """Check the whole chain; returns the number of entries or raises naming the bad line."""
    path = Path(path)
    if not path.is_file():
        raise MedFedError(f"{path}: audit log not found; coordinators find it in the state "
                          "folder (audit.jsonl), sites next to their node key")
    prev, count = GENESIS, 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise MedFedError(f"{path}: line {number} is not JSON; the log was edited") from None
        if entry.get("prev") != prev:
            raise MedFedError(f"{path}: line {number} does not follow line {number - 1} (chain "
                              "broken: an entry was removed, reordered or inserted)")
        if entry.get("hash") != _digest(entry):
            raise MedFedError(f"{path}: line {number} was altered after it was written (hash "
                              "mismatch)")
        prev, count = entry["hash"], count + 1
    return count


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
