"""A model folder loaded for use: the network, its task and the preprocessing it was trained
with (the model card's ``preprocessing`` section)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from medfed.config import ExperimentConfig, config_from_json
from medfed.datasets.base import DataInfo
from medfed.errors import MedFedError
from medfed.tasks import get_task
from medfed.tasks.base import Task

WEIGHTS, CARD_JSON = "model.safetensors", "model_card.json"  # as in deploy/signing.py
BINARY_THRESHOLD = 0.5  # the operating point binary_metrics reports sensitivity/specificity at


@dataclass
class ModelBundle:
    """A verified model folder, ready to predict (``model`` is in eval mode)."""

    folder: Path
    card: dict[str, Any]
    cfg: ExperimentConfig
    info: DataInfo
    model: nn.Module

    @property
    def pre(self) -> dict[str, Any]:
        return self.card["preprocessing"]

    @property
    def task(self) -> Task:
        return get_task(self.info.task)

    @property
    def task_name(self) -> str:
        return self.info.task

    @property
    def is_image(self) -> bool:
        return len(self.info.input_shape) >= 3

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.pre.get("options") or {})

    @property
    def threshold(self) -> float | None:
        value = self.pre.get("threshold")
        return None if value is None else float(value)

    @property
    def class_names(self) -> list[str]:
        names = self.pre.get("class_names") or []
        return [str(n) for n in names] or [str(i) for i in range(self.info.n_classes)]

    @property
    def scaling(self) -> tuple[np.ndarray, np.ndarray] | None:
        scaling = self.pre.get("scaling")
        if not scaling:
            return None
        return (np.asarray(scaling["mean"], np.float32), np.asarray(scaling["std"], np.float32))

    def scale(self, x: np.ndarray) -> np.ndarray:
        """Rows scaled with the federation's training moments: (N, ...) float32."""
        from medfed.datasets.scaling import standardize

        scaling = self.scaling
        x = np.asarray(x, np.float32)
        return x if scaling is None else standardize(x, *scaling)


def default_threshold(task: str) -> float | None:
    """The operating threshold a task's reports use (None: argmax or a continuous risk)."""
    return BINARY_THRESHOLD if task in ("binary", "timeseries") else None


def read_card(folder: Path) -> dict[str, Any]:
    path = Path(folder) / CARD_JSON
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise MedFedError(f"{path}: missing; pass a model folder from `medfed simulate` "
                          "(OUT/model) or `medfed model download`") from None
    except json.JSONDecodeError:
        raise MedFedError(f"{path}: not JSON; download the model again") from None
    if "preprocessing" not in card:
        raise MedFedError(f"{path}: no preprocessing section (the model predates `medfed "
                          "predict`); re-run the training or re-register the model to record it")
    return card


def check_weights(folder: Path, card: dict[str, Any], payload: bytes) -> None:
    """The weights' SHA-256 against the card's: a check the MLflow pyfunc also runs, since
    `mlflow models serve` loads the folder without `medfed`'s signature check."""
    import hashlib

    expected = card.get("weights_sha256")
    if expected and hashlib.sha256(payload).hexdigest() != expected:
        raise MedFedError(f"{folder / WEIGHTS}: SHA-256 does not match the model card's "
                          "weights_sha256 (the weights were altered); do not use them, "
                          "download the model again")


def load_bundle(folder: str | Path, device: Any = None) -> ModelBundle:
    """Build the card's model and load its weights (call ``verify_model_dir`` first)."""
    from safetensors.torch import load as st_load

    from medfed.models import for_experiment
    from medfed.models.runtime import pick_device

    folder = Path(folder)
    card = read_card(folder)
    cfg = config_from_json(json.dumps(card["config"]))
    pre = card["preprocessing"]
    info = DataInfo(task=card["task"], input_shape=tuple(int(v) for v in card["input_shape"]),
                    n_classes=int(card["n_classes"]), standardize=bool(pre.get("scaling")))
    model = for_experiment(cfg, info)
    payload = (folder / WEIGHTS).read_bytes()
    check_weights(folder, card, payload)
    state = st_load(payload)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MedFedError(f"{folder / WEIGHTS}: weights do not fit the card's model "
                          f"{cfg.model.name} ({str(exc).splitlines()[0][:120]}); download the "
                          "model again") from None
    model.to(device if device is not None else pick_device(cfg.train.device)).eval()
    return ModelBundle(folder, card, cfg, info, model)
