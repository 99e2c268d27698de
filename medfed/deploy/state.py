"""Typed reading of the coordinator's state files: ``server.json``, ``nodes.json`` and each
run's ``status.json`` (and ``mark_interrupted``, the one status `medfed run` writes itself).
A damaged file is one line per kind of damage (binary, not JSON, not an object, a field of
the wrong type), never a traceback deep inside a command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, RootModel, ValidationError

from medfed.errors import MedFedError

Model = TypeVar("Model", bound=BaseModel)


class ServerState(BaseModel):
    """``STATE/server.json``, written by `medfed server start`."""

    model_config = ConfigDict(extra="allow")
    address: str
    certs: str | None = None
    insecure: bool = False
    pid: int | None = None


class NodeEntry(BaseModel):
    """One registered hospital in ``STATE/nodes.json``."""

    model_config = ConfigDict(extra="allow")
    node_id: str
    key_sha256: str
    public_key: str = ""


class NodeRegistry(RootModel[dict[str, NodeEntry]]):
    """``STATE/nodes.json``: hospital name -> its entry."""


class RunStatus(BaseModel):
    """``STATE/runs/RUN_ID/status.json``, written by the coordinator."""

    model_config = ConfigDict(extra="allow")
    status: Literal["running", "finished", "failed", "interrupted"]
    run_id: str
    flower_run_id: str | None = None
    error: str | None = None


def read_json_file(path: Path, what: str, fix: str) -> Any:
    """The JSON in ``path``; unreadable, binary or malformed content is one clear line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MedFedError(f"{what} unreadable ({exc.strerror})", where=str(path), fix=fix
                          ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MedFedError(f"{what} is binary, not JSON text", where=str(path), fix=fix) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MedFedError(f"{what} is not valid JSON ({exc.msg} at line {exc.lineno})",
                          where=str(path), fix=fix) from None


def parse_state(path: Path, model: type[Model], what: str, fix: str) -> Model:
    """``path`` read and checked against ``model``: one message per kind of damage."""
    raw = read_json_file(path, what, fix)
    if not isinstance(raw, dict):
        raise MedFedError(f"{what} is a JSON {type(raw).__name__}, not an object",
                          where=str(path), fix=fix)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise MedFedError(f"{what} has a bad field {field!r} ({err['msg'].lower()})",
                          where=str(path), fix=fix) from None


def read_server(state: Path) -> ServerState:
    """The running coordinator's ``server.json`` (address, certificates, insecure)."""
    path = state / "server.json"
    if not path.is_file():
        raise MedFedError("coordinator not started here (no server.json)", where=str(path),
                          fix=f"start it first: `medfed server start --certs certs/ --state "
                          f"{state}`, or pass the right --state")
    return parse_state(path, ServerState, "server state", "restart the coordinator with "
                       "`medfed server start` (it rewrites server.json)")


def read_nodes(state: Path) -> dict[str, NodeEntry]:
    """The registered hospitals (empty when none is registered yet)."""
    path = state / "nodes.json"
    if not path.is_file():
        return {}
    return parse_state(path, NodeRegistry, "node registry", "restore nodes.json from a backup "
                       "(every hospital must then be registered again if none exists)").root


def read_status(run_dir: Path) -> RunStatus | None:
    """A run's ``status.json``; None when the run never started."""
    path = run_dir / "status.json"
    if not path.is_file():
        return None
    return parse_state(path, RunStatus, "run status", "restore status.json from a backup, or "
                       "delete it to resume from the last checkpoint (round.safetensors)")


def mark_interrupted(run_dir: Path, reason: str = "stopped with Ctrl-C") -> None:
    """``status.json`` says ``interrupted`` (atomically), unless the run already ended."""
    from medfed.io import atomic_write_json

    path = run_dir / "status.json"
    try:
        current = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        current = {}
    if isinstance(current, dict) and current.get("status") == "finished":
        return
    previous = current if isinstance(current, dict) else {}
    atomic_write_json(path, {**previous, "status": "interrupted", "run_id": run_dir.name,
                             "error": reason})


def was_interrupted(run_dir: Path) -> bool:
    """True when `medfed run` recorded that it stopped this run (Ctrl-C)."""
    try:
        return json.loads((run_dir / "status.json").read_text()).get("status") == "interrupted"
    except (OSError, ValueError, AttributeError):
        return False
