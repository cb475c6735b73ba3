"""Decision metrics for a binary detector (label 1 = fake), in plain numpy."""
from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random fake scores above a random
    real, ties counting half (the Mann–Whitney U statistic). NaN when one class is absent."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.0) -> float:
    """Share of correct decisions with ``score > threshold`` meaning fake (0 for logits)."""
    labels = np.asarray(labels).astype(bool)
    if len(labels) == 0:
        return float("nan")
    return float(((np.asarray(scores) > threshold) == labels).mean())


def _bin_index(probabilities: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin i = [i/n, (i+1)/n), the last bin closed at 1.0. Edges are k/n (correctly rounded)
    rather than floor(p * n): 0.57 * 100 is 56.999…, which would put 0.57 in the wrong bin."""
    edges = np.arange(n_bins + 1) / n_bins
    return np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, n_bins - 1)


def _binned(probabilities: np.ndarray, labels: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: sample count, summed probability and summed label."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).astype(np.float64)
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if p.shape != y.shape:
        raise ValueError(f"probabilities of shape {p.shape} for labels of shape {y.shape}")
    if np.any(~((p >= 0.0) & (p <= 1.0))):
        raise ValueError("probabilities must lie in [0, 1]")
    index = _bin_index(p, n_bins)
    count = np.bincount(index, minlength=n_bins)
    return count, np.bincount(index, p, n_bins), np.bincount(index, y, n_bins)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error: Σ_bins (n_b / N) · |mean p_fake − fraction fake| over
    ``n_bins`` equal-width bins on [0, 1]. NaN without samples.

    Binary formulation: p_fake itself is the confidence, binned over all of [0, 1], so this
    is the gap of the reliability diagram for the class "fake". The top-label ECE (confidence
    max(p, 1 − p) on [0.5, 1]) folds reals onto fakes and would hide a detector that is
    over-confident about one class only.
    """
    count, sum_p, sum_y = _binned(probabilities, labels, n_bins)
    total = count.sum()
    if total == 0:
        return float("nan")
    # n_b · |mean p − mean y| = |Σp − Σy| per bin, so empty bins drop out by themselves.
    return float(np.abs(sum_p - sum_y).sum() / total)


def reliability_curve(probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 10) -> dict[str, list]:
    """The data of a reliability diagram, one entry per bin (the same bins as
    ``expected_calibration_error``): ``bin_lower``, ``bin_upper``, ``mean_probability``,
    ``fraction_fake`` and ``count``; an empty bin has count 0 and None for both means."""
    count, sum_p, sum_y = _binned(probabilities, labels, n_bins)
    edges = np.arange(n_bins + 1) / n_bins
    filled = count > 0
    return {
        "bin_lower": [float(e) for e in edges[:-1]],
        "bin_upper": [float(e) for e in edges[1:]],
        "mean_probability": [float(s / c) if f else None for s, c, f in zip(sum_p, count, filled)],
        "fraction_fake": [float(s / c) if f else None for s, c, f in zip(sum_y, count, filled)],
        "count": [int(c) for c in count],
    }


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve as false- and true-positive rates, from (0, 0) to (1, 1), one point per
    distinct score taken as the threshold (``score >= t`` means fake), highest first. Tied
    scores move both rates in one step, so the trapezoidal area under the curve equals
    ``roc_auc``. A rate whose class is absent is NaN."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape:
        raise ValueError(f"scores of shape {scores.shape} for labels of shape {labels.shape}")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    # The last index of each run of equal scores: every sample up to it is called fake.
    last_of_tie = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1] if len(scores) else np.array([], int)
    true_pos = np.r_[0, np.cumsum(sorted_labels)[last_of_tie]].astype(np.float64)
    false_pos = np.r_[0, np.cumsum(~sorted_labels)[last_of_tie]].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return false_pos / false_pos[-1], true_pos / true_pos[-1]
