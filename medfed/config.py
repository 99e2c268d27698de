"""Experiment configs: YAML files validated by pydantic, with ``--set a.b=value`` overrides."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from medfed.errors import MedFedError

# Flower run-config keys set by `medfed simulate` / `medfed run`, node-config keys set per site
RUN_EXPERIMENT = "experiment"  # the ExperimentConfig as JSON
RUN_ID = "medfed-run-id"  # MedFed's own run id: privacy ledgers are keyed by it
RUN_LEDGER_DIR = "privacy-ledger-dir"
RUN_OUTPUT_DIR = "output-dir"
RUN_EVALUATION_HOOK = "evaluation-hook"
RUN_AUDIT_CANARIES = "privacy-audit-canaries"  # `medfed privacy audit`: CanarySpec JSON
NODE_PARTITION_ID = "partition-id"  # a virtual site's index (simulation)
NODE_DATA_PATH = "data-path"  # a hospital's site folder (real federation)
NODE_LEDGER_DIR = "privacy-ledger-dir"  # a hospital's own ledger folder


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetConfig(_Section):
    name: str = "breast-cancer"
    options: dict[str, Any] = Field(default_factory=dict)


class ShiftConfig(_Section):
    """A fixed scanner-like effect per virtual site on images (medfed/datasets/shift.py): each
    site draws once, from a seed derived from the partition seed, within these ranges."""

    gamma: tuple[float, float] = (0.6, 1.6)  # intensity gamma (contrast curve)
    contrast: tuple[float, float] = (0.7, 1.3)  # linear contrast around the image mean
    blur: tuple[float, float] = (0.0, 1.2)  # Gaussian blur sigma, pixels (resolution)
    noise: tuple[float, float] = (0.0, 0.08)  # Gaussian noise std (intensities in [0, 1])
    bias_field: tuple[float, float] = (0.0, 0.4)  # smooth multiplicative bias coefficient
    seed: int | None = None  # defaults to the partition seed


class PartitionConfig(_Section):
    scheme: Literal["iid", "dirichlet", "quantity", "natural"] = "iid"
    sites: int = Field(5, ge=1, le=1000)
    alpha: float = Field(0.5, gt=0)
    column: str | None = None  # for scheme=natural on a csv: the column naming the hospital
    test_fraction: float = Field(0.3, gt=0, lt=1)
    min_site_size: int = Field(10, ge=2)
    seed: int | None = None  # defaults to the experiment seed
    shift: ShiftConfig | None = None  # per-site acquisition effect on images (`true`: defaults)

    @field_validator("shift", mode="before")
    @classmethod
    def _shift_flag(cls, value: Any) -> Any:
        return ({} if value is True else None) if isinstance(value, bool) else value


class ModelConfig(BaseModel):
    """``name`` plus the model's own keyword arguments (e.g. ``hidden: [64]``)."""

    model_config = ConfigDict(extra="allow")
    name: str = "mlp"


class SecAggConfig(_Section):
    """``strategy.secure: secagg+`` (medfed/federation/secagg.py): each site's update is
    clipped to ``clipping_range`` per element, quantised to ``quantization_range`` levels and
    masked; ``num_shares``: the sites each site shares its keys with, itself included (null:
    every sampled site); ``reconstruction_threshold``: shares needed to rebuild a dropped
    site's masks (null: a majority of ``num_shares``)."""

    num_shares: int | None = Field(None, ge=3)
    reconstruction_threshold: int | None = Field(None, ge=2)
    clipping_range: float = Field(8.0, gt=0)
    quantization_range: int = Field(2**24, ge=2**8, le=2**30)


# strategies whose aggregate is a weighted sum of the updates (secure aggregation can serve
# them); the others (median, trimmed mean, Krum) need every site's update in the clear
SECURE_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm",
                     "fedavg-partial")


class StrategyConfig(BaseModel):
    """``name`` plus the Flower strategy's own keyword arguments (e.g. ``eta: 0.01``)."""

    model_config = ConfigDict(extra="allow")
    name: str = "fedavg"
    fraction_train: float = Field(1.0, gt=0, le=1)
    fraction_evaluate: float = Field(1.0, ge=0, le=1)
    min_sites: int = Field(2, ge=1)
    secure: Literal["none", "secagg+"] = "none"  # secure aggregation: the sum, never a site's
    secagg: SecAggConfig = Field(default_factory=SecAggConfig)


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
    # who one DP-SGD sample is: auto = what the data establishes (patient or ICU stay);
    # row only when set explicitly (patients with several rows are then not protected)
    unit: Literal["auto", "patient", "stay", "row"] = "auto"
    secure_mode: bool = False  # dp-sgd noise from a CSPRNG (Opacus; needs torchcsprng)
    ledger_dir: str | None = None  # per-site ledgers; simulate: <out>/privacy
    clipping: Literal["server", "client"] = "server"  # central: where updates are clipped
    clipping_norm: float = Field(1.0, gt=0)  # central: L2 bound on each site's update
    # a site sends no statistic (feature sums, test metrics) over a cell of fewer patients
    min_count: int = Field(10, ge=1)
    summary_epsilon: float = Field(0.1, gt=0)  # with a mode: noise on count-like feature sums


PersonalArm = Literal["finetune", "fedbn", "ditto", "perhead"]


class FinetuneConfig(_Section):
    steps: int | None = Field(100, ge=1)  # local optimizer steps (FLamby: 100); or epochs:
    epochs: int | None = Field(None, ge=1)  # when set, overrides steps
    lr: float | None = Field(None, gt=0)  # default: train.lr


class DittoConfig(_Section):
    lam: float = Field(0.1, ge=0)  # weight of lam/2 ||w_personal - w_global||^2
    local_epochs: int = Field(1, ge=1)  # personal-model epochs per round
    lr: float | None = Field(None, gt=0)  # default: train.lr


class PerheadConfig(_Section):
    head: list[str] | None = None  # parameter-name prefixes kept on site; default: last layer


class PersonalizationConfig(_Section):
    """Options of the personalised arms named in ``personalize``."""

    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    ditto: DittoConfig = Field(default_factory=DittoConfig)
    perhead: PerheadConfig = Field(default_factory=PerheadConfig)


class BaselinesConfig(_Section):
    centralized: bool = True
    local_only: bool = True


class BenchmarkConfig(_Section):
    """`medfed benchmark`'s defaults: ``grid`` (config key -> values, one cell per combination)
    and ``seeds`` (a count: seeds 0..n-1, or a list); --grid/--seeds on the command line win."""

    grid: dict[str, list[Any]] = Field(default_factory=dict)
    seeds: Annotated[int, Field(ge=1, le=100)] | list[int] = 5
    jobs: int | None = Field(None, ge=1)  # parallel processes (default: one per core)
    # "once": local-only and centralized only in the first grid combination of each seed (for
    # grids over strategy/personalize keys only, which do not change them); "every": each cell
    baselines: Literal["every", "once"] = "every"


class StatsPrivacyConfig(_Section):
    """Gaussian noise on every statistic `medfed stats` releases: one spend of (epsilon, delta)
    per query in each site's privacy ledger. ``bounds``: a clipping range per numeric variable
    (only those variables are summarised; their histogram bins span the range)."""

    epsilon: float = Field(gt=0)
    delta: float = Field(1e-5, gt=0, lt=1)
    bounds: dict[str, tuple[float, float]] = Field(default_factory=dict)


class StatsConfig(_Section):
    """`medfed stats`: the federated statistics query and each site's release rules."""

    min_count: int = Field(10, ge=1)  # a site sends any count below it as "<min_count"
    bins: int = Field(10, ge=2, le=200)  # histogram bins per numeric variable
    edges: dict[str, list[float]] = Field(default_factory=dict)  # fixed bins per variable
    variables: list[str] | None = None  # default: every variable the sites hold
    max_levels: int = Field(12, ge=2, le=100)  # more distinct values: numeric, or not shared
    km_intervals: int = Field(12, ge=2, le=100)  # Kaplan-Meier follow-up intervals
    flag_distance: float = Field(0.3, gt=0, le=1)  # KS distance on histograms that flags a site
    privacy: StatsPrivacyConfig | None = None


class EngineOptions(_Section):
    """``engine: ray``: what each virtual site may use (Flower's backend ``client_resources``;
    fractional GPUs let several sites share one) and an existing Ray cluster to run on
    (``address``, e.g. ``10.0.0.5:6379``; default: ``RAY_ADDRESS``, else a local Ray)."""

    num_cpus: int | None = Field(None, ge=1)  # default: Flower's (2 CPUs per site)
    num_gpus: float | None = Field(None, ge=0)  # e.g. 0.25: four sites per GPU
    address: str | None = None


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
    stats: StatsConfig = Field(default_factory=StatsConfig)
    engine: Literal["inprocess", "ray"] = "inprocess"
    engine_options: EngineOptions = Field(default_factory=EngineOptions)
    evaluate_every: int = Field(1, ge=1)
    personalize: list[PersonalArm] = Field(default_factory=list)  # personalised arms to run
    personalization: PersonalizationConfig = Field(default_factory=PersonalizationConfig)
    benchmark: BenchmarkConfig = Field(default_factory=BenchmarkConfig)  # `medfed benchmark`

    @field_validator("personalize", mode="before")
    @classmethod
    def _arm_names(cls, value: Any) -> Any:
        """``none``/null -> []; ``"ditto"`` or ``"finetune,ditto"`` -> a list."""
        if value is None:
            return []
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, list):
            value = [v for v in value if str(v).lower() != "none"]
            return list(dict.fromkeys(value))
        return value

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
        raise MedFedError("override is not KEY=VALUE", where=f"--set {text!r}",
                          fix="write it as KEY=VALUE, e.g. --set strategy.name=fedadam")
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
                raise MedFedError(f"{key!r} is a value, not a section", where=f"--set {text!r}",
                                  fix=f"set {key} itself, e.g. --set {key}=VALUE")
            node = child
        node[keys[-1]] = value
    return raw


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a mapping; a missing, non-UTF-8 or malformed file is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise MedFedError("config file not found" if not path.exists() else
                          "config path is a folder, not a file", where=str(path),
                          fix="give a YAML file (see configs/ for ready ones)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MedFedError(f"config file is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                          f"at offset {exc.start})", where=str(path),
                          fix="save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark else str(path)
        raise MedFedError(f"not valid YAML ({getattr(exc, 'problem', None) or 'syntax'})",
                          where=where, fix="fix the syntax (indentation, colons, quotes)"
                          ) from None
    if not isinstance(raw, dict):
        raise MedFedError(f"expected a mapping of sections, got a {type(raw).__name__}",
                          where=str(path), fix="write `key: value` lines (dataset:, "
                          "partition:, model:, ...) as in configs/")
    return raw


def validate(raw: dict[str, Any], source: str = "config") -> ExperimentConfig:
    """The experiment config, or one line naming the first bad key, its file and the fix."""
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        raise _config_error(errors[0], source, len(errors) - 1) from None
    check_options(cfg, source)
    check_secure(cfg, source)
    return cfg


def check_secure(cfg: ExperimentConfig, source: str = "config") -> None:
    """``strategy.secure: secagg+`` only where the aggregate is a weighted sum of updates."""
    strategy, secagg = cfg.strategy, cfg.strategy.secagg
    if strategy.secure == "none":
        return
    if strategy.name not in SECURE_STRATEGIES:
        raise MedFedError(f"strategy {strategy.name!r} needs every site's update in the clear, "
                          "secure aggregation reveals only their sum",
                          where=f"{source}: strategy.secure",
                          fix=f"use one of {', '.join(SECURE_STRATEGIES)}, or strategy.secure: "
                              "none")
    if cfg.privacy.mode == "central" and cfg.privacy.clipping == "server":
        raise MedFedError("central DP with server-side clipping clips each site's update on "
                          "the coordinator, which secure aggregation hides",
                          where=f"{source}: strategy.secure",
                          fix="set privacy.clipping: client (sites clip before masking)")
    shares, threshold = secagg.num_shares, secagg.reconstruction_threshold
    if shares is not None and threshold is not None and threshold > shares:
        raise MedFedError(f"reconstruction_threshold {threshold} exceeds num_shares {shares}",
                          where=f"{source}: strategy.secagg.reconstruction_threshold",
                          fix=f"give at most {shares}")


def load_config(path: str | Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read, override and validate an experiment config; errors name the file and key."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    return validate(raw, str(path))


def config_from_json(text: str, source: str = "experiment JSON") -> ExperimentConfig:
    """A config MedFed wrote itself (run state, messages); damage is one clear line."""
    try:
        raw = json.loads(text)
    except (json.JSONDecodeError, TypeError):
        raise MedFedError("stored config is not JSON", where=source,
                          fix="restore the file from a backup or start a new run") from None
    if not isinstance(raw, dict):
        raise MedFedError("stored config is not a JSON object", where=source,
                          fix="restore the file from a backup or start a new run")
    return validate(raw, source)


# --- one line per config problem --------------------------------------------------------------

_FIXES = {
    "int_parsing": "give a whole number", "int_type": "give a whole number",
    "int_from_float": "give a whole number", "float_parsing": "give a number",
    "float_type": "give a number", "bool_parsing": "give true or false",
    "bool_type": "give true or false", "string_type": "give text (quote it in YAML)",
    "list_type": "give a list, e.g. [32, 16]", "tuple_type": "give a list, e.g. [0, 1]",
    "dict_type": "give a mapping (indented `key: value` lines)",
    "model_type": "give a mapping (indented `key: value` lines)",
    "model_attributes_type": "give a mapping (indented `key: value` lines)",
    "finite_number": "give a finite number", "missing": "add this key",
}


def _loc(parts: tuple | list) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _fix(err: dict[str, Any]) -> str:
    ctx, kind = err.get("ctx") or {}, err["type"]
    bounds = {"greater_than": f"give a value above {ctx.get('gt')}",
              "greater_than_equal": f"give a value of at least {ctx.get('ge')}",
              "less_than": f"give a value below {ctx.get('lt')}",
              "less_than_equal": f"give a value of at most {ctx.get('le')}",
              "literal_error": f"choose one of {ctx.get('expected')}",
              "too_short": f"give at least {ctx.get('min_length')} item(s)",
              "too_long": f"give at most {ctx.get('max_length')} item(s)"}
    return bounds.get(kind) or _FIXES.get(kind, "fix the value (see configs/ for examples)")


def closest(name: str, allowed: list[str]) -> str:
    """`` did you mean 'x'?`` for the nearest allowed name (difflib), or ``""``."""
    match = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}? " if match else ""


def unknown_key(key: str, allowed: list[str], where: str) -> MedFedError:
    """``unknown key 'roundz' (WHERE): did you mean 'rounds'? allowed: ...``"""
    return MedFedError(f"unknown key {key!r}", where=where,
                       fix=f"{closest(key, allowed)}allowed here: {', '.join(allowed)}")


def _section_keys(loc: tuple) -> list[str]:
    model: Any = ExperimentConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if annotation is None:
            return []
        model = next((a for a in (annotation, *getattr(annotation, "__args__", ()))
                      if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return []
    return list(model.model_fields)


def _config_error(err: dict[str, Any], source: str, more: int) -> MedFedError:
    loc = tuple(err["loc"])
    where = f"{source}: {_loc(loc)}"
    tail = f" ({more} more problem(s) after this one)" if more else ""
    if err["type"] == "extra_forbidden":
        error = unknown_key(str(loc[-1]), _section_keys(loc), where)
        return MedFedError(f"{error}{tail}")
    value = err.get("input")
    shown = "" if isinstance(value, dict) or err["type"] == "missing" else f", got {value!r}"
    message = err["msg"][:1].lower() + err["msg"][1:]
    return MedFedError(f"{message}{shown}", where=where, fix=_fix(err) + tail)


# --- typed options of models, strategies and datasets (free-form sections) -------------------

_POS_INT = Annotated[int, Field(gt=0, strict=False)]
_SIZES = Annotated[list[_POS_INT], Field(min_length=1)]
_FRACTION = Annotated[float, Field(ge=0, lt=1)]
_POS_FLOAT = Annotated[float, Field(gt=0)]
_NONNEG_FLOAT = Annotated[float, Field(ge=0)]
_NONNEG_INT = Annotated[int, Field(ge=0)]

# each model's options (the builder's keyword arguments); tests check them against the builders
MODEL_OPTIONS: dict[str, dict[str, Any]] = {
    "logreg": {}, "cox": {},
    "mlp": {"hidden": list[_POS_INT], "dropout": _FRACTION},
    "cox_mlp": {"hidden": list[_POS_INT], "dropout": _FRACTION},
    "gru": {"hidden": _POS_INT, "layers": _POS_INT, "dropout": _FRACTION},
    "small_cnn": {"channels": _SIZES, "dropout": _FRACTION,
                  "norm": Literal["batch", "group"], "dp": bool},
    "densenet121": {"dropout": _FRACTION, "dp": bool},
    "resnet18": {"dp": bool}, "resnet50": {"dp": bool},
    "unet": {"channels": _SIZES, "strides": _SIZES, "num_res_units": _NONNEG_INT,
             "dropout": _FRACTION, "roi_size": _SIZES | None, "dp": bool},
    "multimodal": {"image_shape": _SIZES, "modalities": list[str], "image_encoder": str,
                   "encoder_options": dict[str, Any] | None, "embed": _POS_INT,
                   "clinical_hidden": list[_POS_INT], "fusion_hidden": _POS_INT,
                   "dropout": _FRACTION, "modality_dropout": _FRACTION},
}
_ADAPTIVE = {"eta": _POS_FLOAT, "eta_l": _POS_FLOAT, "beta_1": _FRACTION, "beta_2": _FRACTION,
             "tau": _POS_FLOAT}
# each Flower strategy's own options; tests check them against the classes' signatures
STRATEGY_OPTIONS: dict[str, dict[str, Any]] = {
    "fedavg": {}, "fedmedian": {}, "fedavg-partial": {},
    "fedprox": {"proximal_mu": _NONNEG_FLOAT},
    "fedadam": _ADAPTIVE, "fedyogi": _ADAPTIVE,
    "fedadagrad": {k: _ADAPTIVE[k] for k in ("eta", "eta_l", "tau")},
    "fedavgm": {"server_learning_rate": _POS_FLOAT, "server_momentum": _FRACTION},
    "fedtrimmedavg": {"beta": Annotated[float, Field(ge=0, lt=0.5)]},
    "krum": {"num_malicious_nodes": _NONNEG_INT},
}
# dataset options that mean the same for every dataset that takes them
DATASET_OPTIONS: dict[str, Any] = {
    "spatial_size": Annotated[list[_POS_INT], Field(min_length=2, max_length=3)],
    "spacing": Annotated[list[_POS_FLOAT], Field(min_length=2, max_length=3)] | None,
    "test_fraction": Annotated[float, Field(gt=0, lt=1)],
    "sites": _POS_INT, "size": _POS_INT, "slice_axis": Annotated[int, Field(ge=0, le=2)],
    "volume_index": _NONNEG_INT | None, "as_slices": bool,
    "allowed_roots": list[str],
}


def check_options(cfg: ExperimentConfig, source: str = "config") -> None:
    """Type-check the free-form option sections (model, strategy, dataset.options) in place."""
    model, strategy = cfg.model, cfg.strategy
    if model.name in MODEL_OPTIONS:
        _typed(model.model_extra or {}, MODEL_OPTIONS[model.name], f"{source}: model",
               f"model {model.name!r}")
    if strategy.name in STRATEGY_OPTIONS:
        drop_other_strategy_options(strategy, source)
        _typed(strategy.model_extra or {}, STRATEGY_OPTIONS[strategy.name],
               f"{source}: strategy", f"strategy {strategy.name!r}")
    known = {k: v for k, v in cfg.dataset.options.items() if k in DATASET_OPTIONS}
    _typed(known, DATASET_OPTIONS, f"{source}: dataset.options", "")
    cfg.dataset.options.update(known)


def drop_other_strategy_options(strategy: StrategyConfig, source: str = "config") -> None:
    """Drop (with a warning) options that belong to another strategy, e.g. fedadam's ``eta``
    after ``--set strategy.name=fedavg`` on a fedadam config; unknown keys still fail."""
    from medfed.errors import warn

    own = STRATEGY_OPTIONS[strategy.name]
    extra = strategy.model_extra or {}
    foreign = [k for k in extra if k not in own
               and any(k in options for options in STRATEGY_OPTIONS.values())]
    for key in foreign:
        del extra[key]
    if foreign:
        warn(f"strategy option(s) {foreign} belong to another strategy; dropped",
             where=f"{source}: strategy {strategy.name!r}",
             fix=f"{strategy.name} takes {', '.join(own) or 'no options'}")


def _typed(options: dict[str, Any], types: dict[str, Any], where: str, owner: str) -> None:
    for key in list(options):
        if key not in types:
            raise unknown_key(key, [*types] or ["(none)"], f"{where}.{key}, {owner}")
        try:
            options[key] = TypeAdapter(types[key]).validate_python(options[key])
        except ValidationError as exc:
            err = exc.errors()[0]
            raise _config_error({**err, "loc": (*where.split(": ", 1)[-1].split("."), key,
                                                *err["loc"])},
                                where.split(": ", 1)[0], 0) from None
