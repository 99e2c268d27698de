"""The coordinator's Flower ServerApp in a real federation (the app `medfed run` submits).

Its main is the coordinator's :func:`medfed.deploy.coordinator.deployment_main`: the run
config written by `medfed run` names the experiment and the run's state folder; every round
is checkpointed there and recorded in the coordinator's audit log.
"""

from __future__ import annotations

from flwr.serverapp import ServerApp

from medfed.deploy.coordinator import deployment_main

app = ServerApp()
app.main()(deployment_main)
