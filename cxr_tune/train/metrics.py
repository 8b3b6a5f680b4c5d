"""Metrics of a set of scores: AUC, log loss, calibration, and rates at the chosen threshold.

The threshold and the objective's interval come from :mod:`cxr_tune.selection` (the one home of
every selection rule); everything else is computed by scikit-learn.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import brier_score_loss, confusion_matrix, log_loss, roc_auc_score

from cxr_tune.selection import CRITERIA, choose_threshold, objective_interval


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


def wilson_interval(successes: int, n: int) -> list[float] | None:
    """95 % Wilson score interval of a proportion (scipy), or None for no trials."""
    if not n:
        return None
    from scipy.stats import binomtest

    interval = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    return [float(interval.low), float(interval.high)]


def evaluate_scores(labels: np.ndarray, scores: np.ndarray, criterion: str = "balanced_accuracy", min_sensitivity: float = 0.0, tolerance: float = 0.0) -> dict[str, float]:
    """Everything reported per epoch: AUC, loss, calibration, and rates at the chosen threshold and at 0.5.

    A diverged network scores NaN: such scores count as 0.5 (no information) and ``non_finite``
    says how many there were, so the epoch is measured as the coin toss it is, not a crash. Only the
    log loss sees the scores clipped away from 0 and 1: the AUC, the threshold and the rates see
    them as stored, as export and predict do (clipping ties saturated scores that export tells apart)."""
    scores = np.asarray(scores, dtype=float)
    non_finite = int((~np.isfinite(scores)).sum())
    labels, scores = np.asarray(labels).astype(int), np.where(np.isfinite(scores), scores, 0.5)
    two_classes = len(np.unique(labels)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        auc = float(roc_auc_score(labels, scores)) if two_classes else math.nan
    threshold = choose_threshold(labels, scores, criterion, min_sensitivity, tolerance)
    out = {
        "auc": auc,
        "loss": float(log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
        "brier": float(brier_score_loss(labels, np.clip(scores, 0.0, 1.0), pos_label=1)) if len(labels) else math.nan,
        "threshold": threshold,
        "n": int(len(labels)),
        "prevalence": float(labels.mean()) if len(labels) else math.nan,
        "non_finite": non_finite,
    }
    out.update(rates_at(labels, scores, threshold))
    out.update({f"{k}_at_0.5": v for k, v in rates_at(labels, scores, 0.5).items() if k in ("sensitivity", "specificity", *CRITERIA)})
    out["objective"] = out[criterion]
    out["objective_low"], out["objective_high"] = objective_interval(labels, scores, threshold, criterion)
    return out
