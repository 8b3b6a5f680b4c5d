"""Balanced metrics and the validation-chosen threshold, on hand-built scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cxr_tune.selection import choose_threshold
from cxr_tune.train.metrics import evaluate_scores, rates_at


def test_rates_on_a_hand_counted_example():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99])
    rates = rates_at(labels, scores, 0.5)
    assert (rates["tp"], rates["fn"], rates["tn"], rates["fp"]) == (5, 1, 3, 1)
    assert rates["sensitivity"] == pytest.approx(5 / 6) and rates["specificity"] == pytest.approx(3 / 4)
    assert rates["balanced_accuracy"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert rates["youden"] == pytest.approx(5 / 6 + 3 / 4 - 1)
    assert rates["gmean"] == pytest.approx(math.sqrt(5 / 6 * 3 / 4))
    assert rates["min_sens_spec"] == pytest.approx(3 / 4)


def test_predictive_values_and_accuracy_on_a_hand_counted_table_with_unequal_errors():
    """6 TP, 2 FN, 3 TN, 1 FP: two misses and one false alarm, so a rate that swaps FN for FP (or
    TP for TN) gives another number."""
    labels = np.array([1] * 8 + [0] * 4)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.6, 0.9, 0.2, 0.3, 0.1, 0.2, 0.4, 0.7])
    rates = rates_at(labels, scores, 0.5)
    assert (rates["tp"], rates["fn"], rates["tn"], rates["fp"]) == (6, 2, 3, 1)
    assert rates["sensitivity"] == pytest.approx(6 / 8) and rates["specificity"] == pytest.approx(3 / 4)
    assert rates["ppv"] == pytest.approx(6 / 7)  # of the 7 called PNEUMONIA, 6 are
    assert rates["npv"] == pytest.approx(3 / 5)  # of the 5 called NORMAL, 3 are
    assert rates["accuracy"] == pytest.approx(9 / 12)


def test_threshold_separates_perfectly_separable_scores_between_the_classes():
    labels = np.array([0, 0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
    threshold = choose_threshold(labels, scores)
    logit = lambda p: math.log(p / (1 - p))  # noqa: E731
    assert logit(threshold) == pytest.approx((logit(0.3) + logit(0.8)) / 2)  # halfway between 0.3 and 0.8, in logits
    metrics = evaluate_scores(labels, scores)
    assert metrics["auc"] == 1.0 and metrics["balanced_accuracy"] == 1.0 and metrics["threshold"] == threshold


def test_threshold_is_not_fooled_by_prevalence():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(100), np.ones(900)].astype(int)  # 90 % positive
    scores = np.r_[rng.normal(0.3, 0.1, 100), rng.normal(0.7, 0.1, 900)]
    metrics = evaluate_scores(labels, scores)
    assert metrics["sensitivity"] > 0.9 and metrics["specificity"] > 0.9


def test_min_sensitivity_moves_the_threshold_down():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.5, 0.6, 0.3, 0.7, 0.8, 0.9])
    free = evaluate_scores(labels, scores)
    floored = evaluate_scores(labels, scores, min_sensitivity=1.0)
    assert free["sensitivity"] == 0.75 and floored["sensitivity"] == 1.0
    assert floored["threshold"] < free["threshold"]


def test_ties_are_handled_and_pick_the_most_specific_best_threshold():
    labels = np.array([0, 1, 0, 1, 1, 0])
    scores = np.array([0.5, 0.5, 0.5, 0.9, 0.9, 0.1])
    threshold = choose_threshold(labels, scores)
    rates = rates_at(labels, scores, threshold)
    assert rates["specificity"] == 1.0 and rates["sensitivity"] == pytest.approx(2 / 3)


@pytest.mark.parametrize("label", [0, 1])
def test_one_class_only_gives_nan_auc_and_threshold_one_half(label):
    labels = np.full(5, label)
    metrics = evaluate_scores(labels, np.linspace(0.1, 0.9, 5))
    assert math.isnan(metrics["auc"]) and metrics["threshold"] == 0.5
    assert math.isnan(metrics["specificity" if label else "sensitivity"])


@pytest.mark.parametrize("seed", range(5))
def test_tolerance_buys_margin_for_at_most_the_tolerance(seed):
    rng = np.random.default_rng(seed)
    labels = np.r_[np.zeros(60), np.ones(140)].astype(int)
    scores = 1 / (1 + np.exp(-np.r_[rng.normal(-2, 1.2, 60), rng.normal(2, 1.2, 140)]))
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    margin = lambda t: np.min(np.abs(logit(scores) - logit(t)))  # noqa: E731
    strict, tolerant = choose_threshold(labels, scores), choose_threshold(labels, scores, tolerance=0.01)
    best = rates_at(labels, scores, strict)["balanced_accuracy"]
    assert rates_at(labels, scores, tolerant)["balanced_accuracy"] >= best - 0.01 - 1e-9
    assert margin(tolerant) >= margin(strict) - 1e-9 or rates_at(labels, scores, tolerant)["balanced_accuracy"] >= best


def test_saturated_scores_get_the_threshold_export_chooses_on_the_stored_scores():
    from sklearn.metrics import roc_auc_score

    labels = np.array([0] * 6 + [1] * 6)
    scores = np.array([0.0, 0.1, 0.2, 0.3, 0.999999, 1.0, 0.99999995, 1.0, 1.0, 1.0, 1.0, 1.0])  # float32 sigmoids of large logits
    metrics = evaluate_scores(labels, scores)
    assert metrics["threshold"] == choose_threshold(labels, scores)  # before: chosen on scores clipped to 1 - 1e-7, which tie these
    assert metrics["auc"] == pytest.approx(roc_auc_score(labels, scores)) and np.isfinite(metrics["loss"])
