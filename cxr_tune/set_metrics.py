"""What is measured on one labelled set of images at a stored threshold: one home, read by ``export``
(for ``model.json`` and the model card), ``predict`` (on a labelled folder) and the benchmarks.

- :func:`set_metrics`: a set that chose things (carved validation, the external set): the metrics
  with the objective, and 95 % intervals (:func:`intervals`).
- :func:`held_out_metrics`: a set that chose nothing (a test split, a new site's labelled sample):
  the same at the stored threshold, without the threshold search.
- :func:`clinical_metrics`: what a clinician checks on it: class counts, calibration, the rates at
  every operating point, and the subgroups the file names carry.

So a model's test numbers in its card and ``predict``'s numbers on the same images are one
computation, intervals included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxr_tune.calibration import calibration_metrics
from cxr_tune import selection
from cxr_tune.selection import BOOTSTRAP_PERCENTILES, REPORTED_RESAMPLES, objective_interval
from cxr_tune.subgroups import subgroup_rates
from cxr_tune.train.metrics import evaluate_scores, rates_at, wilson_interval

#: the metrics with 95 % percentile bootstrap intervals (``ci95``); sensitivity, specificity and accuracy get Wilson's (:func:`count_intervals`)
BOOTSTRAP_METRICS = ("balanced_accuracy", "auc")
#: how the intervals were computed, in words (the card, predict and compare print it)
INTERVAL_METHODS = ("95 % intervals: Wilson score for sensitivity, specificity and accuracy (from the counts), "
                    "percentile bootstrap for AUC and balanced accuracy (images resampled)")


def set_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float, hp: Any) -> dict[str, Any]:
    """Metrics of one set at the stored threshold (as predict will use it), with 95 % intervals
    (``ci95``: :func:`intervals`); NaN where undefined. The objective and its interval are the criterion's at
    that threshold too: a set that did not choose the threshold must not show the one it would choose."""
    at = rates_at(labels, scores, threshold)
    low, high = objective_interval(labels, scores, threshold, hp.criterion)
    return {**evaluate_scores(labels, scores, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance), **at,
            "objective": at[hp.criterion], "objective_low": low, "objective_high": high,
            "threshold": threshold, "n": int(len(labels)), "ci95": intervals(labels, scores, threshold)}


def held_out_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Scored once, at the stored threshold; never used to choose anything."""
    metrics = {**evaluate_scores(labels, scores), **rates_at(labels, scores, threshold)}
    for key in ("threshold", "objective", "objective_low", "objective_high"):
        metrics.pop(key, None)  # a held-out set does not choose a threshold; the stored one is used
    metrics["threshold_used"] = threshold
    metrics["n"] = int(len(labels))
    metrics["ci95"] = intervals(labels, scores, threshold)
    return metrics


def clinical_metrics(paths: Sequence[str], labels: np.ndarray, scores: np.ndarray, threshold: float, points: dict[str, dict[str, Any]],
                     uncalibrated: np.ndarray | None = None) -> dict[str, Any]:
    """What a clinician checks on one labelled set: class counts, calibration (and before the
    calibration map, when there is one), the rates at every operating point with Wilson
    intervals, and the subgroups the file names carry (at ``threshold``; absent when none)."""
    labels = np.asarray(labels).astype(int)
    out: dict[str, Any] = {
        "class_counts": [int((labels == 0).sum()), int((labels == 1).sum())],
        "calibration": calibration_metrics(labels, scores),
        "operating_points": {name: rates_with_intervals(labels, scores, point["threshold"]) for name, point in points.items()},
    }
    if uncalibrated is not None:
        out["calibration"]["before"] = calibration_metrics(labels, uncalibrated)
    groups = subgroup_rates(list(paths), labels, (np.asarray(scores) >= threshold).astype(int))
    if groups is not None:
        out["subgroups"] = groups
    return out


def rates_with_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, predictive values and counts at one threshold, the rates with intervals."""
    rates = rates_at(labels, scores, threshold)
    ci = count_intervals(rates)
    return {**{key: rates[key] for key in ("sensitivity", "specificity", "ppv", "npv", "tp", "fp", "tn", "fn")},
            "threshold": threshold, "ci95": {key: ci[key] for key in ("sensitivity", "specificity") if key in ci}}


def intervals(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, list[float]]:
    """95 % intervals of the metrics at a fixed threshold: Wilson score intervals of the rates of counts
    (a bootstrap of a rate of 0 or 1 gives [0, 0] or [1, 1], however many images), the percentile
    bootstrap of AUC and balanced accuracy."""
    return {**bootstrap_intervals(labels, scores, threshold), **count_intervals(rates_at(labels, scores, threshold))}


def count_intervals(counts: Mapping[str, int]) -> dict[str, list[float]]:
    """95 % Wilson score intervals of sensitivity, specificity and accuracy from the confusion counts
    (``tp``, ``fp``, ``tn``, ``fn``, as ``model.json`` stores them); none for a rate without images."""
    tp, fp, tn, fn = (int(counts[key]) for key in ("tp", "fp", "tn", "fn"))
    drawn = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "accuracy": (tp + tn, tp + fp + tn + fn)}
    return {name: ci for name, (right, n) in drawn.items() if (ci := wilson_interval(right, n)) is not None}


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float, *, resamples: int = REPORTED_RESAMPLES, seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile bootstrap intervals of AUC and balanced accuracy at a fixed threshold (images resampled with
    replacement; seeded, so the same scores in the same order give the same interval); a metric undefined on a resample (a class missing from it)
    leaves that resample out, and one undefined on most of them (AUC of a one-class split) gets no interval."""
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    chunk = max(1, selection.BOOTSTRAP_CHUNK_VALUES // max(len(labels), 1))  # a large folder's resamples in parts: the same draws, bounded memory
    parts = [_resampled(labels, scores, threshold, rng.integers(0, len(labels), (min(chunk, resamples - start), len(labels))))
             for start in range(0, resamples, chunk)]
    samples = {name: np.concatenate([part[name] for part in parts]) for name in BOOTSTRAP_METRICS}
    intervals = {name: selection.reported_interval(samples[name], np.isfinite(samples[name]), resamples) for name in BOOTSTRAP_METRICS}
    return {name: ci for name, ci in intervals.items() if ci is not None}


def _resampled(labels: np.ndarray, scores: np.ndarray, threshold: float, pick: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric on each resample (a row of ``pick``: indices of the images drawn); NaN where undefined."""
    from scipy.stats import rankdata

    y, p = labels[pick].astype(bool), scores[pick]
    called = p >= threshold
    positives, negatives = y.sum(axis=1), (~y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = (called & y).sum(axis=1) / positives
        specificity = (~called & ~y).sum(axis=1) / negatives
        ranks = rankdata(p, axis=1)  # Mann-Whitney: AUC from the positives' rank sum (ties averaged)
        auc = ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
    return {"balanced_accuracy": (sensitivity + specificity) / 2, "auc": auc}


#: the metrics compared between two models on the same images (:func:`paired_differences`)
PAIRED_METRICS = ("auc", "sensitivity", "specificity", "balanced_accuracy")


def paired_differences(labels: np.ndarray, scores: np.ndarray, threshold: float, reference: np.ndarray, reference_threshold: float,
                       *, resamples: int = REPORTED_RESAMPLES, seed: int = 0) -> dict[str, tuple[float, list[float]]]:
    """Each of :data:`PAIRED_METRICS` of ``scores`` (at ``threshold``) minus the same of ``reference``
    (at ``reference_threshold``) on the same images, with a 95 % interval from bootstrap resamples
    drawn within each class and shared by both models: a paired comparison, far narrower than two
    models' separate intervals. Each resample's AUC is the Mann-Whitney statistic of its ranks (ties
    averaged), which equals the ROC curve's area. Needs both classes."""
    from scipy.stats import rankdata
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    p, n = len(positives), len(negatives)
    if not p or not n:
        raise ValueError("a paired comparison needs images of both classes")

    def resampled(values: np.ndarray, at: float, pick: np.ndarray) -> dict[str, np.ndarray]:
        drawn = np.asarray(values, dtype=float)[pick]
        ranks = rankdata(drawn, axis=1)
        sensitivity, specificity = (drawn[:, :p] >= at).mean(axis=1), (drawn[:, p:] < at).mean(axis=1)
        return {"auc": (ranks[:, :p].sum(axis=1) - p * (p + 1) / 2) / (p * n), "sensitivity": sensitivity, "specificity": specificity,
                "balanced_accuracy": (sensitivity + specificity) / 2}

    def differences(count: int) -> dict[str, np.ndarray]:
        pick = np.stack([np.r_[rng.choice(positives, p), rng.choice(negatives, n)] for _ in range(count)])  # positives first
        mine, theirs = resampled(scores, threshold, pick), resampled(reference, reference_threshold, pick)
        return {key: mine[key] - theirs[key] for key in PAIRED_METRICS}

    def observed(values: np.ndarray, at: float) -> dict[str, float]:
        rates = rates_at(labels, values, at)
        return {"auc": float(roc_auc_score(labels, values)), **{key: rates[key] for key in PAIRED_METRICS[1:]}}

    chunk = max(1, selection.BOOTSTRAP_CHUNK_VALUES // len(labels))  # a large folder's resamples in parts: the same draws, bounded memory
    parts = [differences(min(chunk, resamples - start)) for start in range(0, resamples, chunk)]
    drawn = {key: np.concatenate([part[key] for part in parts]) for key in PAIRED_METRICS}
    point, point_reference = observed(scores, threshold), observed(reference, reference_threshold)
    return {key: (point[key] - point_reference[key], [float(v) for v in np.percentile(drawn[key], BOOTSTRAP_PERCENTILES)])
            for key in PAIRED_METRICS}
