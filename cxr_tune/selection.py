"""Every selection rule in one place: the threshold, a run's best epoch, the trial ranking, the ensemble.

The search, ASHA (through the reported ``objective``), export, the report, cross-validation and the
benchmarks all call these functions, so a table can never disagree with what was selected.

**The deciding set** (``deciding``: ``external`` or ``carved``) is a recorded fact of every run
(``experiment.json``, every checkpoint) and every rule below takes it as an argument; nothing is
inferred from the numbers. ``external`` judges on the external validation set (metrics prefixed
``ext_``), ``carved`` on validation carved from train (``val_``). Carved validation shares the
training population and saturates (AUC 0.999), so it cannot see the shift to new patients; under
``carved`` no ``ext_`` number takes part in any choice, tie-breaks included.

**The rules.**

- *Threshold*: maximize the criterion (default balanced accuracy) on the deciding set, optionally
  only among thresholds keeping sensitivity >= a floor; thresholds within ``tolerance`` of the best
  count as best and the middle of their range (logit scale) is used (:func:`choose_threshold`).
- *Operating points*: a floor under one rate, the other as high as it allows (:func:`floor_threshold`).
- *Objective*: the criterion at that threshold, with a 95 % stratified bootstrap interval
  (:func:`objective_interval`): with a few hundred images one image moves it by a fraction of a point.
- *Diverged*: an epoch whose network scored any image non-finite (NaN) is measured as a coin toss,
  never chosen: it is no run's best epoch while the run has another, and a trial that diverged at
  every epoch is ranked after every other trial, never selected nor an ensemble member (:func:`diverged`).
- *Best epoch* of a run: the highest objective; ties go to higher AUC, then lower log loss, then
  the earlier epoch (:func:`best_epoch`).
- *Trial ranking*: trials whose objective interval overlaps the best trial's interval are tied
  with it; tied trials go by AUC on the deciding set (threshold-free, so not fitted to the same
  images the threshold was), then by lower log loss; the others follow by objective
  (:func:`ranked_trials`).
- *Ensemble*: the first K trials of the ranking that share the selected trial's image size; its
  threshold is chosen by the same rule on their averaged scores (:func:`ensemble_members`).
- *Final fit*: its runs' average replaces the search's own ensemble only when its AUC on the
  deciding set is no lower (:func:`final_fit_kept`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from cxr_tune.formatting import printable

if TYPE_CHECKING:  # pandas is imported where tables are ranked, so the training step (CRITERIA) needs only numpy
    import pandas as pd

CRITERIA = {
    "balanced_accuracy": lambda sens, spec: (sens + spec) / 2,
    "youden": lambda sens, spec: sens + spec - 1,
    "gmean": lambda sens, spec: np.sqrt(sens * spec),
    "min_sens_spec": np.minimum,
}
#: What each criterion scores, in words, for --select's help and the README.
CRITERIA_MEANING = {
    "balanced_accuracy": "(sensitivity + specificity) / 2",
    "youden": "sensitivity + specificity - 1 (Youden's J: 2 x balanced accuracy - 1, so it ranks alike)",
    "gmean": "sqrt(sensitivity x specificity), the geometric mean, lower than the average when the two differ",
    "min_sens_spec": "the smaller of sensitivity and specificity, so the weaker class decides",
}
PREFIXES = {"external": "ext", "carved": "val"}
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_LEVEL = 0.95
#: The percentiles bounding the central BOOTSTRAP_LEVEL of bootstrap values (2.5 and 97.5): every reported interval.
BOOTSTRAP_PERCENTILES = (round(50 * (1 - BOOTSTRAP_LEVEL), 9), round(100 - 50 * (1 - BOOTSTRAP_LEVEL), 9))
#: Resamples of the intervals reported for a model (its sets' metrics and calibration, the benches);
#: a trial's objective interval, computed for every trial, takes BOOTSTRAP_RESAMPLES.
REPORTED_RESAMPLES = 2000
#: Resampled values a bootstrap holds at once (a few arrays of this size: tens of MB): a large set's resamples
#: are drawn in parts of this many, the same draws as in one piece. Read at each call, so a test can lower it.
BOOTSTRAP_CHUNK_VALUES = 2_000_000


#: Fewest images of each class for a bootstrap interval of AUC, balanced accuracy, ECE or the Brier score: with 5 of each a
#: simulated 95 % percentile interval of AUC 0.86 held the true AUC 80 % of the time, with 10 of each 92 %, with 20 of each
#: 95 % (300 sets each, scores normal with the classes 1.5 SD apart); below it the interval is n/a, the rates' Wilson intervals stand.
MIN_BOOTSTRAP_CLASS = 10


def too_few_images(labels: np.ndarray) -> str | None:
    """Why a set of both classes is too small for a bootstrap interval (:data:`MIN_BOOTSTRAP_CLASS`), or None."""
    counts = {name: int((np.asarray(labels) == value).sum()) for value, name in enumerate(("NORMAL", "PNEUMONIA"))}
    few = {name: count for name, count in counts.items() if 0 < count < MIN_BOOTSTRAP_CLASS}
    if not few or 0 in counts.values():  # one class: the metric itself is undefined, no reason needed
        return None
    return " and ".join(f"{count} {name}" for name, count in few.items()) + f" image(s), fewer than {MIN_BOOTSTRAP_CLASS} of a class"


def reported_interval(values: np.ndarray, defined: np.ndarray, resamples: int) -> list[float] | None:
    """The percentile bootstrap interval of ``values`` over the resamples where the metric is ``defined`` (both classes
    drawn: a resample without one leaves AUC and balanced accuracy undefined); None when it is undefined on more than half
    of them (a set of one class, or of a few images) or withheld (:func:`bootstrap_interval`): every reported bootstrap
    interval follows this rule, and one of a set with few images of a class :func:`too_few_images` too.
    (A trial's objective interval, which the tie rule reads, is :func:`objective_interval`'s.)"""
    return bootstrap_interval(values, defined, resamples)[0]


def bootstrap_interval(values: np.ndarray, defined: np.ndarray, resamples: int) -> tuple[list[float] | None, str | None]:
    """:func:`reported_interval` and why it is withheld: a percentile bootstrap whose resamples all gave one value
    (perfectly separated or tied scores, a handful of images) has zero width, which reads as certainty it does not
    have, so it is no interval: (None, "every resample gave 1.0000"). (None, None) where the metric is undefined."""
    values = np.asarray(values)[np.asarray(defined, dtype=bool)]
    if len(values) < max(resamples // 2, 1):
        return None, None
    low, high = (float(v) for v in np.percentile(values, BOOTSTRAP_PERCENTILES))
    if low == high:
        return None, f"every resample gave {low:.4f}"
    return [low, high], None


def add_select_on_argument(parser: Any, chooses: str = "epochs, trials, ensemble members and the threshold") -> None:
    """``--select-on``, shared by train and search; ``chooses``: what the deciding set chooses in that command."""
    parser.add_argument("--select-on", choices=tuple(PREFIXES), default="external",
                        help=f"the set that chooses {chooses} when there is an external one: "
                             "external, or carved (validation carved from train; the external set is then scored for comparison only) "
                             "(default: external; carved when there is no external set)")


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
    that range in logit space, as far as it can from the images on either side: a threshold
    pressed against the last NORMAL or the first PNEUMONIA image of validation does not transfer.
    With ``tolerance`` 0 this is halfway between the best cut and the next lower score. With one
    class present, 0.5 is returned.
    """
    return _best_threshold(labels, scores, CRITERIA[criterion], min_sensitivity, tolerance)


def floor_threshold(labels: np.ndarray, scores: np.ndarray, rate: str, floor: float) -> float:
    """An operating point: the threshold keeping ``rate`` (``sensitivity`` or ``specificity``) at
    least ``floor`` on these scores with the other rate as high as that allows (the middle, in logit
    space, of the thresholds that give it). A specificity floor is a sensitivity floor of the
    flipped problem (NORMAL as the positive class, scores mirrored on the logit, so
    scores below 1e-16 keep their order). ``score >= threshold`` is
    inclusive, so the mirror can land on a NORMAL image's score (a saturated float32 sigmoid gives
    exactly 1.0); the threshold then moves just above the NORMAL images the floor needs below it,
    and stays at 1.0 when they score 1.0: no probability threshold keeps that floor."""
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    if rate == "sensitivity":
        return _best_threshold(labels, scores, lambda sens, spec: spec, floor, 0.0)
    if rate != "specificity":
        raise ValueError(f"rate {rate!r} is not sensitivity or specificity")
    threshold = _best_threshold(1 - labels, scores, lambda sens, spec: spec, floor, 0.0, mirrored=True)
    normal = np.sort(scores[labels == 0])
    needed = int(np.ceil(floor * len(normal) - 1e-9))  # NORMAL images that must score below the threshold
    if len(np.unique(labels)) == 2 and needed and threshold <= normal[needed - 1]:
        threshold = min(float(np.nextafter(normal[needed - 1], np.inf)), 1.0)
    return threshold


def _best_threshold(labels: np.ndarray, scores: np.ndarray, value: Any, min_sensitivity: float, tolerance: float, *, mirrored: bool = False) -> float:
    """:func:`choose_threshold` for any ``value(sensitivity, specificity)`` to maximize.

    ``mirrored``: the flipped problem (``labels`` already flipped, a lower score is the positive
    side), ranked by minus the logit rather than by ``1 - scores``, which rounds every score below
    about 1e-16 to 1.0 and ties them; the threshold is returned on the scores' own scale."""
    from sklearn.metrics import roc_curve

    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    if len(np.unique(labels)) < 2:
        return 0.5
    # What is ranked (keys) and how a key reads as a logit and a probability of the scores' own scale.
    keys = -_exact_logit(scores) if mirrored else scores
    none_below = -np.inf if mirrored else 0.0  # the key of probability 1 (mirrored) or 0: below every image
    as_logit = (lambda key: -float(np.clip(key, _logit(0.0), _logit(1.0)))) if mirrored else _logit  # the flipped probability's clip
    as_probability = (lambda key: scores[keys == key][0] if np.isfinite(key) else 1.0) if mirrored else float
    fpr, tpr, cuts = roc_curve(labels, keys, drop_intermediate=False)
    values = value(tpr, 1 - fpr)
    values = np.where((tpr >= min_sensitivity - 1e-12) & np.isfinite(cuts), values, -np.inf)
    best = float(values.max())
    near = np.flatnonzero(values >= best - tolerance - 1e-12)
    upper = cuts[near].max()  # the most specific near-best cut
    lowest = cuts[near].min()
    below = keys[keys < lowest]
    lower = below.max() if below.size else none_below  # thresholds in (lower, lowest] behave like the cut at ``lowest``
    middle = (as_logit(upper) + as_logit(lower)) / 2
    sens, spec = _rates(labels, keys, -middle if mirrored else _sigmoid(middle))
    if value(sens, spec) >= best - tolerance - 1e-12 and sens >= min_sensitivity - 1e-12:
        return _sigmoid(middle)
    top = cuts[int(np.argmax(values))]  # near-best cuts are not contiguous: fall back to the best one
    lower_top = keys[keys < top]
    return float((as_probability(top) + as_probability(lower_top.max() if lower_top.size else none_below)) / 2)


def objective_interval(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    criterion: str = "balanced_accuracy",
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``criterion`` at a fixed ``threshold``.

    Stratified: each resample draws the NORMAL and the PNEUMONIA images separately, keeping the
    class sizes (and so sensitivity and specificity always defined). Seeded, so a trial's interval
    is the same every time it is computed.
    """
    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    positive, negative = scores[labels == 1] >= threshold, scores[labels == 0] >= threshold
    if not len(positive) or not len(negative):
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    sens = positive[rng.integers(0, len(positive), (resamples, len(positive)))].mean(axis=1)
    spec = 1.0 - negative[rng.integers(0, len(negative), (resamples, len(negative)))].mean(axis=1)
    values = CRITERIA[criterion](sens, spec)
    tail = (1.0 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def prefix_of(deciding: str) -> str:
    """``ext`` for the external set, ``val`` for carved validation: the column prefix of a deciding set."""
    try:
        return PREFIXES[deciding]
    except KeyError:
        raise ValueError(f"deciding set {deciding!r} is not one of {', '.join(PREFIXES)}") from None


def diverged(frame: pd.DataFrame) -> pd.Series:
    """Which rows (a run's epochs, or trials at their best epoch) scored some image non-finite: the
    loop's ``diverged`` flag or any ``*_non_finite`` count above 0. Their scores count as 0.5, so
    their metrics measure a coin toss that a saturated finite epoch can lose to (by log loss, AUC)."""
    import pandas as pd

    flags = frame["diverged"].fillna(False).astype(bool) if "diverged" in frame else pd.Series(False, index=frame.index)
    for column in (c for c in frame.columns if str(c).endswith("_non_finite")):
        flags = flags | (pd.to_numeric(frame[column], errors="coerce").fillna(0) > 0)
    return flags


def best_epoch(history: pd.DataFrame, deciding: str) -> pd.Series:
    """The epoch a run is judged by: highest objective on the ``deciding`` set; ties go to higher
    AUC, then lower log loss (on the same set), then the earlier epoch. A diverged epoch
    (:func:`diverged`) is the best only when every epoch diverged."""
    prefix = prefix_of(deciding)
    bad = diverged(history)
    history = history[~bad] if not bad.all() else history
    ranked = history.sort_values([f"{prefix}_objective", f"{prefix}_auc", f"{prefix}_loss", "epoch"], ascending=[False, False, True, True])
    return ranked.iloc[0]


def checkpoint_score(history: list[dict], deciding: str) -> float:
    """What Ray Train keeps a run's checkpoints by (it keeps the highest score and the latest).

    The newest epoch's number when :func:`best_epoch` picks it over every earlier one, else 0, so
    the checkpoint kept is always the one :func:`best_epoch` names. (Scoring by the objective
    alone kept the later of two epochs with equal objectives, while the rule picks by AUC, and
    export then fell back to another epoch's weights.)
    """
    import pandas as pd

    newest = int(history[-1]["epoch"])
    return float(newest) if int(best_epoch(pd.DataFrame(history), deciding)["epoch"]) == newest else 0.0


def ranked_trials(table: pd.DataFrame, deciding: str) -> pd.DataFrame:
    """Trials that reported results, best first, with a boolean ``tied`` column (tied with the best).

    Ranks on the ``deciding`` set's metrics (``external`` or ``carved``) at each trial's best
    epoch. Trials that failed (status ERROR, even after epochs: the study records them FAIL) or never
    reported are not candidates. Trials that diverged at their best epoch (so at every epoch) come
    last, tied with none. Raises ``ValueError`` when there is no candidate, or when every candidate diverged.
    """
    import pandas as pd

    prefix = prefix_of(deciding)
    objective = f"{prefix}_objective"
    reported = table[(table["epochs"] > 0) & table[objective].notna()] if not table.empty and objective in table else table.iloc[0:0]
    failed = reported["status"].eq("ERROR") if "status" in reported else pd.Series(False, index=reported.index)
    candidates = reported[~failed]
    if candidates.empty:
        raise ValueError(f"{int(failed.sum())} trial(s) reported a validation result and then failed; nothing to select" if failed.any()
                         else "no trial has reported a validation result yet; nothing to select")
    bad = diverged(candidates)
    if bad.all():
        raise ValueError(f"all {len(candidates)} trial(s) that reported diverged (their scores were not finite); nothing to select: "
                         "lower the learning rate")
    lost, candidates = candidates[bad], candidates[~bad]
    low, high = (_column(candidates, f"{objective}_{end}").fillna(candidates[objective]) for end in ("low", "high"))
    keys = [objective, f"{prefix}_auc", f"{prefix}_loss"]
    best = candidates.sort_values(keys, ascending=[False, False, True]).index[0]
    top = high >= low[best] - 1e-12
    tied = candidates[top].sort_values([f"{prefix}_auc", f"{prefix}_loss", objective], ascending=[False, True, False])
    rest = candidates[~top].sort_values(keys, ascending=[False, False, True])
    lost = lost.sort_values(keys, ascending=[False, False, True])
    return pd.concat([tied.assign(tied=True), rest.assign(tied=False), lost.assign(tied=False)])


def select_best(table: pd.DataFrame, deciding: str) -> pd.Series:
    """The selected trial: the first of :func:`ranked_trials`."""
    return ranked_trials(table, deciding).iloc[0]


def ensemble_members(ranked: pd.DataFrame, k: int) -> pd.DataFrame:
    """The first ``k`` ranked trials at the selected trial's image size (one ONNX input size); never a diverged one."""
    ranked = ranked[~diverged(ranked)]
    if "image_size" in ranked and ranked["image_size"].notna().any():
        ranked = ranked[ranked["image_size"] == ranked.iloc[0]["image_size"]]
    return ranked.head(max(1, k))


def final_fit_kept(final_fit_auc: float | None, search_auc: float | None) -> bool:
    """Whether the final fit's average is exported rather than the search's own ensemble.

    The final fit trains the leading configurations longer than any trial ran, and longer is not
    always better on new patients: a search whose leaders fit the training population more with
    more epochs lost 0.019 AUC on the external set against its own 3-trial ensemble
    (``results/real/external-v5``). So the final fit must score no lower than that ensemble, by
    AUC on the deciding set (threshold-free, like the tie-break of :func:`ranked_trials`). The
    comparison leans towards the search's ensemble, whose epochs were picked on the same images;
    a final fit that still wins has earned it. Where either AUC is unknown (no stored scores), the
    final fit is kept, as before this rule.
    """
    if final_fit_auc is None or search_auc is None or math.isnan(final_fit_auc) or math.isnan(search_auc):
        return True
    return final_fit_auc >= search_auc - 1e-12


def selection_label(name: str, chose: bool = True) -> str:
    """A set's ``name`` as every table, plot and console line gives it: "(selection set)" after it where its images chose
    something (``chose``), since its numbers are then optimistic. One wording, so that a plot copied on its own says
    what the report's tables say.

    >>> selection_label("external validation"), selection_label("test", chose=False)
    ('external validation (selection set)', 'test')
    """
    return f"{name} (selection set)" if chose else name


#: Hex digits of a content hash (:func:`cxr_tune.data.sources.content_hash`) that ``model.json`` keeps for each image
#: that chose something of the model: 10 (40 bits) keep 315 images to 3.5 KB, and an image not among n recorded ones
#: matches one by chance with odds n / 2**40 (3e-10 for 315).
IMAGE_HASH_DIGITS = 10


def image_hashes(hashes: Iterable[str]) -> str:
    """What ``model.json`` records of the images that chose something of the model (a selection set's and an adaptation
    site's ``image_hashes``): their content hashes' first :data:`IMAGE_HASH_DIGITS` digits, sorted, each once, space-separated.
    By content, so that a copy of the folder elsewhere is still known for what it is, which its path (``source``) is not.

    >>> image_hashes(["b" * 32, "a" * 32, "b" * 32])
    'aaaaaaaaaa bbbbbbbbbb'
    """
    return " ".join(sorted({str(digest)[:IMAGE_HASH_DIGITS] for digest in hashes}))


class Chooser(NamedTuple):
    """Images that chose something of a model: where they were (``source``, a folder; None for carved validation), their
    short content hashes (None in a model exported or adapted before ``image_hashes`` was recorded), and what they are to
    the model: ``what`` as a folder, ``by_content`` as the images that chose it."""

    source: str | None
    images: frozenset[str] | None
    what: str
    by_content: str


def selection_sources(meta: dict[str, Any]) -> list[Chooser]:
    """The images that chose something of the model a ``model.json`` (``meta``) describes: a set marked ``selection_set``
    (the external one, or carved validation; the external set by default when it decided), and ``adaptation``'s site (AdaBN's
    statistics and the site threshold come from its images). Every number measured on them is a selection-set number;
    predict, compare (:func:`selection_note`) and the model card all ask this."""
    measured = meta.get("before_adaptation", meta)  # an adapted model's sets were measured before adaptation
    sources = []
    for key, name in (("external", "external validation set"), ("validation", "carved validation")):
        record = measured.get(key) if isinstance(measured.get(key), dict) else {}
        if record.get("selection_set", key == "external" and meta.get("deciding_set") == "external") and (record.get("source") or "image_hashes" in record):
            sources.append(Chooser(record.get("source"), _hash_set(record), f"this model's {name} (model.json {key}.source), which chose the model",
                                   f"chose this model (selection set: its {name}, by content: model.json {key}.image_hashes)"))
    adaptation = meta.get("adaptation") or {}
    if adaptation.get("source") or "image_hashes" in adaptation:
        sources.append(Chooser(adaptation.get("source"), _hash_set(adaptation), "the site this model was adapted to (model.json adaptation.source)",
                               "adapted this model (the site it was adapted to, by content: model.json adaptation.image_hashes)"))
    return sources


def selection_note(meta: dict[str, Any], inputs: Sequence[str], hashes: Iterable[str] = (), paths: Sequence[str] = ()) -> str | None:
    """What the scored images (``inputs``, and their content ``hashes``) are to this model when some chose something of
    it (:func:`selection_sources`): what the model measures on them is optimistic. By content where ``model.json`` records
    the images (a copy elsewhere is the same images); by folder for a model from before that record: an input that is or
    holds the folder, or else each scored file (``paths``, beside ``hashes``) whose real path lies in it, counted (a folder
    of links into the set, or its files named one by one). Every role the images played is named, in one note (an adapted
    model's external set also chose it: naming the first alone hid the other). None for any other input."""
    from cxr_tune import storage  # pyarrow: not for the training step, which imports this module for CRITERIA

    scored = [str(digest)[:IMAGE_HASH_DIGITS] for digest in hashes]
    roles: list[str] = []
    chosen: set[int] = set()  # the scored images some chooser recorded by content
    every = False  # every scored image lies in a chooser's folder: all are selection-set images
    for chooser in selection_sources(meta):
        if chooser.images is not None:
            if found := {i for i, digest in enumerate(scored) if digest in chooser.images}:
                roles.append(f"{len(found)} of {len(scored)} scored images {chooser.by_content}")
                chosen |= found
            continue
        source = storage.resolve(chooser.source)
        for item in inputs:
            if storage.same_folder(storage.resolve(item), source):
                roles.append(f"{printable(item)} is {chooser.what}")
                # the set alone gave every scored file; beside other inputs, each file is followed to count them
                every = every or not paths or len(inputs) == 1 or len(storage.lying_in(paths, source)) == len(paths)
                break
            if storage.within(source, storage.resolve(item)):  # the data's root, say, with test/ beside val/
                roles.append(f"{printable(item)} holds {chooser.what}")
                break
        else:
            if inside := sorted(storage.lying_in(paths, source), key=str):
                roles.append(f"{len(inside)} of {len(paths)} scored images lie in {chooser.what} (the first: {printable(str(inside[0]))})")
                every = every or len(inside) == len(paths)
            elif not paths and (item := next((item for item in inputs if storage.within(storage.resolve(item), source)), None)):
                roles.append(f"{printable(item)} lies in {chooser.what}")  # a caller without the files: the input alone
                every = True
    if not roles:
        return None
    numbers = "these are selection-set numbers" if every or (chosen and len(chosen) == len(scored)) else "these numbers include selection-set images"
    return f"{'; '.join(roles)}: {numbers} for this model, optimistic, not an independent test"


def selection_images(meta: dict[str, Any], hashes: Sequence[str], paths: Sequence[str]) -> list[bool]:
    """For each scored image (its content hash in ``hashes``, its file in ``paths``), whether it chose something of this
    model: :func:`selection_note`'s rule for one file (by content where ``model.json`` records the images, else by the
    file's real path in the chooser's folder), decided for all at once: the recorded hashes read once, not per image."""
    from cxr_tune import storage  # pyarrow: not for the training step, which imports this module for CRITERIA

    scored = [str(digest)[:IMAGE_HASH_DIGITS] for digest in hashes]
    chosen = [False] * len(scored)
    for chooser in selection_sources(meta):
        if chooser.images is not None:
            hits = [digest in chooser.images for digest in scored]
        else:
            inside = set(storage.lying_in(paths, storage.resolve(chooser.source)))
            hits = [path in inside for path in paths]
        chosen = [was or hit for was, hit in zip(chosen, hits, strict=True)]
    return chosen


def _hash_set(record: dict[str, Any]) -> frozenset[str] | None:
    """A record's ``image_hashes`` (:func:`image_hashes`) as a set; None where it has none."""
    return frozenset(str(record["image_hashes"]).split()) if "image_hashes" in record else None


def _column(table: pd.DataFrame, name: str) -> pd.Series:
    """A column, or NaN where the table lacks it (experiments from before intervals existed)."""
    import pandas as pd

    return table[name] if name in table else pd.Series(math.nan, index=table.index)


def _logit(p: float) -> float:
    p = float(np.clip(p, 1e-7, 1 - 1e-7))
    return float(np.log(p / (1 - p)))


def _exact_logit(p: np.ndarray) -> np.ndarray:
    """Logits that keep every score's order (0 and 1 clipped just inside, so they stay finite)."""
    p = np.clip(p, np.finfo(float).tiny, np.nextafter(1.0, 0.0))
    return np.log(p) - np.log1p(-p)


def _sigmoid(x: float) -> float:
    return float(1 / (1 + np.exp(-x)))


def _rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    predicted = scores >= threshold
    return float(predicted[labels == 1].mean()), float(1 - predicted[labels == 0].mean())
