"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from medfed.errors import MedFedError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename; a folder that
    cannot be written is one clear error (nothing is left behind)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _unwritable(path, exc) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _unwritable(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _unwritable(path: Path, exc: OSError) -> MedFedError:
    return MedFedError(f"cannot write {path.name} ({exc.strerror or exc.__class__.__name__})",
                       where=str(path), fix="give a path in an existing, writable folder "
                       "(not under a file)")


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --- output paths: checked before anything is computed or written ---------------------------


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def _check_writable_folder(folder: Path, option: str, path: Path) -> None:
    if not folder.is_dir():
        raise MedFedError(f"{folder} is a file, not a folder", where=f"{option} {path}",
                          fix="choose a path whose parent folders are folders")
    read_only = not os.access(folder, os.W_OK) or not folder.stat().st_mode & 0o222
    if read_only:  # mode bits too: root may write anywhere, but a read-only mark is intent
        raise MedFedError(f"folder {folder} is read-only", where=f"{option} {path}",
                          fix="choose a writable folder or change its permissions")


def check_output_dir(path: str | Path, option: str = "--out", *, empty: bool = False) -> Path:
    """Refuse an output folder that is a file, lies under a file or is read-only; with
    ``empty``, refuse one that already holds files. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise MedFedError("output folder is an existing file", where=f"{option} {path}",
                          fix="give a folder path (new or existing), not a file")
    if empty and path.is_dir() and any(path.iterdir()):
        raise MedFedError("output folder is not empty", where=f"{option} {path}",
                          fix="give a new or empty folder (nothing is overwritten)")
    _check_writable_folder(_nearest_existing(path), option, path)
    return path


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """Refuse an output file path that is a folder, lies under a file or is read-only."""
    path = Path(path)
    if path.is_dir():
        raise MedFedError("output path is a folder", where=f"{option} {path}",
                          fix="give a file name, e.g. montage.png")
    _check_writable_folder(_nearest_existing(path.parent), option, path)
    return path


@contextmanager
def staged_dir(out: str | Path, option: str = "OUT") -> Iterator[Path]:
    """A temporary folder next to ``out``; on success its entries move into ``out`` (none may
    exist there yet), on any error it is removed: a refused write leaves nothing behind."""
    out = Path(out)
    check_output_dir(out, option)
    parent = _nearest_existing(out.parent)
    stage = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        yield stage
        clashes = [out / p.name for p in stage.iterdir() if (out / p.name).exists()]
        if clashes:
            raise MedFedError(f"{clashes[0]} already exists", where=f"{option} {out}",
                              fix="choose a new or empty folder (nothing is overwritten)")
        out.mkdir(parents=True, exist_ok=True)
        for entry in sorted(stage.iterdir()):
            os.replace(entry, out / entry.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
