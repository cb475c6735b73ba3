"""A fakescan detector as an MLflow pyfunc (logged as code, so nothing is pickled).

``mlflow.pyfunc.load_model("models:/fakescan-hybrid@champion").predict(crops)`` takes
(N, H, W, 3) uint8 face crops and returns each crop's calibrated probability of being fake:
the hybrid's, or the ensemble's reliability-weighted combination of its streams (the crop
stands in for the whole frame of the texture stream).
"""
from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from detector.factory import create_detector, stream_logits
from detector.hybrid import preprocess_crops
from detector.voting import combined_probability


class DetectorPyfunc(PythonModel):
    def load_context(self, context) -> None:
        self.model, self.info = create_detector(context.artifacts["weights"], device="cpu")
        self.calibration = self.info.calibration

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        with torch.inference_mode():
            x = preprocess_crops(np.asarray(model_input, np.uint8), self.info.img_size)
            logits = stream_logits(self.model, x)
        p = {name: self.calibration.streams[name].probability(v.float().numpy()) for name, v in logits.items()}
        weights = self.calibration.weights
        return np.array([combined_probability({k: float(v[i]) for k, v in p.items()}, weights)
                         for i in range(len(x))], np.float32)


mlflow.models.set_model(DetectorPyfunc())
