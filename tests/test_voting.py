"""Calibration error, per-stream calibration and bands, and the weighted vote."""
from __future__ import annotations

import json

import numpy as np
import pytest

from detector.metrics import expected_calibration_error, reliability_curve, roc_auc
from detector.voting import (
    DetectorCalibration,
    StreamCalibration,
    combined_probability,
    fit_stream,
    weight_from_auc,
    weighted_vote,
)

TRUSTED, NORMAL, IGNORED = 2, 1, 0

# Six probabilities in 5 bins of width 0.2:
#   [0.0, 0.2): 0.05, 0.15 (labels 0, 1) → mean p 0.10, fraction fake 0.5 → gap 0.40, weight 2/6
#   [0.2, 0.4): 0.35       (label 0)     → mean p 0.35, fraction fake 0.0 → gap 0.35, weight 1/6
#   [0.4, 0.6): 0.45       (label 0)     → mean p 0.45, fraction fake 0.0 → gap 0.45, weight 1/6
#   [0.6, 0.8): empty
#   [0.8, 1.0]: 0.85, 0.95 (labels 1, 1) → mean p 0.90, fraction fake 1.0 → gap 0.10, weight 2/6
# ECE = (2·0.40 + 0.35 + 0.45 + 2·0.10) / 6 = 1.8 / 6 = 0.3
TINY_P = np.array([0.05, 0.15, 0.35, 0.45, 0.85, 0.95])
TINY_Y = np.array([0, 1, 0, 0, 1, 1])


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_ece_matches_a_hand_computed_value():
    assert expected_calibration_error(TINY_P, TINY_Y, n_bins=5) == pytest.approx(0.3)


def test_reliability_curve_matches_the_hand_computed_bins():
    curve = reliability_curve(TINY_P, TINY_Y, n_bins=5)
    assert curve["count"] == [2, 1, 1, 0, 2]
    assert curve["bin_lower"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert curve["bin_upper"] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert curve["mean_probability"][3] is None and curve["fraction_fake"][3] is None
    assert curve["mean_probability"][:3] + curve["mean_probability"][4:] == pytest.approx([0.10, 0.35, 0.45, 0.90])
    assert curve["fraction_fake"][:3] + curve["fraction_fake"][4:] == pytest.approx([0.5, 0.0, 0.0, 1.0])


def test_bin_edges_belong_to_the_upper_bin_and_one_to_the_last():
    # 0.2 opens bin 1; 0.3 and 0.7 are k/10 exactly (0.3 * 10 is 3.0000000000000004, 0.57 * 100 is 56.99…).
    assert reliability_curve(np.array([0.0, 0.2, 1.0]), np.array([0, 0, 1]), n_bins=5)["count"] == [1, 1, 0, 0, 1]
    assert reliability_curve(np.array([0.3, 0.7]), np.array([0, 1]))["count"] == [0, 0, 0, 1, 0, 0, 0, 1, 0, 0]
    assert reliability_curve(np.array([0.57]), np.array([1]), n_bins=100)["count"][57] == 1


def test_ece_is_small_when_calibrated_by_construction_and_larger_when_overconfident():
    rng = np.random.default_rng(1)
    p = rng.random(20000)
    labels = rng.random(20000) < p
    overconfident = sigmoid(3.0 * np.log(p / (1.0 - p)))
    calibrated_ece = expected_calibration_error(p, labels)
    assert calibrated_ece < 0.03
    assert expected_calibration_error(overconfident, labels) > calibrated_ece + 0.1


def test_ece_refuses_probabilities_outside_the_unit_interval():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([0.5, 1.2]), np.array([0, 1]))


def test_fit_stream_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    n = 4000
    drawn = rng.random(n) < 0.5
    z = rng.normal(np.where(drawn, 2.0, -2.0), 1.0)
    labels = rng.random(n) < sigmoid(z)  # P(fake | z) = sigmoid(z) exactly
    stream = fit_stream("texture", 3.0 * z, labels)
    assert stream.temperature == pytest.approx(3.0, rel=0.15)
    assert stream.bias == pytest.approx(0.0, abs=0.15)
    assert stream.fitted_on == n
    assert stream.name == "texture"


def test_fit_stream_bands_respect_the_target_error():
    rng = np.random.default_rng(2)
    labels = np.r_[np.zeros(500, bool), np.ones(500, bool)]
    logits = np.where(labels, rng.normal(1.5, 1.5, 1000), rng.normal(-1.5, 1.5, 1000))
    stream = fit_stream("fusion", logits, labels, target_error=0.1)
    p = stream.probability(logits)
    assert 0.5 <= stream.high <= 0.99 and 0.01 <= stream.low <= 0.5
    assert np.mean(p[~labels] >= stream.high) <= 0.1
    assert np.mean(p[labels] <= stream.low) <= 0.1
    # Tight: any visibly lower "high" (higher "low") lets more than 10 % through.
    assert np.mean(p[~labels] >= stream.high - 1e-6) > 0.1
    assert np.mean(p[labels] <= stream.low + 1e-6) > 0.1


def test_fit_stream_clamps_the_bands_on_separable_data():
    labels = np.r_[np.zeros(200, bool), np.ones(200, bool)]
    logits = np.where(labels, 5.0, -5.0) + np.linspace(-0.5, 0.5, 400)
    stream = fit_stream("facial", logits, labels, target_error=0.05)
    # Every real scores far below 0.5, every fake far above: the clamps set both thresholds.
    assert stream.high == 0.5 and stream.low == 0.5
    assert stream.auc == 1.0 and stream.weight == TRUSTED


def test_fit_stream_measures_ece_and_weight_on_calibrated_probabilities():
    rng = np.random.default_rng(3)
    z = rng.normal(0.0, 1.0, 5000)
    labels = rng.random(5000) < sigmoid(z)
    stream = fit_stream("hybrid", 4.0 * z, labels)  # overconfident raw logits
    assert expected_calibration_error(sigmoid(4.0 * z), labels) > 0.1
    assert stream.ece < 0.03
    assert stream.auc == pytest.approx(roc_auc(labels, z))  # about 0.75: calibration keeps the ranking
    assert stream.weight == NORMAL


@pytest.mark.parametrize("auc,weight", [(0.95, 2), (0.85, 2), (0.84, 1), (0.6, 1), (0.59, 0), (float("nan"), 0)])
def test_weight_from_auc(auc, weight):
    assert weight_from_auc(auc) == weight


def test_band_edges_and_missing_scores():
    stream = StreamCalibration("texture", low=0.3, high=0.7)
    assert [stream.band(p) for p in (0.7, 0.69, 0.31, 0.3, None, float("nan"))] == \
        ["high", "uncertain", "uncertain", "low", "n/a", "n/a"]


def test_probability_applies_temperature_and_bias_without_overflow():
    stream = StreamCalibration("texture", temperature=2.0, bias=1.0)
    assert stream.probability(np.array([2.0]))[0] == pytest.approx(sigmoid(np.array(2.0)))
    with np.errstate(over="raise", invalid="raise"):
        assert stream.probability(np.array([-1e6, 1e6])).tolist() == [0.0, 1.0]


def test_vote_all_trusted_high_is_fake():
    vote = weighted_vote({"a": "high", "b": "high"}, {"a": TRUSTED, "b": TRUSTED})
    assert (vote.label, vote.fake_weight, vote.real_weight, vote.total_weight) == ("fake", 4, 0, 4)
    assert vote.votes == {"a": 2, "b": 2}


def test_vote_two_trusted_high_outweigh_one_normal_low():
    vote = weighted_vote({"a": "high", "b": "high", "c": "low"}, {"a": TRUSTED, "b": TRUSTED, "c": NORMAL})
    assert vote.label == "fake" and vote.total_weight == 5


def test_vote_uncertain_counts_against_both_sides():
    # real 2 of total 4 is not a majority; fake 1 of 4 neither.
    vote = weighted_vote({"a": "low", "b": "high", "c": "uncertain"}, {"a": TRUSTED, "b": NORMAL, "c": NORMAL})
    assert (vote.label, vote.fake_weight, vote.real_weight, vote.total_weight) == ("uncertain", 1, 2, 4)
    assert vote.votes == {"a": 0, "b": 2, "c": 1}


def test_vote_trusted_low_beats_normal_high():
    assert weighted_vote({"a": "low", "b": "high"}, {"a": TRUSTED, "b": NORMAL}).label == "real"


def test_vote_tie_is_uncertain():
    assert weighted_vote({"a": "low", "b": "high"}, {"a": TRUSTED, "b": TRUSTED}).label == "uncertain"


def test_vote_without_any_face_is_no_face():
    vote = weighted_vote({"a": "n/a", "b": "n/a"}, {"a": TRUSTED, "b": NORMAL})
    assert vote.label == "no_face" and vote.total_weight == 0
    assert vote.votes == {"a": None, "b": None}


def test_vote_ignores_a_zero_weight_stream():
    vote = weighted_vote({"a": "high", "b": "low", "c": "low"}, {"a": NORMAL, "b": IGNORED, "c": IGNORED})
    assert (vote.label, vote.total_weight) == ("fake", 1)
    assert vote.votes == {"a": 2, "b": 0, "c": 0}


def test_vote_with_only_ignored_streams_is_uncertain_not_no_face():
    assert weighted_vote({"a": "high", "b": "n/a"}, {"a": IGNORED, "b": TRUSTED}).label == "uncertain"


def test_vote_n_a_stream_abstains():
    assert weighted_vote({"a": "n/a", "b": "low"}, {"a": TRUSTED, "b": NORMAL}).label == "real"


def test_vote_refuses_unknown_bands_and_missing_weights():
    with pytest.raises(ValueError, match="unknown band"):
        weighted_vote({"a": "fake"}, {"a": 1})
    with pytest.raises(KeyError, match="no weight"):
        weighted_vote({"a": "high"}, {})


def test_combined_probability_weights_by_reliability():
    # (2·0.9 + 1·0.3) / 3 = 0.7; the ignored and the missing streams drop out.
    probabilities = {"a": 0.9, "b": 0.3, "c": 0.0, "d": None}
    weights = {"a": TRUSTED, "b": NORMAL, "c": IGNORED, "d": TRUSTED}
    assert combined_probability(probabilities, weights) == pytest.approx(0.7)


def test_combined_probability_falls_back_to_the_mean_and_to_none():
    assert combined_probability({"a": 0.2, "b": 0.6}, {"a": 0, "b": 0}) == pytest.approx(0.4)
    assert combined_probability({"a": None, "b": float("nan")}, {"a": 1, "b": 1}) is None


def fitted_calibration() -> DetectorCalibration:
    return DetectorCalibration("ensemble", {
        "texture": StreamCalibration("texture", 1.7, -0.25, 0.21, 0.83, 2, 0.91, 0.02, 1200),
        "facial": StreamCalibration("facial", 0.6, 0.1, 0.35, 0.5, 0, 0.55, None, 1200),
    })


def test_detector_calibration_round_trips_through_json():
    calibration = fitted_calibration()
    text = calibration.to_json()
    assert DetectorCalibration.from_json(text) == calibration
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2)  # stable form


def test_detector_calibration_round_trips_through_string_metadata():
    calibration = fitted_calibration()
    metadata = calibration.to_metadata()
    assert list(metadata) == ["calibration"] and isinstance(metadata["calibration"], str)
    assert DetectorCalibration.from_metadata({**metadata, "format": "pt"}) == calibration
    assert DetectorCalibration.from_metadata({"format": "pt"}) is None


def test_uncalibrated_is_the_identity():
    calibration = DetectorCalibration.uncalibrated("hybrid", ["hybrid"])
    assert calibration.streams == {"hybrid": StreamCalibration("hybrid", 1.0, 0.0, 0.3, 0.7, 1, None, None, 0)}
    assert calibration.weights == {"hybrid": 1}
    assert calibration.streams["hybrid"].probability(np.array([0.0]))[0] == 0.5
