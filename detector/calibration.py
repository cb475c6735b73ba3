"""Calibration: raw logits → probabilities that mean what they say.

``fit_calibration`` fits p = sigmoid(logit / temperature + bias) by minimising the negative
log-likelihood on a validation set (temperature scaling with a bias, i.e. Platt scaling in
another parametrisation). The ranking, hence the AUC, never changes; the threshold and the
confidence do. A detector trained on one distribution is often off-centre on another, and
an off-centre score puts every video in one band.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """The logistic function in float64, for any logit."""
    # exp of −|x| only: no overflow for a very confident logit, full precision near 0.
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    bias: float = 0.0
    fitted_on: int = 0  # samples the fit saw; 0 = identity, never fitted

    def probability(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(np.asarray(logits, np.float64) / self.temperature + self.bias)

    def to_metadata(self) -> dict[str, str]:
        return {"calibration_temperature": repr(self.temperature), "calibration_bias": repr(self.bias),
                "calibration_samples": str(self.fitted_on)}

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> Calibration:
        if "calibration_temperature" not in metadata:
            return cls()
        return cls(float(metadata["calibration_temperature"]), float(metadata["calibration_bias"]),
                   int(metadata.get("calibration_samples", "0")))


def fit_calibration(logits: np.ndarray, labels: np.ndarray, steps: int = 200) -> Calibration:
    """The temperature and bias that minimise the NLL of ``labels`` (1 = fake) given ``logits``."""
    x = torch.as_tensor(np.asarray(logits, np.float64))
    y = torch.as_tensor(np.asarray(labels, np.float64))
    if len(x) == 0 or y.min() == y.max():
        raise ValueError("calibration needs both real and fake samples")
    # Fit 1/T (free sign, no division by zero on the way) and the bias.
    inverse_t = torch.ones((), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([inverse_t, bias], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x * inverse_t + bias, y)
        loss.backward()
        return loss

    optimizer.step(closure)
    # A detector whose scores rank fakes lower than reals gets no flipped sign here: that is a
    # broken model, not a calibration problem. Keep a small positive slope instead.
    slope = max(float(inverse_t.detach()), 1e-3)
    return Calibration(1.0 / slope, float(bias.detach()), len(x))
