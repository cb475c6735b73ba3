"""Calibration recovers a known temperature and bias, and keeps the ranking."""
from __future__ import annotations

import numpy as np
import pytest

from detector.calibration import Calibration, fit_calibration
from detector.metrics import roc_auc


def synthetic(temperature: float, bias: float, n: int = 20000) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn so that P(fake | logit) = sigmoid(logit / temperature + bias) exactly."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 3.0, n)
    labels = rng.random(n) < Calibration(temperature, bias).probability(logits)
    return logits, labels.astype(np.float64)


@pytest.mark.parametrize("temperature,bias", [(2.5, 0.0), (0.5, -1.5), (1.0, 1.0)])
def test_fit_recovers_a_known_temperature_and_bias(temperature, bias):
    fitted = fit_calibration(*synthetic(temperature, bias))
    assert fitted.temperature == pytest.approx(temperature, rel=0.05)
    assert fitted.bias == pytest.approx(bias, abs=0.05)
    assert fitted.fitted_on == 20000


def test_calibration_keeps_the_ranking():
    logits, labels = synthetic(2.0, -1.0, 500)
    fitted = fit_calibration(logits, labels)
    assert roc_auc(labels, fitted.probability(logits)) == pytest.approx(roc_auc(labels, logits))


def test_calibration_round_trips_through_weights_metadata():
    fitted = Calibration(1.7, -0.3, 42)
    assert Calibration.from_metadata(fitted.to_metadata()) == fitted
    assert Calibration.from_metadata({}) == Calibration()


def test_fit_refuses_a_single_class():
    with pytest.raises(ValueError, match="both real and fake"):
        fit_calibration(np.array([0.1, 0.2]), np.array([1.0, 1.0]))
