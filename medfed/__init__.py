"""MedFed: federated learning for hospitals on Flower, MONAI, Opacus and MLflow."""

import os

# Hospitals expect no phoning home: telemetry is off unless the user turns it on.
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
# MedFed draws its own (Rich) progress; libraries' tqdm bars would garble it
os.environ.setdefault("TQDM_DISABLE", "1")

__version__ = "0.1.0"
