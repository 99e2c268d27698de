"""Round-level checkpoints of a deployed run, and resuming from them.

After every completed round ONE file, ``round.safetensors``, is replaced atomically in the
run's state folder: the global model (``global/<name>``), the strategy's own state
(``strategy/<attr>/<key>``: FedAdam/FedYogi/FedAdagrad moments ``m_t``/``v_t``, FedAvgM's
``momentum_vector``...) and, in its metadata, the round number, the history and the site
summary (shapes, federated feature scaling). A crash leaves the previous round's file whole;
a resumed run starts at the next round, so no round is run twice or skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord
from pydantic import BaseModel, Field, Json, ValidationError
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save

from medfed.errors import MedFedError
from medfed.federation.rounds import FederationSummary, ResumePoint
from medfed.io import atomic_write_bytes

ROUND_FILE = "round.safetensors"
STRATEGY_ATTRS = ("m_t", "v_t", "momentum_vector", "current_arrays")


def _arrays_numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: np.ascontiguousarray(v.numpy()) for k, v in arrays.items()}


def strategy_state(strategy: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The strategy's tensors keyed ``strategy/<attr>/<key>`` and each attribute's kind."""
    tensors: dict[str, np.ndarray] = {}
    kinds: dict[str, str] = {}
    for attr in STRATEGY_ATTRS:
        value = getattr(strategy, attr, None)
        if value is None:
            continue
        if isinstance(value, ArrayRecord):
            kinds[attr], items = "record", _arrays_numpy(value).items()
        elif isinstance(value, dict):
            kinds[attr], items = "dict", value.items()
        elif isinstance(value, list):
            kinds[attr], items = "list", ((str(i), v) for i, v in enumerate(value))
        else:
            continue
        for key, array in items:
            tensors[f"strategy/{attr}/{key}"] = np.ascontiguousarray(np.asarray(array))
    return tensors, kinds


def restore_strategy(strategy: Any, state: dict[str, Any]) -> None:
    """Put saved moments back on a freshly built strategy (inverse of ``strategy_state``)."""
    tensors, kinds = state.get("tensors", {}), state.get("kinds", {})
    for attr, kind in kinds.items():
        prefix = f"strategy/{attr}/"
        items = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if kind == "record":
            value: Any = ArrayRecord({k: torch.from_numpy(v.copy()) for k, v in items.items()})
        elif kind == "list":
            value = [items[str(i)] for i in range(len(items))]
        else:
            value = dict(items)
        setattr(strategy, attr, value)


def _summary_json(summary: FederationSummary) -> dict[str, Any]:
    return {"task": summary.task, "input_shape": list(summary.input_shape),
            "n_classes": summary.n_classes, "n_train": summary.n_train,
            "scaling": {k: list(v) if isinstance(v, list) else v
                        for k, v in summary.scaling.items()}}


def _summary_from(raw: dict[str, Any]) -> FederationSummary:
    return FederationSummary(task=raw["task"], input_shape=tuple(raw["input_shape"]),
                             n_classes=int(raw["n_classes"]), n_train=int(raw["n_train"]),
                             scaling=ConfigRecord(raw.get("scaling") or {}))


def save_round(folder: str | Path, server_round: int, arrays: ArrayRecord, strategy: Any,
               summary: FederationSummary, history: list[dict[str, Any]]) -> Path:
    """Atomically replace the run's round checkpoint with round ``server_round``."""
    model = _arrays_numpy(arrays)
    tensors, kinds = strategy_state(strategy)
    payload = {f"global/{k}": v for k, v in model.items()} | tensors
    metadata = {"round": str(server_round), "order": json.dumps(list(model)),
                "kinds": json.dumps(kinds), "summary": json.dumps(_summary_json(summary)),
                "history": json.dumps(history, default=float)}
    path = Path(folder) / ROUND_FILE
    atomic_write_bytes(path, np_save(payload, metadata=metadata))
    return path


class _Summary(BaseModel):
    task: str
    input_shape: list[int]
    n_classes: int
    n_train: int
    scaling: dict[str, Any] | None = None


class _RoundMeta(BaseModel):
    """The metadata of ``round.safetensors`` (every value is a string holding JSON)."""

    round: Annotated[int, Field(ge=1)]
    order: Json[list[str]]
    kinds: Json[dict[str, Literal["record", "dict", "list"]]]
    summary: Json[_Summary]
    history: Json[list[dict[str, Any]]]


def _damaged(path: Path, what: str) -> MedFedError:
    return MedFedError(f"round checkpoint {what}", where=str(path),
                       fix="restore the run's state folder from a backup, or start a new run "
                       "with `medfed run CONFIG`")


def _read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors = np_load(path.read_bytes())
        with safe_open(str(path), framework="numpy") as handle:
            meta = handle.metadata()
    except Exception as exc:  # safetensors raises its own SafetensorError on any damage
        raise _damaged(path, f"is not a readable safetensors file ({exc.__class__.__name__}: "
                       "garbage or cut short)") from None
    if not meta:
        raise _damaged(path, "has no metadata (round, history): not written by MedFed")
    return tensors, meta


def load_round(folder: str | Path) -> ResumePoint:
    """The last completed round of a run; one clear line when there is none or it is broken
    (unreadable file, missing or mistyped metadata, missing arrays)."""
    path = Path(folder) / ROUND_FILE
    if not path.is_file():
        raise MedFedError("no completed round to resume from", where=str(path),
                          fix="start the run again with `medfed run CONFIG`")
    tensors, raw = _read_checkpoint(path)
    try:
        meta = _RoundMeta.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise _damaged(path, f"metadata {field!r} is damaged ({err['msg'].lower()})") from None
    missing = [k for k in meta.order if f"global/{k}" not in tensors]
    if missing:
        raise _damaged(path, f"lacks the model array {missing[0]!r}")
    arrays = ArrayRecord({k: torch.from_numpy(tensors[f"global/{k}"].copy()) for k in meta.order})
    return ResumePoint(round=meta.round, arrays=arrays,
                       summary=_summary_from(meta.summary.model_dump()), history=meta.history,
                       strategy_state={"kinds": dict(meta.kinds),
                                       "tensors": {k: v for k, v in tensors.items()
                                                   if k.startswith("strategy/")}})
