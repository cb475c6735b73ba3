"""Decision metrics against values computed by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from detector.metrics import accuracy, roc_auc, roc_curve


def test_auc_counts_correctly_ordered_pairs():
    # Pairs (fake, real): (0.35, 0.1) ok, (0.35, 0.4) wrong, (0.8, 0.1) ok, (0.8, 0.4) ok → 3/4.
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_auc_counts_ties_as_half():
    # (0.5 vs 0.5) tie = 1/2, (0.9 vs 0.5) = 1 → 1.5 of 2 pairs.
    assert roc_auc(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9])) == pytest.approx(0.75)


def test_auc_of_perfect_and_inverted_rankings():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([1.0, 2.0, 3.0, 4.0])) == 1.0
    assert roc_auc(labels, np.array([4.0, 3.0, 2.0, 1.0])) == 0.0


def test_auc_is_undefined_with_one_class():
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_accuracy_thresholds_logits_at_zero():
    assert accuracy(np.array([0, 1, 1, 0]), np.array([-2.0, 0.5, -0.1, 0.3])) == pytest.approx(0.5)


def test_roc_curve_steps_through_each_threshold():
    # Descending: 0.8 fake, 0.4 real, 0.35 fake, 0.1 real; each threshold calls one more sample fake.
    fpr, tpr = roc_curve(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)  # = roc_auc of the same data


def test_roc_curve_takes_tied_scores_in_one_diagonal_step():
    # 0.9 fake first; the tie at 0.5 (one real, one fake) moves both rates at once.
    fpr, tpr = roc_curve(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.9]))
    assert fpr.tolist() == [0.0, 0.0, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 1.0]
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


def test_roc_curve_false_positive_rate_is_undefined_without_reals():
    fpr, tpr = roc_curve(np.array([1, 1]), np.array([0.2, 0.3]))
    assert np.isnan(fpr).all()
    assert tpr.tolist() == [0.0, 0.5, 1.0]
