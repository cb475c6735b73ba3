"""The hybrid detector as an MLflow pyfunc (logged as code, so nothing is pickled).

``mlflow.pyfunc.load_model("models:/fakescan-hybrid@champion").predict(crops)`` takes
(N, H, W, 3) uint8 face crops and returns each crop's probability of being fake.
"""
from __future__ import annotations

import mlflow
import numpy as np
import torch

from detector.hybrid import create_hybrid, preprocess_crops


class HybridPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model, self.info = create_hybrid(weights=context.artifacts["weights"])

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        with torch.inference_mode():
            x = preprocess_crops(np.asarray(model_input, np.uint8), self.model.config.img_size)
            return torch.sigmoid(self.model(x)).numpy().astype(np.float32)


mlflow.models.set_model(HybridPyfunc())
