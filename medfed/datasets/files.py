"""Where dataset files live: ``$MEDFED_DATA_DIR/<dataset>/``, filled by checked downloads."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes


def data_dir(dataset: str) -> Path:
    """``$MEDFED_DATA_DIR/<dataset>`` (default ``~/.medfed/data/<dataset>``)."""
    root = os.environ.get("MEDFED_DATA_DIR") or Path.home() / ".medfed" / "data"
    return Path(root) / dataset


def fetch(url: str, dest: Path, sha256: str | None, timeout: float = 30.0) -> Path:
    """Download ``url`` to ``dest`` atomically; refuse it if its SHA-256 differs."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (https only)
            payload = response.read()
    except OSError as exc:
        raise MedFedError(
            f"{dest}: not found and the download from {url} failed ({exc.__class__.__name__}); "
            f"put the file there by hand or set MEDFED_DATA_DIR to a folder that has it"
        ) from None
    got = hashlib.sha256(payload).hexdigest()
    if sha256 and got != sha256.lower():
        raise MedFedError(f"{url}: SHA-256 {got} does not match the expected {sha256.lower()}; "
                          "the file was not saved (retry, or report a changed upstream file)")
    atomic_write_bytes(dest, payload)
    return dest


def ensure_file(dataset: str, filename: str, url: str | None, sha256: str | None) -> Path:
    """The local copy of a dataset file, downloading it (checked) when it is missing."""
    path = data_dir(dataset) / filename
    if path.is_file():
        return path
    if url is None:
        raise MedFedError(f"{path}: file not found; copy it there or set MEDFED_DATA_DIR")
    return fetch(url, path, sha256)


MAX_TABLE_BYTES = 1 << 30  # 1 GiB: ~10 million rows of a wide clinical export


def check_table_size(path: str | Path, limit: int = MAX_TABLE_BYTES) -> None:
    """Refuse a table file above ``limit`` bytes before reading it (pandas would need several
    times its size in memory; a sparse or runaway export ends in MemoryError instead)."""
    size = Path(path).stat().st_size
    if size > limit:
        raise MedFedError(f"table file is {size / 2**30:.2f} GiB, above the {limit / 2**30:g} "
                          "GiB limit", where=str(path),
                          fix="export only the columns and rows training needs, or split the "
                          "site's rows into several site folders")
