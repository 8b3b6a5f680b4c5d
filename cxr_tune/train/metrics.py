"""Validation metrics that decide which trial wins, and the decision threshold they imply.

The threshold is chosen on validation to maximize a balance of sensitivity and specificity
(:data:`CRITERIA`), optionally only among thresholds that keep sensitivity at or above a floor
(screening wants few missed pneumonias). Everything else is computed by scikit-learn.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import brier_score_loss, confusion_matrix, log_loss, roc_auc_score, roc_curve

CRITERIA = {
    "balanced_accuracy": lambda sens, spec: (sens + spec) / 2,
    "youden": lambda sens, spec: sens + spec - 1,
    "gmean": lambda sens, spec: np.sqrt(sens * spec),
    "min_sens_spec": np.minimum,
}


def rates_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Confusion counts and rates when ``score >= threshold`` means PNEUMONIA."""
    predicted = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(np.asarray(labels).astype(int), predicted, labels=[0, 1]).ravel()
    sens = tp / (tp + fn) if tp + fn else math.nan
    spec = tn / (tn + fp) if tn + fp else math.nan
    out = {
        "sensitivity": float(sens),
        "specificity": float(spec),
        "accuracy": float((tp + tn) / max(tp + tn + fp + fn, 1)),
        "ppv": float(tp / (tp + fp)) if tp + fp else math.nan,
        "npv": float(tn / (tn + fn)) if tn + fn else math.nan,
        "tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn),
    }
    for name, fn_ in CRITERIA.items():
        out[name] = float(fn_(sens, spec))
    return out


def choose_threshold(
    labels: np.ndarray,
    scores: np.ndarray,
    criterion: str = "balanced_accuracy",
    min_sensitivity: float = 0.0,
    tolerance: float = 0.0,
) -> float:
    """A threshold that maximizes ``criterion`` on these scores; ``score >= threshold`` is positive.

    Only thresholds with sensitivity >= ``min_sensitivity`` compete. Every threshold within
    ``tolerance`` of the best value counts as best, and the one returned sits in the middle of
    that range in logit space, as far as it can from the images on either side: validation carved
    from train is easier than new data, and a threshold pressed against the last NORMAL or the
    first PNEUMONIA image of validation does not transfer. With ``tolerance`` 0 this is halfway
    between the best cut and the next lower score. With one class present, 0.5 is returned.
    """
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, cuts = roc_curve(labels, scores, drop_intermediate=False)
    values = CRITERIA[criterion](tpr, 1 - fpr)
    values = np.where((tpr >= min_sensitivity - 1e-12) & np.isfinite(cuts), values, -np.inf)
    best = float(values.max())
    near = np.flatnonzero(values >= best - tolerance - 1e-12)
    upper = cuts[near].max()  # the most specific near-best cut
    lowest = cuts[near].min()
    below = scores[scores < lowest]
    lower = below.max() if below.size else 0.0  # thresholds in (lower, lowest] behave like the cut at ``lowest``
    centre = _sigmoid((_logit(upper) + _logit(lower)) / 2)
    if CRITERIA[criterion](*_rates(labels, scores, centre)) >= best - tolerance - 1e-12 and _sensitivity(labels, scores, centre) >= min_sensitivity - 1e-12:
        return centre
    top = cuts[int(np.argmax(values))]  # near-best cuts are not contiguous: fall back to the best one
    lower_top = scores[scores < top]
    return float((top + (lower_top.max() if lower_top.size else 0.0)) / 2)


def _logit(p: float) -> float:
    p = float(np.clip(p, 1e-7, 1 - 1e-7))
    return float(np.log(p / (1 - p)))


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def _rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = scores >= threshold
    return float(predicted[labels == 1].mean()), float(1 - predicted[labels == 0].mean())


def _sensitivity(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    return _rates(labels, scores, threshold)[0]


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, criterion: str = "balanced_accuracy", min_sensitivity: float = 0.0, tolerance: float = 0.0) -> dict[str, float]:
    """Everything reported per epoch: AUC, loss, calibration, and rates at the chosen threshold and at 0.5."""
    labels, scores = np.asarray(labels).astype(int), np.clip(np.asarray(scores, dtype=float), 1e-7, 1 - 1e-7)
    two_classes = len(np.unique(labels)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        auc = float(roc_auc_score(labels, scores)) if two_classes else math.nan
    threshold = choose_threshold(labels, scores, criterion, min_sensitivity, tolerance)
    out = {
        "auc": auc,
        "loss": float(log_loss(labels, scores, labels=[0, 1])),
        "brier": float(brier_score_loss(labels, scores, pos_label=1)) if len(labels) else math.nan,
        "threshold": threshold,
        "n": int(len(labels)),
        "prevalence": float(labels.mean()) if len(labels) else math.nan,
    }
    out.update(rates_at(labels, scores, threshold))
    out.update({f"{k}_at_0.5": v for k, v in rates_at(labels, scores, 0.5).items() if k in ("sensitivity", "specificity", *CRITERIA)})
    out["objective"] = out[criterion]
    return out
