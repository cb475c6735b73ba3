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

from detector.ensemble import create_ensemble, weights_metadata
from detector.hybrid import create_hybrid, preprocess_crops
from detector.voting import DetectorCalibration, combined_probability
from detector.weights import read_metadata


class DetectorPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        with open(context.artifacts["weights"], "rb") as f:
            data = f.read()
        if weights_metadata(read_metadata(data)):
            self.model, info = create_ensemble(weights=data)
            self.calibration = info.calibration
        else:
            self.model, info = create_hybrid(weights=data)
            self.calibration = info.voting or DetectorCalibration.from_temperature(
                "hybrid", "hybrid", info.calibration.temperature, info.calibration.bias)

    def predict(self, context, model_input: np.ndarray, params=None) -> np.ndarray:
        with torch.inference_mode():
            x = preprocess_crops(np.asarray(model_input, np.uint8), self.model.config.img_size)
            out = self.model(x)
        logits = out if isinstance(out, dict) else {"hybrid": out}
        p = {name: self.calibration.streams[name].probability(v.float().numpy()) for name, v in logits.items()}
        weights = self.calibration.weights
        return np.array([combined_probability({k: float(v[i]) for k, v in p.items()}, weights)
                         for i in range(len(x))], np.float32)


mlflow.models.set_model(DetectorPyfunc())
