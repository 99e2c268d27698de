"""Per-round checkpoints of the global model, written atomically (safetensors + JSON)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from medfed.errors import MedFedError
from medfed.io import atomic_write_bytes, atomic_write_json

WEIGHTS = "global.safetensors"
STATE = "state.json"


def arrays_to_bytes(arrays: ArrayRecord) -> bytes:
    state = {k: v.contiguous() for k, v in arrays.to_torch_state_dict().items()}
    return st_save(state)


def save_checkpoint(folder: str | Path, server_round: int, arrays: ArrayRecord,
                    state: dict[str, Any]) -> None:
    """Weights first, then the JSON that names the round: a crash between them keeps the
    previous round's JSON, whose weights hash no longer matches, so the weights are re-read."""
    folder = Path(folder)
    payload = arrays_to_bytes(arrays)
    atomic_write_bytes(folder / WEIGHTS, payload)
    atomic_write_json(folder / STATE, {**state, "round": server_round})


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(weights, state) of a checkpoint folder; each kind of damage is one clear line."""
    folder = Path(folder)
    fix = "restore it from a backup or start a new run"
    if not (folder / STATE).is_file() or not (folder / WEIGHTS).is_file():
        raise MedFedError(f"no checkpoint here ({STATE} and {WEIGHTS} expected)",
                          where=str(folder), fix=fix)
    try:
        state = json.loads((folder / STATE).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MedFedError(f"checkpoint {STATE} is not JSON text", where=str(folder / STATE),
                          fix=fix) from None
    if not isinstance(state, dict) or not isinstance(state.get("round"), int):
        raise MedFedError(f"checkpoint {STATE} is not an object with an integer 'round'",
                          where=str(folder / STATE), fix=fix)
    try:
        weights = st_load((folder / WEIGHTS).read_bytes())
    except Exception as exc:  # safetensors raises its own SafetensorError on any damage
        raise MedFedError(f"checkpoint weights unreadable ({exc.__class__.__name__})",
                          where=str(folder / WEIGHTS), fix=fix) from None
    return weights, state
