"""Bootstrap intervals of a set's metrics: seeded, 95 %, and each resample's AUC the ROC curve's area."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_tune.set_metrics import bootstrap_intervals


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
