"""Frame → video aggregation and probability bands, on hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest

from detector.verdict import StreamScores, aggregate, judge_video
from detector.voting import StreamCalibration


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


def stream(detector: str, name: str, logits: list[float], weight: int, probes: tuple = ()) -> StreamScores:
    return StreamScores(detector, StreamCalibration(name, weight=weight), np.asarray(logits, np.float64),
                        tuple(np.asarray(p, np.float64) for p in probes))


def test_trusted_streams_outvote_a_normal_one():
    # Two trusted streams see a fake (p ≈ 0.88), one normal stream sees a real face (p ≈ 0.12).
    verdict = judge_video([stream("ensemble", "facial", [2.0, 2.0], 2), stream("ensemble", "fusion", [2.0, 2.0], 2),
                           stream("hybrid", "hybrid", [-2.0, -2.0], 1)], np.array([0, 1]), "mean")
    assert verdict.label == "fake"
    assert verdict.vote.fake_weight == 4 and verdict.vote.real_weight == 1
    assert verdict.p_fake == pytest.approx((2 * 0.8808 + 2 * 0.8808 + 0.1192) / 5, abs=1e-3)
    assert verdict.detectors["hybrid"][1] == "real" and verdict.detectors["ensemble"][1] == "fake"
    assert [s.band for s in verdict.streams] == ["high", "high", "low"]


def test_stability_is_the_spread_of_p_fake_across_probes():
    # Under the second probe the stream's logits fall to 0: p_fake moves from 0.88 to 0.5.
    verdict = judge_video([stream("hybrid", "hybrid", [2.0], 1, probes=([2.0], [0.0]))], np.array([0]), "mean")
    assert verdict.probe_p_fake == pytest.approx([0.8808, 0.5], abs=1e-3)
    assert verdict.stability == pytest.approx(0.8808 - 0.5, abs=1e-3)


def test_streams_that_all_weigh_zero_give_no_probability():
    verdict = judge_video([stream("ensemble", "facial", [3.0], 0), stream("ensemble", "fusion", [3.0], 0)],
                          np.array([0]), "mean")
    assert verdict.p_fake is None and verdict.label == "uncertain" and verdict.face_p_fake == [None]
    assert [s.band for s in verdict.streams] == ["high", "high"]
