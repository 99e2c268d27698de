"""The coordinator's Flower ServerApp: reads the experiment from the run config, runs rounds."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medfed.config import config_from_json
from medfed.io import atomic_write_json
from medfed.server.checkpoint import save_checkpoint
from medfed.server.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_json(str(context.run_config["experiment"]))
    out = context.run_config.get("output-dir")
    result = run_federation(grid, cfg)
    if out:
        save_checkpoint(Path(str(out)), cfg.rounds, result.arrays, {"config": json.loads(
            cfg.to_json())})
        atomic_write_json(Path(str(out)) / "history.json", {
            "history": result.history, "federated_s": result.seconds})
