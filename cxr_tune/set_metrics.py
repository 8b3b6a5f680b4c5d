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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxr_tune.calibration import calibration_metrics
from cxr_tune import selection
from cxr_tune.selection import BOOTSTRAP_PERCENTILES, REPORTED_RESAMPLES, objective_interval, too_few_images
from cxr_tune.subgroups import subgroup_rates
from cxr_tune.train.metrics import evaluate_scores, rates_at, wilson_interval

#: the metrics with 95 % percentile bootstrap intervals (``ci95``); sensitivity, specificity and accuracy get Wilson's (:func:`count_intervals`)
BOOTSTRAP_METRICS = ("balanced_accuracy", "auc")
#: how the intervals were computed, in words (the card, predict and compare print it)
INTERVAL_METHODS = ("95 % intervals: Wilson score for sensitivity, specificity and accuracy (from the counts), "
                    "percentile bootstrap for AUC and balanced accuracy (images resampled)")
#: Why a bootstrap interval is n/a, after each metric's own reason (:func:`withheld_line`)
WITHHELD_WHY = "too few images, or scores too separated, for the bootstrap to bound it; the rates' Wilson intervals still hold"
#: The same for a paired difference's (:func:`paired_with_reasons`): two models scoring alike also give every resample one value
PAIRED_WITHHELD_WHY = ("too few images, or the two models' scores too alike or too separated, for the paired bootstrap to bound it; "
                       "the rate differences' Newcombe intervals still hold")


def set_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float, hp: Any) -> dict[str, Any]:
    """Metrics of one set at the stored threshold (as predict will use it), with 95 % intervals
    (``ci95``: :func:`intervals`); NaN where undefined. The objective and its interval are the criterion's at
    that threshold too: a set that did not choose the threshold must not show the one it would choose."""
    at = rates_at(labels, scores, threshold)
    low, high = objective_interval(labels, scores, threshold, hp.criterion)
    return {**evaluate_scores(labels, scores, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance), **at,
            "objective": at[hp.criterion], "objective_low": low, "objective_high": high,
            "threshold": threshold, "n": int(len(labels)), **intervals(labels, scores, threshold)}


def held_out_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Scored once, at the stored threshold; never used to choose anything."""
    metrics = {**evaluate_scores(labels, scores), **rates_at(labels, scores, threshold)}
    for key in ("threshold", "objective", "objective_low", "objective_high"):
        metrics.pop(key, None)  # a held-out set does not choose a threshold; the stored one is used
    metrics["threshold_used"] = threshold
    metrics["n"] = int(len(labels))
    return {**metrics, **intervals(labels, scores, threshold)}


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


def intervals(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, dict[str, Any]]:
    """95 % intervals of the metrics at a fixed threshold: ``ci95``, Wilson score intervals of the rates of counts
    (a bootstrap of a rate of 0 or 1 gives [0, 0] or [1, 1], however many images) and the percentile bootstrap of AUC
    and balanced accuracy, None where it is withheld; ``ci95_withheld``: why, by metric (:func:`bootstrap_with_reasons`)."""
    bootstrapped, withheld = bootstrap_with_reasons(labels, scores, threshold)
    return {"ci95": {**bootstrapped, **count_intervals(rates_at(labels, scores, threshold))}, "ci95_withheld": withheld}


def withheld_line(withheld: Mapping[str, str], why: str = WITHHELD_WHY) -> str | None:
    """The one line that says why intervals print as n/a (``ci95_withheld``; ``why``: what is behind it, and what still
    holds: :data:`PAIRED_WITHHELD_WHY` for paired differences), or None when none is."""
    if not withheld:
        return None
    names = {"auc": "AUC", "balanced_accuracy": "balanced accuracy", "ece": "ECE", "brier": "Brier"}
    return "n/a intervals: " + "; ".join(f"{names.get(key, key)}: {why}" for key, why in withheld.items()) + f" ({why})"


def count_intervals(counts: Mapping[str, int]) -> dict[str, list[float]]:
    """95 % Wilson score intervals of sensitivity, specificity and accuracy from the confusion counts
    (``tp``, ``fp``, ``tn``, ``fn``, as ``model.json`` stores them); none for a rate without images."""
    tp, fp, tn, fn = (int(counts[key]) for key in ("tp", "fp", "tn", "fn"))
    drawn = {"sensitivity": (tp, tp + fn), "specificity": (tn, tn + fp), "accuracy": (tp + tn, tp + fp + tn + fn)}
    return {name: ci for name, (right, n) in drawn.items() if (ci := wilson_interval(right, n)) is not None}


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float, *, resamples: int = REPORTED_RESAMPLES,
                        seed: int = 0) -> dict[str, list[float] | None]:
    """95 % percentile bootstrap intervals of AUC and balanced accuracy at a fixed threshold (images resampled with
    replacement; seeded, so the same scores in the same order give the same interval); a metric undefined on a resample (a class missing from it)
    leaves that resample out, and one undefined on most of them (AUC of a one-class split) gets no interval; None where
    the interval is withheld (:func:`bootstrap_with_reasons`)."""
    return bootstrap_with_reasons(labels, scores, threshold, resamples=resamples, seed=seed)[0]


def bootstrap_with_reasons(labels: np.ndarray, scores: np.ndarray, threshold: float, *, resamples: int = REPORTED_RESAMPLES,
                           seed: int = 0) -> tuple[dict[str, list[float] | None], dict[str, str]]:
    """:func:`bootstrap_intervals` and why each withheld one is: fewer than :data:`~cxr_tune.selection.MIN_BOOTSTRAP_CLASS` images of a
    class (the interval's coverage falls well short of 95 %), or every resample giving one value
    (:func:`cxr_tune.selection.bootstrap_interval`: perfectly separated or tied scores)."""
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    few = too_few_images(labels)
    if few:
        return dict.fromkeys(BOOTSTRAP_METRICS), dict.fromkeys(BOOTSTRAP_METRICS, few)
    rng = np.random.default_rng(seed)
    chunk = max(1, selection.BOOTSTRAP_CHUNK_VALUES // max(len(labels), 1))  # a large folder's resamples in parts: the same draws, bounded memory
    parts = [_resampled(labels, scores, threshold, rng.integers(0, len(labels), (min(chunk, resamples - start), len(labels))))
             for start in range(0, resamples, chunk)]
    samples = {name: np.concatenate([part[name] for part in parts]) for name in BOOTSTRAP_METRICS}
    drawn = {name: selection.bootstrap_interval(samples[name], np.isfinite(samples[name]), resamples) for name in BOOTSTRAP_METRICS}
    return ({name: ci for name, (ci, why) in drawn.items() if ci is not None or why},
            {name: why for name, (_, why) in drawn.items() if why})


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
#: how compare's paired intervals were computed, in words (compare prints it above the differences)
PAIRED_METHODS = ("Newcombe's hybrid score interval for paired proportions for sensitivity and specificity (Newcombe 1998, method 10), "
                  "a paired bootstrap within each class for AUC and balanced accuracy")


def paired_differences(labels: np.ndarray, scores: np.ndarray, threshold: float, reference: np.ndarray, reference_threshold: float,
                       *, resamples: int = REPORTED_RESAMPLES, seed: int = 0) -> dict[str, tuple[float, list[float] | None]]:
    """Each of :data:`PAIRED_METRICS` of ``scores`` (at ``threshold``) minus the same of ``reference``
    (at ``reference_threshold``) on the same images, with a paired 95 % interval (None where withheld:
    :func:`paired_with_reasons`), far narrower than two models' separate intervals. Needs both classes."""
    return paired_with_reasons(labels, scores, threshold, reference, reference_threshold, resamples=resamples, seed=seed)[0]


def paired_with_reasons(labels: np.ndarray, scores: np.ndarray, threshold: float, reference: np.ndarray, reference_threshold: float,
                        *, resamples: int = REPORTED_RESAMPLES, seed: int = 0) -> tuple[dict[str, tuple[float, list[float] | None]], dict[str, str]]:
    """:func:`paired_differences` and why each withheld interval is. Sensitivity and specificity differ by the images
    one model calls right and the other wrong: Newcombe's interval for paired proportions (:func:`paired_rate_interval`;
    a bootstrap percentile called 4 to 0 such images of 117 a difference where McNemar's exact p is 0.125). AUC and
    balanced accuracy: a bootstrap whose resamples are drawn within each class and shared by both models, each
    resample's AUC the Mann-Whitney statistic of its ranks (ties averaged), withheld as :func:`bootstrap_with_reasons`
    withholds a model's own."""
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
        return {"auc": (ranks[:, :p].sum(axis=1) - p * (p + 1) / 2) / (p * n), "balanced_accuracy": (sensitivity + specificity) / 2}

    def differences(count: int) -> dict[str, np.ndarray]:
        pick = np.stack([np.r_[rng.choice(positives, p), rng.choice(negatives, n)] for _ in range(count)])  # positives first
        mine, theirs = resampled(scores, threshold, pick), resampled(reference, reference_threshold, pick)
        return {key: mine[key] - theirs[key] for key in BOOTSTRAP_METRICS}

    def observed(values: np.ndarray, at: float) -> dict[str, float]:
        rates = rates_at(labels, values, at)
        return {"auc": float(roc_auc_score(labels, values)), **{key: rates[key] for key in PAIRED_METRICS[1:]}}

    point, point_reference = observed(scores, threshold), observed(reference, reference_threshold)
    called, called_reference = np.asarray(scores, dtype=float) >= threshold, np.asarray(reference, dtype=float) >= reference_threshold
    out = {key: (point[key] - point_reference[key], paired_rate_interval(right[images], right_reference[images]))
           for key, images, right, right_reference in (("sensitivity", positives, called, called_reference),
                                                       ("specificity", negatives, ~called, ~called_reference))}
    few = too_few_images(labels)
    if few:
        withheld = dict.fromkeys(BOOTSTRAP_METRICS, few)
        drawn: dict[str, tuple[list[float] | None, str | None]] = {key: (None, few) for key in BOOTSTRAP_METRICS}
    else:
        chunk = max(1, selection.BOOTSTRAP_CHUNK_VALUES // len(labels))  # a large folder's resamples in parts: the same draws, bounded memory
        parts = [differences(min(chunk, resamples - start)) for start in range(0, resamples, chunk)]
        values = {key: np.concatenate([part[key] for part in parts]) for key in BOOTSTRAP_METRICS}
        drawn = {key: selection.bootstrap_interval(values[key], np.ones(len(values[key]), dtype=bool), resamples) for key in BOOTSTRAP_METRICS}
        withheld = {key: why for key, (_, why) in drawn.items() if why}
    out.update({key: (point[key] - point_reference[key], drawn[key][0]) for key in BOOTSTRAP_METRICS})
    return {key: out[key] for key in PAIRED_METRICS}, withheld


def paired_rate_interval(right: np.ndarray, right_reference: np.ndarray) -> list[float]:
    """95 % interval of ``right.mean() - right_reference.mean()``, two models' rates on the same images: Newcombe's hybrid
    score interval for paired proportions (Newcombe 1998, Stat Med 17:2635, method 10; as Fagerland, Lydersen and Laake's
    *Statistical Analysis of Contingency Tables* computes it): each rate's Wilson limits, combined with the phi correlation of
    the paired 2x2 table, its ``ad - bc`` less n/2 when above n/2 and 0 up to n/2 (Newcombe's correction), 0 when a margin is 0."""
    right, right_reference = np.asarray(right, dtype=bool), np.asarray(right_reference, dtype=bool)
    a, b = int((right & right_reference).sum()), int((right & ~right_reference).sum())  # both right; only this model
    c, d = int((~right & right_reference).sum()), int((~right & ~right_reference).sum())  # only the reference; neither
    total = a + b + c + d
    p1, p2 = (a + b) / total, (a + c) / total
    (low1, high1), (low2, high2) = wilson_interval(a + b, total), wilson_interval(a + c, total)
    margins = (a + b) * (c + d) * (a + c) * (b + d)
    cross = a * d - b * c
    cross = cross - total / 2 if cross > total / 2 else min(cross, 0)
    phi = cross / math.sqrt(margins) if margins else 0.0
    low = p1 - p2 - math.sqrt(max((p1 - low1) ** 2 - 2 * phi * (p1 - low1) * (high2 - p2) + (high2 - p2) ** 2, 0.0))
    high = p1 - p2 + math.sqrt(max((high1 - p1) ** 2 - 2 * phi * (high1 - p1) * (p2 - low2) + (p2 - low2) ** 2, 0.0))
    return [max(low, -1.0), min(high, 1.0)]
