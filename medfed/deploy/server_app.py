"""The coordinator's Flower ServerApp in a real federation (the app `medfed run` submits).

Its main is the coordinator's :func:`medfed.deploy.coordinator.deployment_main`: the run
config written by `medfed run` names the experiment and the run's state folder; every round
is checkpointed there and recorded in the coordinator's audit log.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from medfed.deploy.coordinator import deployment_main
from medfed.deploy.flower import RUN_JOB

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Training (`medfed run`), or the statistics query (`medfed stats --superlink`)."""
    if str(context.run_config.get(RUN_JOB, "train")) == "stats":
        from medfed.deploy.stats import stats_main

        return stats_main(grid, context)
    return deployment_main(grid, context)
