"""Bootstrap intervals of a set's metrics: seeded, 95 %, each resample's AUC the ROC curve's area, and drawn in parts
whose size does not change a number."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_tune import selection
from cxr_tune.set_metrics import bootstrap_intervals, paired_differences


def scored(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping classes, so every metric varies between resamples."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.5).astype(int)
    return labels, 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 1.5 * labels)))


def test_the_intervals_are_the_same_on_every_call():
    labels, scores = scored()
    assert bootstrap_intervals(labels, scores, 0.5) == bootstrap_intervals(labels, scores, 0.5)


def test_the_auc_interval_is_the_95_percent_percentile_bootstrap_of_scikit_learns_auc():
    labels, scores = scored(80)
    scores = np.round(scores, 1)  # ties within and across the classes
    rng = np.random.default_rng(1)
    by_hand = [roc_auc_score(labels[pick], scores[pick]) for pick in (rng.integers(0, len(labels), len(labels)) for _ in range(500))]
    low, high = bootstrap_intervals(labels, scores, 0.5)["auc"]
    assert low == pytest.approx(np.percentile(by_hand, 2.5), abs=0.015) and high == pytest.approx(np.percentile(by_hand, 97.5), abs=0.015)


@pytest.mark.parametrize(("scores", "auc"), [(np.r_[np.full(20, 0.2), np.full(20, 0.8)], 1.0), (np.r_[np.full(20, 0.8), np.full(20, 0.2)], 0.0),
                                             (np.full(40, 0.5), 0.5)])
def test_every_resample_of_separated_reversed_or_tied_scores_has_their_auc(scores, auc):
    labels = np.r_[np.zeros(20), np.ones(20)].astype(int)
    assert bootstrap_intervals(labels, scores, 0.5)["auc"] == [auc, auc]


def test_rates_of_counts_get_wilson_intervals_so_a_rate_of_one_is_not_certain():
    """A bootstrap of 20 NORMAL images all called right gave specificity [1.000, 1.000]; Wilson gives [0.839, 1.000]."""
    from cxr_tune.set_metrics import INTERVAL_METHODS, clinical_metrics, held_out_metrics
    from cxr_tune.train.metrics import wilson_interval

    labels = np.r_[np.zeros(20), np.ones(30)].astype(int)
    scores = np.r_[np.full(20, 0.1), np.linspace(0.3, 0.9, 30)]  # every NORMAL right; the PNEUMONIA images below 0.5 missed
    found = int((scores[20:] >= 0.5).sum())
    ci = held_out_metrics(labels, scores, 0.5)["ci95"]
    assert ci["specificity"] == wilson_interval(20, 20) and ci["specificity"][0] == pytest.approx(0.839, abs=1e-3)
    assert ci["sensitivity"] == wilson_interval(found, 30) and ci["accuracy"] == wilson_interval(20 + found, 50)
    assert set(ci) == {"sensitivity", "specificity", "accuracy", "auc", "balanced_accuracy"}  # the other two still bootstrapped
    at = clinical_metrics([f"{i}.png" for i in range(50)], labels, scores, 0.5, {"balanced": {"threshold": 0.5}})["operating_points"]["balanced"]
    assert at["ci95"] == {"specificity": wilson_interval(20, 20), "sensitivity": wilson_interval(found, 30)}
    assert "Wilson score for sensitivity, specificity and accuracy" in INTERVAL_METHODS and "bootstrap for AUC" in INTERVAL_METHODS


def test_the_paired_bootstrap_draws_its_resamples_in_parts_and_gives_the_same_differences(monkeypatch):
    """It drew all 2000 resamples of every image at once, and ranked them per model (2.4 GB for 20k images); in parts it
    holds a part's worth, and the seeded draws and intervals are the numbers the one-piece bootstrap gave."""
    labels, scores = scored(40)
    _, reference = scored(40, seed=1)
    assert paired_differences(labels, scores, 0.5, reference, 0.4) == {
        "auc": (0.20052083333333326, [-0.03385416666666663, 0.43749999999999994]), "sensitivity": (0.0625, [0.0, 0.1875]),
        "specificity": (0.041666666666666685, [-0.16666666666666669, 0.25]), "balanced_accuracy": (0.05208333333333337, [-0.0625, 0.17708333333333337])}
    labels, scores = scored(1000)
    _, reference = scored(1000, seed=1)
    whole = paired_differences(labels, scores, 0.5, reference, 0.4)
    monkeypatch.setattr(selection, "BOOTSTRAP_CHUNK_VALUES", 65_000)  # 65 resamples a part; the last one shorter
    tracemalloc.start()
    try:
        in_parts = paired_differences(labels, scores, 0.5, reference, 0.4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert in_parts == whole
    assert peak < 5e6  # one piece: 118 MB
