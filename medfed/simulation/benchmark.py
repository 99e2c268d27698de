"""``medfed benchmark``: one simulation per cell of a grid × seeds, resumable, in parallel.

A cell is one combination of the grid's values (``--grid strategy.name=fedavg,fedprox``) and
one seed (seed i sets ``seed``). Every cell is validated before the first one runs; each
finished cell is written atomically to ``<out>/cells/<cell>/cell.json`` (its report) and is
never recomputed: a second run reuses it, unless the config it was computed from changed, which
stops the benchmark before any work. The summary (tables, plots, paired comparison, MLflow) is
rendered by ``medfed.reports.benchmark``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml

from medfed.config import ExperimentConfig, config_from_json, load_config
from medfed.errors import MedFedError, MedFedWarning
from medfed.io import atomic_write_json
from medfed.simulation.runner import check_config, run_simulation

CELL_FILE = "cell.json"
CellFn = Callable[[dict[str, Any], bool], None]  # (cell record, reused from disk)


@dataclass(frozen=True)
class Cell:
    """One simulation of the benchmark: its grid values, its seed and its validated config."""

    name: str  # folder under <out>/cells
    group: tuple[tuple[str, str], ...]  # (grid key, value label), in grid order
    seed: int
    overrides: tuple[str, ...]
    config_json: str
    digest: str  # what the cell's result depends on (config less engine and benchmark)


@dataclass(frozen=True)
class Plan:
    """Every cell of a benchmark, validated; nothing has run yet."""

    config: Path
    out: Path
    grid: dict[str, list[str]]  # key -> value labels
    seeds: list[int]
    cells: list[Cell]
    dataset: str
    jobs: int | None

    def done(self) -> list[Cell]:
        return [c for c in self.cells if (self.out / "cells" / c.name / CELL_FILE).is_file()]


def parse_grid(texts: list[str]) -> dict[str, list[Any]]:
    """``["strategy.name=fedavg,fedprox"]`` -> ``{"strategy.name": ["fedavg", "fedprox"]}``
    (each value read as YAML, so ``0.1`` is a number)."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, values = text.partition("=")
        items = [v.strip() for v in values.split(",") if v.strip()]
        key = key.strip()
        if not sep or not key or not items:
            raise MedFedError("grid is not KEY=V1,V2,...", where=f"--grid {text!r}",
                              fix="write e.g. --grid strategy.name=fedavg,fedprox,fedadam")
        if key in grid:
            raise MedFedError(f"grid key {key!r} given twice", where=f"--grid {text!r}",
                              fix="give each key once with all its values")
        grid[key] = [_yaml_value(v) for v in items]
    return grid


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_seeds(text: str | int | list[int]) -> list[int]:
    """``5`` -> seeds 0..4; ``"1,2,3"`` or ``[1, 2, 3]`` -> those seeds."""
    if isinstance(text, list):
        seeds = [int(s) for s in text]
    elif isinstance(text, int) or re.fullmatch(r"\s*\d+\s*", str(text)):
        seeds = list(range(int(text)))
    else:
        try:
            seeds = [int(s) for s in str(text).split(",") if s.strip()]
        except ValueError:
            seeds = []
    if not seeds or len(set(seeds)) != len(seeds):
        raise MedFedError(f"seeds {text!r}: expected a count or distinct whole numbers",
                          where="--seeds", fix="write e.g. --seeds 5 (seeds 0-4) or --seeds 1,2,3")
    return seeds


def value_label(value: Any, full: bool = False) -> str:
    """A grid value as shown in tables: a mapping by its ``name`` (``fedprox``), or in full
    (``fedprox(proximal_mu=1.0)``) when ``full`` or when it has no name."""
    if isinstance(value, dict):
        rest = ",".join(f"{k}={v}" for k, v in value.items() if k != "name")
        if "name" in value and (not full or not rest):
            return str(value["name"])
        return f"{value.get('name', '')}({rest})"
    if isinstance(value, list):
        return "+".join(map(str, value)) or "none"
    return "none" if value is None else str(value)


def key_labels(values: list[Any]) -> list[str]:
    """Each value's label; in full where short labels would clash (two fedprox settings)."""
    labels = [value_label(v) for v in values]
    if len(set(labels)) < len(labels):
        labels = [value_label(v, full=True) for v in values]
    if len(set(labels)) < len(labels):
        raise MedFedError(f"grid values {labels} repeat", where="--grid",
                          fix="give each value once")
    return labels


def value_overrides(key: str, value: Any) -> list[str]:
    """``--set`` overrides for one grid value; a mapping sets each of its keys under ``key``."""
    if isinstance(value, dict):
        return [f"{key}.{k}={json.dumps(v)}" for k, v in value.items()]
    return [f"{key}={json.dumps(value)}"]


def cell_name(group: tuple[tuple[str, str], ...], seed: int, overrides: list[str]) -> str:
    text = "__".join([*(f"{k}={v}" for k, v in group), f"seed={seed}"])
    slug = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text)[:150]
    return f"{slug}-{hashlib.sha256(json.dumps(overrides).encode()).hexdigest()[:8]}"


def config_digest(cfg: ExperimentConfig) -> str:
    """What a cell's result depends on: the config without its engine, benchmark defaults and
    ledger folder (a cell computed in process is reused on a Ray cluster and the reverse)."""
    data = cfg.model_dump(mode="json", exclude={"engine", "benchmark"})
    data["privacy"].pop("ledger_dir", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def plan_benchmark(config: Path, out: Path, overrides: list[str], grid_texts: list[str],
                   seeds: str | None, ray_address: str | None = None) -> Plan:
    """Validate every cell (grid keys and values, seeds, earlier results) before any runs."""
    base = load_config(config, overrides)
    grid = parse_grid(grid_texts) if grid_texts else dict(base.benchmark.grid)
    seed_list = parse_seeds(seeds if seeds is not None else base.benchmark.seeds)
    if "seed" in grid:
        raise MedFedError("seed is not a grid key", where="--grid seed=...",
                          fix="give the seeds with --seeds N (or benchmark.seeds)")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise MedFedError(f"grid key {key!r} has no values", where=f"{config}: benchmark.grid",
                              fix=f"list its values, e.g. {key}: [a, b]")
    engine = ["engine=ray"] if ray_address else []
    with warnings.catch_warnings(record=True) as caught:  # shown once, not once per cell
        warnings.simplefilter("always", MedFedWarning)
        labels = {k: key_labels(vs) for k, vs in grid.items()}
        combos = list(itertools.product(*grid.values()))
        cells = [_cell(config, out, [*overrides, *engine, *_baselines(base, i)], grid, labels,
                       combo, seed) for i, combo in enumerate(combos) for seed in seed_list]
    for message in dict.fromkeys(str(w.message) for w in caught
                                 if issubclass(w.category, MedFedWarning)):
        warnings.warn(MedFedWarning(message), stacklevel=2)
    plan = Plan(config, out, labels, seed_list, cells, base.dataset.name, base.benchmark.jobs)
    for cell in plan.done():
        _check_stored(out / "cells" / cell.name / CELL_FILE, cell)
    return plan


def _baselines(base: ExperimentConfig, combination: int) -> list[str]:
    """``benchmark.baselines: once``: local-only and centralized in the first combination only."""
    if base.benchmark.baselines == "once" and combination > 0:
        return ["baselines.local_only=false", "baselines.centralized=false"]
    return []


def _cell(config: Path, out: Path, overrides: list[str], grid: dict[str, list[Any]],
          labels: dict[str, list[str]], combo: tuple[Any, ...], seed: int) -> Cell:
    group = tuple((k, labels[k][values.index(v)]) for k, v, values
                  in zip(grid, combo, grid.values(), strict=True))
    cell_overrides = [o for k, v in zip(grid, combo, strict=True) for o in value_overrides(k, v)]
    try:
        cfg = load_config(config, [*overrides, *cell_overrides, f"seed={seed}"])
        check_config(cfg)  # dataset, model and strategy names and options
    except MedFedError as exc:
        where = " ".join(f"{k}={v}" for k, v in group)
        raise MedFedError(f"grid cell {where}: {exc}", where="--grid",
                          fix="check the grid keys and values against the config") from None
    name = cell_name(group, seed, cell_overrides)
    digest = config_digest(cfg)
    if cfg.privacy.mode == "dp-sgd" and cfg.privacy.ledger_dir is None:
        cfg.privacy.ledger_dir = str(out / "cells" / name / "privacy")
    return Cell(name, group, seed, tuple(cell_overrides), cfg.to_json(), digest)


def _check_stored(path: Path, cell: Cell) -> None:
    try:
        stored = json.loads(path.read_text())
        digest = stored["digest"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MedFedError("stored cell result is damaged", where=str(path),
                          fix="delete that cell's folder; it is recomputed on the next run"
                          ) from None
    if digest != cell.digest:
        raise MedFedError("this cell was computed from a different config (e.g. rounds or "
                          "data changed)", where=str(path),
                          fix="benchmark into a new --out, or delete the cells folder to "
                          "recompute")


def default_jobs(pending: int, requested: int | None = None) -> int:
    """Parallel processes: as asked, else one per available core; never more than cells."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(pending, requested or cores or 1))


def run_benchmark(plan: Plan, jobs: int | None = None, on_cell: CellFn | None = None,
                  ray_address: str | None = None) -> list[dict[str, Any]]:
    """Every cell's record (stored ones read back, the others computed), in plan order."""
    folder = plan.out / "cells"
    records: dict[str, dict[str, Any]] = {}
    for cell in plan.done():
        records[cell.name] = json.loads((folder / cell.name / CELL_FILE).read_text())
        if on_cell:
            on_cell(records[cell.name], True)
    pending = [c for c in plan.cells if c.name not in records]
    workers = default_jobs(len(pending), jobs or plan.jobs)
    if ray_address:
        os.environ["RAY_ADDRESS"] = ray_address  # read by the Ray engine, here and in workers
    for record in _compute(pending, folder, workers):
        records[record["name"]] = record
        if on_cell:
            on_cell(record, False)
    return [records[c.name] for c in plan.cells]


def _compute(cells: list[Cell], folder: Path, workers: int):
    if not cells:
        return
    if workers == 1:
        for cell in cells:
            yield run_cell(cell, folder)
        return
    threads = max(1, default_jobs(10**6) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"),
                             initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(run_cell, cell, folder) for cell in cells}
        try:
            while futures:
                finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                for future in finished:
                    yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    for name in ("flwr", "mlflow", "ray", "medfed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def run_cell(cell: Cell, folder: Path) -> dict[str, Any]:
    """Simulate one cell and store its record atomically (the last thing it writes)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MedFedWarning)
        report = run_simulation(config_from_json(cell.config_json, f"cell {cell.name}")).report
    record = {"name": cell.name, "group": dict(cell.group), "seed": cell.seed,
              "overrides": list(cell.overrides), "digest": cell.digest,
              "warnings": list(dict.fromkeys(str(w.message) for w in caught
                                             if issubclass(w.category, MedFedWarning))),
              "report": report}
    atomic_write_json(folder / cell.name / CELL_FILE, record)
    return json.loads(json.dumps(record, default=_plain))  # as a reused cell reads it back


def _plain(obj: Any) -> Any:
    return obj.tolist() if hasattr(obj, "tolist") else str(obj)
