"""The ServerApp of `medfed stats --engine ray`: the statistics query under Flower's
Simulation Engine; the result goes to the run config's ``output-dir``/stats_result.json."""

from __future__ import annotations

from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medfed.config import RUN_EXPERIMENT, RUN_OUTPUT_DIR, config_from_json
from medfed.federation.stats import run_stats
from medfed.io import atomic_write_json

SERVER_APP = "medfed.federation.stats_app:app"
RESULT = "stats_result.json"
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = config_from_json(str(context.run_config[RUN_EXPERIMENT]))
    result = run_stats(grid, cfg, wait_timeout=120.0)
    atomic_write_json(Path(str(context.run_config[RUN_OUTPUT_DIR])) / RESULT, result)
