"""The pyfunc's code, logged as a file (MLflow "models from code": no pickled objects).

MLflow runs this file when it loads the model; ``set_model`` names the model object.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.models import set_model

from medfed.inference.pyfunc import ARTIFACT, score_frame


class MedFedPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the model folder (artifact ``medfed_model``) and scores table rows."""

    def load_context(self, context: Any) -> None:
        from medfed.inference.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts[ARTIFACT])

    def predict(self, context: Any, model_input: pd.DataFrame,
                params: dict[str, Any] | None = None) -> pd.DataFrame:
        return score_frame(self.bundle, pd.DataFrame(model_input))


set_model(MedFedPyfunc())
