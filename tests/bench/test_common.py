"""The paired AUC difference the benchmarks report: sklearn's AUC on the same class-stratified resamples."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

from cxr_tune.bench.common import paired_auc_difference


def test_the_paired_interval_is_the_spread_of_per_resample_auc_differences_ties_included():
    rng = np.random.default_rng(3)
    labels = (rng.random(80) < 0.6).astype(int)
    scores, reference = np.round(rng.random(80) + 0.5 * labels, 1), np.round(rng.random(80) + 0.3 * labels, 1)  # many ties
    difference, (low, high) = paired_auc_difference(labels, scores, reference, resamples=200)

    draw = np.random.default_rng(0)  # the documented draws: within each class, positives then negatives, seed 0
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    diffs = []
    for _ in range(200):
        pick = np.r_[draw.choice(positives, len(positives)), draw.choice(negatives, len(negatives))]
        diffs.append(roc_auc_score(labels[pick], scores[pick]) - roc_auc_score(labels[pick], reference[pick]))
    assert difference == roc_auc_score(labels, scores) - roc_auc_score(labels, reference)
    np.testing.assert_allclose([low, high], np.percentile(diffs, [2.5, 97.5]), atol=1e-12)
    assert paired_auc_difference(labels, scores, scores, resamples=50) == (0.0, [0.0, 0.0])
