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
