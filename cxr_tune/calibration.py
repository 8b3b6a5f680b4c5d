"""Do the probabilities mean what they say? ECE, Brier score, reliability diagrams, and recalibration.

A model that says 0.8 should be right about 80 % of the time it says so. Measured per labelled set
(:func:`calibration_metrics`): the **Brier score** (mean squared error of the probability,
scikit-learn's ``brier_score_loss``), the **expected calibration error** (ECE: the image-weighted
mean gap between the observed PNEUMONIA share and the mean probability in ten equal-width bins of
probability, the bins of scikit-learn's ``calibration_curve``), both with 95 % percentile
bootstrap intervals, and the reliability curve itself for a diagram (:func:`plot_reliability`).

Class-weighted training (the default, ``class_weighting: balanced``) and the deciding set's own
prevalence both move probabilities away from the observed frequencies; export can fit a monotone
map on the deciding set's scores (``--calibrate``, :func:`fit`): **Platt scaling** (a logistic
regression on the logit, two parameters) or **temperature scaling** (one: the logit divided by T).
Both are strictly increasing, so the ranking, the AUC and every decision are unchanged; only the
numbers move, and the threshold is re-expressed on the new scale::

    calibration = fit("platt", labels, scores)
    calibration.apply(scores)                 # calibrated probabilities
    calibration_metrics(labels, scores)       # {"ece": ..., "brier": ..., "ci95": {...}, "reliability": {...}}
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tune import selection
from cxr_tune.plotting import legend_beside, save_figure, subplots
from cxr_tune.selection import REPORTED_RESAMPLES

N_BINS = 10
METHODS = ("none", "platt", "temperature")
#: Probabilities are clipped this far from 0 and 1 before taking logits (a float32 probability of
#: exactly 0 or 1 has an infinite one).
EPSILON = 1e-12
LOG_T_BOUND = 5.0  # temperature scaling searches T in [exp(-5), exp(5)]


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), EPSILON, 1 - EPSILON)
    return np.log(p) - np.log1p(-p)


@dataclass(frozen=True)
class Calibration:
    """``p -> sigmoid(slope * logit(p) + intercept)``; the identity is slope 1, intercept 0."""

    method: str
    slope: float = 1.0
    intercept: float = 0.0

    def apply(self, scores: np.ndarray | float) -> np.ndarray:
        z = self.slope * logit(scores) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        """What ``model.json`` stores (and :mod:`cxr_tune.modelfile` builds into the graph)."""
        out: dict[str, Any] = {"method": self.method, "slope": self.slope, "intercept": self.intercept,
                               "formula": "sigmoid(slope * logit(p) + intercept), p the uncalibrated probability"}
        if self.method == "temperature":
            out["temperature"] = 1.0 / self.slope
        return out

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> Calibration:
        return cls(str(record["method"]), float(record["slope"]), float(record["intercept"]))


def fit(method: str, labels: np.ndarray, scores: np.ndarray, *, logits: np.ndarray | None = None) -> Calibration:
    """Fit ``method`` (``platt`` or ``temperature``) by maximum likelihood on ``(labels, scores)``,
    or on ``logits`` when given: the exact logits the map will be applied to (``scores`` clipped
    at :data:`EPSILON` would flatten an overconfident model's, and fit it a steeper map).

    Raises ``ValueError`` when the set cannot calibrate (one class only), when the map's likelihood
    grows without end as it steepens, so no finite map is the best and the fit would stop at an
    arbitrary one that calls every image 0 or 1 (Platt: scores that separate the classes, no NORMAL
    image above a PNEUMONIA one; temperature, which has no intercept: scores that separate them at
    0.5, or a temperature at its search bound), or when the fit would reverse the ranking (a
    negative slope: scores that run against the labels).
    """
    labels, z = np.asarray(labels).astype(int), (logit(scores) if logits is None else np.asarray(logits, dtype=float))
    if len(np.unique(labels)) < 2:
        raise ValueError("calibration needs both classes in the set it is fitted on")
    normal_top, pneumonia_bottom = z[labels == 0].max(), z[labels == 1].min()
    separated = normal_top <= pneumonia_bottom if method == "platt" else normal_top <= 0.0 <= pneumonia_bottom
    if separated and np.ptp(z) > 0:
        where = "" if method == "platt" else " on either side of 0.5"
        raise ValueError(f"its scores separate the classes perfectly{where} (no NORMAL image scores above a PNEUMONIA one), which leaves "
                         f"no finite {method} calibration to fit; export without --calibrate")
    if method == "platt":
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(z.reshape(-1, 1), labels)
        slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    elif method == "temperature":
        from scipy.optimize import minimize_scalar

        def nll(log_t: float) -> float:  # log sigmoid(+-x) as -logaddexp(0, -+x): exact for the large logits a fit meets
            x = z / math.exp(log_t)
            return float(np.mean(labels * np.logaddexp(0.0, -x) + (1 - labels) * np.logaddexp(0.0, x)))

        log_t = float(minimize_scalar(nll, bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded").x)
        if abs(log_t) > LOG_T_BOUND - 1e-3:  # the likelihood still rose at the bound: that temperature is the search's, not the data's
            raise ValueError(f"the fitted temperature ran to its search bound ({math.exp(log_t):.3g}): the scores leave no finite "
                             "temperature; export without --calibrate")
        slope, intercept = 1.0 / math.exp(log_t), 0.0
    else:
        raise ValueError(f"calibration method {method!r} is not one of {', '.join(METHODS[1:])}")
    if not slope > 0:
        raise ValueError(f"the fitted {method} slope is {slope:.3g}: the scores run against the labels, so no increasing map calibrates them")
    return Calibration(method, slope, intercept)


def reliability(labels: np.ndarray, scores: np.ndarray, n_bins: int = N_BINS) -> dict[str, list[float]]:
    """The reliability curve in ``n_bins`` equal-width bins (empty bins left out): per bin, the
    observed PNEUMONIA share, the mean probability and the number of images.

    The shares and means are scikit-learn's ``calibration_curve(strategy="uniform")``; the counts
    use the same bin edges, so the three lists line up.
    """
    from sklearn.calibration import calibration_curve

    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    if not len(labels):
        return {"observed": [], "predicted": [], "count": []}
    observed, predicted = calibration_curve(labels, scores, n_bins=n_bins, strategy="uniform")
    counts = np.bincount(_bins(scores, n_bins), minlength=n_bins)
    return {"observed": observed.tolist(), "predicted": predicted.tolist(), "count": counts[counts > 0].tolist()}


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, n_bins: int = N_BINS) -> float:
    """Image-weighted mean |observed share - mean probability| over the bins of :func:`reliability`."""
    curve = reliability(labels, scores, n_bins)
    counts = np.asarray(curve["count"], dtype=float)
    if not counts.sum():
        return math.nan
    return float(np.sum(counts * np.abs(np.asarray(curve["observed"]) - np.asarray(curve["predicted"]))) / counts.sum())


def calibration_metrics(labels: np.ndarray, scores: np.ndarray, *, n_bins: int = N_BINS, resamples: int = REPORTED_RESAMPLES, seed: int = 0) -> dict[str, Any]:
    """ECE and Brier score of one set, with 95 % percentile bootstrap intervals (images resampled
    with replacement, seeded) by the rule of every reported interval (:func:`cxr_tune.selection.reported_interval`:
    only resamples of both classes count, and none for a set where most lack one: one image, or one class), and its
    reliability curve; NaN and no interval for an empty set. A set with fewer than :data:`cxr_tune.selection.MIN_BOOTSTRAP_CLASS`
    images of a class gets none either, as for AUC: each is None, and ``ci95_withheld`` says why."""
    from sklearn.metrics import brier_score_loss

    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    out: dict[str, Any] = {"ece": math.nan, "brier": math.nan, "ci95": {}, "bins": n_bins, "reliability": reliability(labels, scores, n_bins)}
    if not len(labels):
        return out
    out["ece"] = expected_calibration_error(labels, scores, n_bins)
    out["brier"] = float(brier_score_loss(labels, scores, pos_label=1))
    if few := selection.too_few_images(labels):
        out["ci95"], out["ci95_withheld"] = dict.fromkeys(("ece", "brier")), dict.fromkeys(("ece", "brier"), few)
        return out
    rng = np.random.default_rng(seed)
    bins = _bins(scores, n_bins)
    chunk = max(1, selection.BOOTSTRAP_CHUNK_VALUES // len(labels))  # a large folder's resamples in parts: the same draws, bounded memory
    parts = [_resampled(labels, scores, bins, n_bins, rng.integers(0, len(labels), (min(chunk, resamples - start), len(labels))))
             for start in range(0, resamples, chunk)]
    ece, brier, both = (np.concatenate(values) for values in zip(*parts, strict=True))
    intervals = {name: selection.reported_interval(values, both, resamples) for name, values in (("ece", ece), ("brier", brier))}
    out["ci95"] = {name: ci for name, ci in intervals.items() if ci is not None}
    return out


def _resampled(labels: np.ndarray, scores: np.ndarray, bins: np.ndarray, n_bins: int, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ECE, Brier score, whether both classes were drawn) of each resample (a row of ``pick``: indices of the images
    drawn). Each image keeps its bin (``bins``), so a resample's bins are a bincount away."""
    resamples, size = len(pick), len(pick) * n_bins
    drawn = bins[pick] + n_bins * np.arange(resamples)[:, None]
    gap = (np.bincount(drawn.ravel(), weights=labels[pick].ravel(), minlength=size)
           - np.bincount(drawn.ravel(), weights=scores[pick].ravel(), minlength=size)).reshape(resamples, n_bins)
    ece = np.abs(gap).sum(axis=1) / len(labels)  # sum over bins of n_b |share_b - mean_b| / N
    positives = labels[pick].sum(axis=1)
    return ece, ((scores[pick] - labels[pick]) ** 2).mean(axis=1), (positives > 0) & (positives < pick.shape[1])


def effective_prior(n_normal: int, n_pneumonia: int, class_weighting: str | float) -> float:
    """The PNEUMONIA prior a model's probabilities are calibrated to, given how its loss weighted the classes
    (``balanced`` weighs each class as if the two were equally common: a prior of 0.5)."""
    prior = n_pneumonia / (n_normal + n_pneumonia)
    if class_weighting == "none":
        return prior
    weight = n_normal / n_pneumonia if class_weighting == "balanced" else float(class_weighting)
    return prior * weight / (prior * weight + 1 - prior)


@dataclass(frozen=True)
class ProbabilityPrior:
    """The PNEUMONIA prior an export's probabilities correspond to, and what it comes from.

    ``value`` is None when ``counts`` (read from ``counts_key`` in ``model.json``) are not two whole numbers
    above 0. ``fitted_on`` names the set a calibration map was fitted on (None without a map);
    ``class_weighting`` is the loss's weighting (None with a map: the map decides); ``member_values`` and
    ``member_weightings`` hold each ensemble member's prior and weighting without a map (members may differ)."""

    value: float | None
    counts: Any
    counts_key: str
    fitted_on: str | None = None
    class_weighting: str | float | None = None
    member_values: tuple[float, ...] = ()
    member_weightings: tuple[str | float, ...] = ()


def probability_prior(meta: dict[str, Any]) -> ProbabilityPrior:
    """The prior an export's probabilities (``model.json`` content ``meta``) are calibrated to: with a calibration
    map, the prevalence of the set it was fitted on (the map made the probabilities that set's); without, the
    training prior as the loss weighted it (:func:`effective_prior`). The model card states it; ``adapt
    --threshold prior-shift`` starts EM from it."""
    calibration = meta.get("calibration") or {}
    if calibration.get("method", "none") != "none":
        fitted_on = "external" if calibration.get("fitted_on") == "external" else "validation"
        measured = (meta.get("before_adaptation") or {}) if meta.get("adaptation") else meta  # an adapted model's sets moved there
        counts = (measured.get(fitted_on) or {}).get("class_counts")
        value = counts[1] / (counts[0] + counts[1]) if two_counts(counts) else None
        return ProbabilityPrior(value, counts, f"{fitted_on}.class_counts", fitted_on=fitted_on)
    counts = meta.get("train_class_counts")
    weighting = (meta.get("hparams") or {}).get("class_weighting", "balanced")
    if not two_counts(counts):
        return ProbabilityPrior(None, counts, "train_class_counts", class_weighting=weighting)
    members = tuple((m.get("hparams") or {}).get("class_weighting", "balanced") for m in meta.get("members", []) if isinstance(m, dict))
    return ProbabilityPrior(effective_prior(counts[0], counts[1], weighting), counts, "train_class_counts", class_weighting=weighting,
                            member_values=tuple(effective_prior(counts[0], counts[1], w) for w in members), member_weightings=members)


def two_counts(counts: Any) -> bool:
    """True for the NORMAL and PNEUMONIA image counts as recorded: two whole numbers above 0 (a prior divides by them)."""
    return isinstance(counts, list) and len(counts) == 2 and all(type(n) is int and n > 0 for n in counts)


#: The sets a ``model.json`` may hold calibration for, and their names in a diagram's legend.
RELIABILITY_SETS = (("validation", "carved validation"), ("external", "external validation"), ("test", "test"))


def reliability_curves(meta: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """``{label: reliability dict}`` for :func:`plot_reliability` from a ``model.json``: every set it
    measured, "(selection set)" on each set its own ``selection_set`` flag marks, and each set's curve
    before calibration where there was one. One function, so ``best/reliability.png`` and the
    report's diagram label a set the same way."""
    curves = {}
    for key, name in RELIABILITY_SETS:
        calibration = (meta.get(key) or {}).get("calibration")
        if calibration:
            curves[selection.selection_label(name, bool(meta[key].get("selection_set")))] = calibration["reliability"]
            if "before" in calibration:
                curves[f"{name}, before calibration"] = calibration["before"]["reliability"]
    return curves


def plot_reliability(path: str | Path, curves: dict[str, dict[str, list[float]]], title: str = "Reliability") -> None:
    """A reliability diagram: one curve per set (``{label: reliability dict}``, as :func:`reliability`
    and ``model.json`` hold them), marker area by bin size, the diagonal of perfect calibration."""
    fig, ax = subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfectly calibrated")
    for index, (name, curve) in enumerate(curves.items()):
        if not curve.get("count"):
            continue
        counts = np.asarray(curve["count"], dtype=float)
        # the named line carries a small marker (under the bin's disc): a set whose scores all fall in one bin draws no line,
        # and a line without a marker would leave it out of the legend (plotting.legend_beside lists what draws)
        ax.plot(curve["predicted"], curve["observed"], "-o", ms=3, color=f"C{index}", label=name)
        ax.scatter(curve["predicted"], curve["observed"], s=12 + 120 * counts / counts.max(), color=f"C{index}", zorder=3)
    edge = (-0.03, 1.03)  # room for the biggest markers: the bins at 0 and 1 are the largest, and were cut to half discs at the axes' edge
    ax.set(xlim=edge, ylim=edge, xlabel="mean predicted probability (bin)", ylabel="observed PNEUMONIA share (bin)", title=title)
    legend_beside(ax, fontsize=8)
    save_figure(fig, path)


def _bins(scores: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index per score: the equal-width edges and the side ``calibration_curve`` uses."""
    return np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], scores)
