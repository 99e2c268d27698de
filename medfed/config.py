"""Experiment configs: YAML files validated by pydantic, with ``--set a.b=value`` overrides."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from medfed.errors import MedFedError

# Flower run-config keys set by `medfed simulate` / `medfed run`, node-config keys set per site
RUN_EXPERIMENT = "experiment"  # the ExperimentConfig as JSON
RUN_ID = "medfed-run-id"  # MedFed's own run id: privacy ledgers are keyed by it
RUN_LEDGER_DIR = "privacy-ledger-dir"
RUN_OUTPUT_DIR = "output-dir"
RUN_EVALUATION_HOOK = "evaluation-hook"
NODE_PARTITION_ID = "partition-id"  # a virtual site's index (simulation)
NODE_DATA_PATH = "data-path"  # a hospital's site folder (real federation)
NODE_LEDGER_DIR = "privacy-ledger-dir"  # a hospital's own ledger folder


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Section):
    name: str = "breast-cancer"
    options: dict[str, Any] = Field(default_factory=dict)


class PartitionConfig(_Section):
    scheme: Literal["iid", "dirichlet", "quantity", "natural"] = "iid"
    sites: int = Field(5, ge=1, le=1000)
    alpha: float = Field(0.5, gt=0)
    column: str | None = None  # for scheme=natural on a csv: the column naming the hospital
    test_fraction: float = Field(0.3, gt=0, lt=1)
    min_site_size: int = Field(10, ge=2)
    seed: int | None = None  # defaults to the experiment seed


class ModelConfig(BaseModel):
    """``name`` plus the model's own keyword arguments (e.g. ``hidden: [64]``)."""

    model_config = ConfigDict(extra="allow")
    name: str = "mlp"


class StrategyConfig(BaseModel):
    """``name`` plus the Flower strategy's own keyword arguments (e.g. ``eta: 0.01``)."""

    model_config = ConfigDict(extra="allow")
    name: str = "fedavg"
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_sites: int = Field(2, ge=1)


class TrainConfig(_Section):
    local_epochs: int = Field(1, ge=1)
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: bool = True  # mixed precision (float16 autocast + GradScaler) when training on CUDA
    # image augmentation (MONAI, per sample, training only)
    augment: list[Literal["flip", "rotate90", "intensity", "noise"]] = Field(default_factory=list)


class PrivacyConfig(_Section):
    """Differential privacy: per-site DP-SGD (Opacus) with a cumulative (epsilon, delta) budget,
    or client-level central DP (Flower's fixed-clipping wrappers). See medfed/privacy/."""

    mode: Literal["none", "dp-sgd", "central"] = "none"
    epsilon: float = Field(1.0, gt=0)  # each site's total budget over all rounds and runs
    delta: float = Field(1e-5, gt=0, lt=1)  # must also be below 1/n (checked per site)
    max_grad_norm: float = Field(1.0, gt=0)  # per-sample clipping (dp-sgd)
    accountant: Literal["rdp", "prv"] = "rdp"
    noise_multiplier: float | None = Field(None, gt=0)  # fixed; default: planned from epsilon
    grad_sample_mode: Literal["auto", "ghost", "hooks"] = "auto"  # auto: ghost, else hooks
    ledger_dir: str | None = None  # per-site ledgers; simulate: <out>/privacy
    clipping: Literal["server", "client"] = "server"  # central: where updates are clipped
    clipping_norm: float = Field(1.0, gt=0)  # central: L2 bound on each site's update


class BaselinesConfig(_Section):
    centralized: bool = True
    local_only: bool = True


class ExperimentConfig(_Section):
    name: str | None = None
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    partition: PartitionConfig = Field(default_factory=PartitionConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    rounds: int = Field(10, ge=1)
    seed: int = 42
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    baselines: BaselinesConfig = Field(default_factory=BaselinesConfig)
    engine: Literal["inprocess", "ray"] = "inprocess"
    evaluate_every: int = Field(1, ge=1)

    @property
    def partition_seed(self) -> int:
        return self.seed if self.partition.seed is None else self.partition.seed

    def to_json(self) -> str:
        return self.model_dump_json()

    def model_options(self) -> dict[str, Any]:
        return dict(self.model.model_extra or {})

    def strategy_options(self) -> dict[str, Any]:
        return dict(self.strategy.model_extra or {})


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"strategy.name=fedadam"`` -> (["strategy", "name"], "fedadam"); values are YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise MedFedError(f"--set {text!r}: expected KEY=VALUE, e.g. --set strategy.name=fedadam")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for key in keys[:-1]:
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise MedFedError(f"--set {text!r}: {key!r} is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise MedFedError(f"{path}: config file not found (see configs/ for ready ones)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise MedFedError(f"{path}:{where}: not valid YAML ({exc.__class__.__name__}); "
                          "fix the syntax") from None
    if not isinstance(raw, dict):
        raise MedFedError(f"{path}: expected a mapping of sections (dataset, partition, ...)")
    return raw


def validate(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        more = f"; {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
        raise MedFedError(f"{source}: {loc}: {err['msg']}{shown}{more}") from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment config; errors name the file and key."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(raw, str(path))


def config_from_json(text: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate(json.loads(text))
