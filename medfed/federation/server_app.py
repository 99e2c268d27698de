"""The coordinator's Flower ServerApp: reads the experiment from the run config, runs rounds.

Run config keys: ``experiment`` (the ExperimentConfig as JSON), ``output-dir`` (where the
final model, ``history.json`` and per-round ``progress.json`` go), ``evaluation-hook``
(optional "module:factory"; ``factory(cfg)`` returns a central evaluate function — the
simulation harness uses it to score every round on the virtual sites' test splits).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medfed.config import RUN_EVALUATION_HOOK, RUN_EXPERIMENT, RUN_OUTPUT_DIR, config_from_json
from medfed.federation.checkpoint import save_checkpoint
from medfed.federation.rounds import RoundHooks, run_federation
from medfed.io import atomic_write_json

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_json(str(context.run_config[RUN_EXPERIMENT]))
    out = context.run_config.get(RUN_OUTPUT_DIR)
    history: list[dict] = []

    def on_round(record: dict) -> None:
        history.append(record)
        if out:
            atomic_write_json(Path(str(out)) / "progress.json", {"history": history})

    result = run_federation(grid, cfg, RoundHooks(evaluate_fn=evaluation_hook(context, cfg),
                                                  on_round=on_round, seed=cfg.seed))
    if out:
        save_checkpoint(Path(str(out)), cfg.rounds, result.arrays, {"config": json.loads(
            cfg.to_json())})
        atomic_write_json(Path(str(out)) / "history.json", {
            "history": result.history, "federated_s": result.seconds,
            "scaling": dict(result.summary.scaling)})


def evaluation_hook(context: Context, cfg):
    """The central evaluate function named by the run config, if any (simulation only)."""
    spec = str(context.run_config.get(RUN_EVALUATION_HOOK, "") or "")
    if not spec:
        return None
    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)(cfg)
