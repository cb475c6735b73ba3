"""Frame → video aggregation and probability bands, on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest

from detector.verdict import Bands, aggregate


def test_mean_averages_every_face():
    assert aggregate(np.array([0.2, 0.4, 0.9]), np.array([0, 0, 1]), "mean") == pytest.approx(0.5)


def test_max_face_mean_lets_one_swapped_face_move_the_verdict():
    # Frame 0: a real face (0.1) beside a swapped one (0.9); frame 1: only the swapped one (0.7).
    p = np.array([0.1, 0.9, 0.7])
    frames = np.array([0, 0, 1])
    assert aggregate(p, frames, "max_face_mean") == pytest.approx(0.8)
    assert aggregate(p, frames, "mean") == pytest.approx(0.5667, abs=1e-4)


def test_confident_frames_ignores_frames_the_model_cannot_read():
    p = np.array([0.95, 0.5, 0.52, 0.9])
    assert aggregate(p, np.arange(4), "confident_frames") == pytest.approx(0.925)


def test_unknown_strategy_is_refused():
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(np.array([0.5]), np.array([0]), "median")


@pytest.mark.parametrize("p, band, label", [(0.95, "high", "fake"), (0.7, "high", "fake"),
                                            (0.5, "uncertain", "uncertain"), (0.3, "low", "real")])
def test_bands_and_labels(p, band, label):
    assert Bands().band(p) == band
    assert Bands().label(p) == label
