"""``python -m cxr_tune.export EXPERIMENT [--trial ID] [--ensemble K] [--val-data PATH] [--tta N]``.

Exports the selected trial of a search (or any trial, or the K best as one averaging model) as a
pickle-free model folder (:mod:`cxr_tune.modelfile`): ``model.onnx``, ``weights.safetensors`` and
``model.json`` with the hyperparameters, preprocessing, the decision threshold and the metrics
behind it: on carved validation, on the external set (when there is one: **selection-set
numbers**, since those images chose the model and the threshold) and, when the data has a test
split, on it at the stored threshold with 95 % bootstrap intervals. Works on finished and
interrupted experiments alike.

Which trials, which threshold: :mod:`cxr_tune.selection`, on the experiment's deciding set. With
``--val-data PATH`` a labelled folder from the target site decides instead: every candidate
trial's best checkpoint is scored on it, and the ranking, ensemble members and threshold follow
those scores.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxr_tune import __version__, storage
from cxr_tune.cliargs import int_between, positive_int
from cxr_tune.data.cache import load_images
from cxr_tune.data.imaging import PREPROCESS_VERSION, RESIZE_METHOD
from cxr_tune.errors import UserError, run_cli
from cxr_tune.modelfile import TTA_VIEWS, Members, build_files, check_scores, members_from_states, serving_model, torch_scores, write_model_folder
from cxr_tune.selection import choose_threshold, ensemble_members, ranked_trials
from cxr_tune.train.checkpoints import has_predictions, load_predictions, load_state
from cxr_tune.train.metrics import evaluate_scores, rates_at

CI_METRICS = ("sensitivity", "specificity", "balanced_accuracy", "auc", "accuracy")
SELECTION_NOTE = ("selection-set numbers: these images chose the epoch, the trials and the threshold, so they are optimistic; "
                  "the honest score is on images no choice saw")


@dataclass(frozen=True)
class Scored:
    """One set of images and the model's scores on them."""

    rows: pd.DataFrame  # content_hash, path, label
    images: np.ndarray
    scores: np.ndarray | None = None

    @property
    def labels(self) -> np.ndarray:
        return self.rows["label"].to_numpy().astype(int)


def export_trial(
    experiment_dir: str,
    trial_id: str | None = None,
    out: str | None = None,
    ensemble: int | None = None,
    *,
    val_data: str | None = None,
    tta: int = 1,
) -> dict[str, Any]:
    """Export the selected trial(s) of an experiment (or ``trial_id``); returns ``model.json``'s content."""
    from cxr_tune.search.finish import load_trials
    from cxr_tune.search.results import checkpoint_for
    from cxr_tune.search.runner import experiment_info, experiment_space, load_options

    options = load_options(experiment_dir)
    info = experiment_info(experiment_dir)
    cache_dir = options.data.resolved_cache_dir
    splits = storage.read_csv(storage.join(experiment_dir, "splits.csv"))
    table = load_trials(experiment_dir)
    site = _external_folder(val_data, splits, cache_dir) if val_data else None
    if trial_id is not None:
        rows = table[table["trial_id"] == trial_id]
        if rows.empty:
            raise UserError(f"no trial {trial_id!r} in {experiment_dir}; trials: {', '.join(table['trial_id'])}")
    else:
        if site is not None:
            table = _rescored(table, experiment_dir, site)
        try:
            ranked = ranked_trials(table)
        except ValueError as exc:
            raise UserError(f"{experiment_dir}: {exc}") from None
        k = ensemble or experiment_space(experiment_dir).settings.ensemble
        rows = ensemble_members(ranked, k)
    checkpoints = [checkpoint_for(row, experiment_dir) for _, row in rows.iterrows()]
    states = [load_state(path) for path in checkpoints]
    members = members_from_states(states)
    if len({hp.image_size for hp in members.hparams}) != 1:
        raise UserError("ensemble members must share one image size")
    size = members.image_size
    sets = {"val": _role_images(splits, "val", size, cache_dir)}
    if site is not None:
        sets["ext"] = Scored(site, _decode(site, size))
    elif (splits["role"] == "external").any():
        sets["ext"] = _role_images(splits, "external", size, cache_dir)
    if info.get("has_test"):
        sets["test"] = _role_images(splits, "test", size, cache_dir)
    # The deciding set: the one the search selected on, unless a site folder was given here.
    deciding = "ext" if site is not None or ("ext" in sets and all(s.get("deciding_set") == "ext" for s in states)) else "val"
    # The scores the search itself saw (stored with each checkpoint) choose the threshold, so a
    # single trial keeps the threshold it reported; new images or new views are scored afresh.
    stored = {prefix: _stored_scores(checkpoints, prefix, sets[prefix]) for prefix in ("val", "ext") if prefix in sets and site is None and tta == 1}
    target = out or storage.join(experiment_dir, "best" if trial_id is None else f"exports/{trial_id}")
    source = val_data or (info.get("external") or None)
    return write_export(members, target, [_trial_of(path) for path in checkpoints], states, sets, deciding, stored, info, source, tta)


def write_export(members: Members, target: str, trial_ids: list[str], states: list[dict[str, Any]], sets: dict[str, Scored], deciding: str,
                 stored: dict[str, np.ndarray | None], info: dict[str, Any], external_source: str | None, tta: int = 1) -> dict[str, Any]:
    """Choose the threshold on the deciding set, measure every set with the ONNX file, write the folder.

    ``sets``: ``val`` (carved), optionally ``ext`` (external) and ``test``. ``stored``: per set, the
    members' mean scores stored with their checkpoints (None where there are none); the ONNX
    scores must match them.
    """
    hp = members.hparams[0]  # the selected trial: its threshold rule applies to an ensemble too
    files = build_files(members, tta, check_images=sets["val"].images)
    scores = {prefix: files.scores(scored.images) for prefix, scored in sets.items()}
    for prefix, expected in stored.items():
        if expected is not None:
            check_scores(scores[prefix], expected, f"the {prefix} scores stored with the checkpoints")
    decide = stored.get(deciding)
    decide = scores[deciding] if decide is None else decide
    threshold = choose_threshold(sets[deciding].labels, decide, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance)
    meta: dict[str, Any] = {
        "format": "onnx",
        "model_file": "model.onnx",
        "weights_file": "weights.safetensors",
        "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 1, hp.image_size, hp.image_size]},
        "output": {"name": "probability", "meaning": "probability of PNEUMONIA" + (f" (mean of {len(members.nets)} models)" if len(members.nets) > 1 else "")
                   + (f" (mean over {tta} test-time views)" if tta > 1 else "")},
        "preprocessing": {
            "image_size": hp.image_size,
            "grayscale": "8-bit (16-bit images min-max scaled; RGB/CMYK/palette converted; alpha over black)",
            "resize": RESIZE_METHOD,
            "intensity_normalization": ", ".join(sorted({h.intensity for h in members.hparams})) + " (inside the ONNX graph)",
            "preprocess_version": PREPROCESS_VERSION,
            "function": "cxr_tune.data.imaging.decode_gray",
        },
        "tta_views": tta,  # what adapt builds again
        "threshold": threshold,
        "deciding_set": "external" if deciding == "ext" else "carved",
        "threshold_rule": f"middle (logit scale) of the thresholds within {hp.threshold_tolerance:g} of the best {hp.criterion} on "
        + ("the external validation set" if deciding == "ext" else "validation carved from train")
        + (f", sensitivity >= {hp.min_sensitivity:g}" if hp.min_sensitivity else ""),
        "hparams": hp.to_dict(),
        "trial_id": trial_ids[0],
        "epoch": int(states[0]["epoch"]) + 1,
        "members": [{"trial_id": trial, "epoch": int(state["epoch"]) + 1, "hparams": h.to_dict()}
                    for trial, state, h in zip(trial_ids, states, members.hparams, strict=True)],
        "validation": {**set_metrics(sets["val"].labels, scores["val"], threshold, hp), "what": "validation carved from the training folder by patient"},
        "data": {"description": info["data_description"], "synthetic": info["synthetic"], "root": info["data_root"]},
        "train_class_counts": info.get("class_counts_train"),  # NORMAL, PNEUMONIA: the prior the probabilities were trained under
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cxr_tune_version": __version__,
    }
    if "ext" in sets:
        meta["external"] = {**set_metrics(sets["ext"].labels, scores["ext"], threshold, hp), "selection_set": deciding == "ext",
                            "source": external_source, "note": SELECTION_NOTE if deciding == "ext" else "scored for comparison only; it chose nothing"}
    if "test" in sets and len(sets["test"].rows):
        meta["test"] = held_out_metrics(sets["test"].labels, scores["test"], threshold)
    names = {"val": "val", "ext": "external", "test": "test"}
    extra = {f"{names[prefix]}_predictions.csv": _predictions(sets[prefix], scores[prefix], threshold).to_csv(index=False).encode() for prefix in sets}
    write_model_folder(target, files, meta, extra)
    return meta


def set_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float, hp: Any) -> dict[str, Any]:
    """Metrics of one set at the stored threshold (as predict will use it); NaN where undefined."""
    return {**evaluate_scores(labels, scores, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance), **rates_at(labels, scores, threshold),
            "threshold": threshold, "n": int(len(labels))}


def held_out_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Scored once, at the stored threshold; never used to choose anything."""
    metrics = {**evaluate_scores(labels, scores), **rates_at(labels, scores, threshold)}
    for key in ("threshold", "objective", "objective_low", "objective_high"):
        metrics.pop(key, None)  # the test split does not choose a threshold; the stored one is used
    metrics["threshold_used"] = threshold
    metrics["n"] = int(len(labels))
    metrics["ci95"] = bootstrap_intervals(labels, scores, threshold)
    return metrics


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float, *, resamples: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile bootstrap intervals of the metrics at a fixed threshold (images resampled with
    replacement, all resamples at once); a metric undefined on a resample (a class missing from it)
    leaves that resample out, and one undefined on most of them (AUC of a one-class split) gets no interval."""
    from scipy.stats import rankdata

    labels, scores = np.asarray(labels).astype(int), np.asarray(scores, dtype=float)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(labels), (resamples, len(labels)))
    y, p = labels[pick].astype(bool), scores[pick]
    called = p >= threshold
    positives, negatives = y.sum(axis=1), (~y).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sensitivity = (called & y).sum(axis=1) / positives
        specificity = (~called & ~y).sum(axis=1) / negatives
        ranks = rankdata(p, axis=1)  # Mann-Whitney: AUC from the positives' rank sum (ties averaged)
        auc = ((ranks * y).sum(axis=1) - positives * (positives + 1) / 2) / (positives * negatives)
    samples = {"sensitivity": sensitivity, "specificity": specificity, "balanced_accuracy": (sensitivity + specificity) / 2,
               "auc": auc, "accuracy": (called == y).mean(axis=1)}
    out = {}
    for name in CI_METRICS:
        values = samples[name][np.isfinite(samples[name])]
        if len(values) >= resamples // 2:
            out[name] = [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]
    return out


def summary(meta: dict[str, Any], target: str) -> str:
    """What an export holds, for the console."""
    tag = " [SYNTHETIC DATA]" if meta["data"]["synthetic"] else ""
    lines = [
        f"Exported trial {meta['trial_id']} (epoch {meta['epoch']})"
        + (f" with {len(meta['members']) - 1} more trial(s) as an averaging ensemble" if len(meta["members"]) > 1 else "")
        + f"{tag} to {target}",
        f"  threshold {meta['threshold']:.4f} ({meta['threshold_rule']})",
        "  carved validation: " + _line(meta["validation"]),
    ]
    if "external" in meta:
        label = "external validation (SELECTION SET, optimistic)" if meta["external"]["selection_set"] else "external validation (not used to select)"
        lines.append(f"  {label}: " + _line(meta["external"]))
    if "test" in meta:
        test, ci = meta["test"], meta["test"]["ci95"]
        lines.append("  test (held out, stored threshold): " + ", ".join(
            f"{k.replace('_', ' ')} {fmt(test.get(k))}" + (f" [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" if k in ci else "")
            for k in ("auc", "sensitivity", "specificity", "balanced_accuracy")))
    return "\n".join(lines)


def fmt(value: Any, digits: int = 4) -> str:
    """A metric for people: ``n/a`` where it is undefined (AUC of one class, an empty set)."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _line(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{name} {fmt(metrics.get(key))}" for name, key in (
        ("AUC", "auc"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("balanced accuracy", "balanced_accuracy")))


# --- internals ----------------------------------------------------------------------------------


def _trial_of(checkpoint: str) -> str:
    """Trial checkpoints live under ``EXPERIMENT/train/<trial id>/checkpoint_*``."""
    return storage.name(storage.parent(checkpoint))


def _role_images(splits: pd.DataFrame, role: str, size: int, cache_dir: str) -> Scored:
    rows = splits[splits["role"] == role]
    images, kept = load_images(rows, size, cache_dir, splits)
    return Scored(kept, images)


def _decode(rows: pd.DataFrame, size: int) -> np.ndarray:
    from cxr_tune.data.imaging import decode_gray

    if rows.empty:
        return np.zeros((0, size, size), np.uint8)
    return np.stack([decode_gray(storage.read_bytes(path), size) for path in rows["path"]])


def _external_folder(val_data: str, splits: pd.DataFrame, cache_dir: str) -> pd.DataFrame:
    """The rows of a labelled site folder for export-time selection; refused if it shares a file with the experiment's data."""
    from cxr_tune.data.prepared import check_external_size
    from cxr_tune.data.sources import load_external
    from cxr_tune.data.splits import refuse_shared_files

    source = load_external(storage.resolve(val_data), cache_dir)
    check_external_size(source.manifest, f"--val-data '{val_data}'")
    refuse_shared_files(source.manifest, splits[splits["split"] == "train"], "training-folder")
    refuse_shared_files(source.manifest, splits[splits["role"] == "test"], "test")
    return source.manifest.drop_duplicates("content_hash")[["content_hash", "path", "label"]].reset_index(drop=True)


def _rescored(table: pd.DataFrame, experiment_dir: str, site: pd.DataFrame) -> pd.DataFrame:
    """The trial table with ``ext_*`` metrics and the objective measured on a new site folder, at
    each trial's best checkpoint (best by the experiment's own rule)."""
    from cxr_tune.search.results import checkpoint_for

    out = table.copy()
    cache: dict[int, np.ndarray] = {}
    for index, row in table[table["epochs"] > 0].iterrows():
        state = load_state(checkpoint_for(row, experiment_dir))
        members = members_from_states([state])
        if members.image_size not in cache:
            cache[members.image_size] = _decode(site, members.image_size)
        images = cache[members.image_size]
        hp = members.hparams[0]
        metrics = evaluate_scores(site["label"].to_numpy(), torch_scores(serving_model(members), images), hp.criterion, hp.min_sensitivity, hp.threshold_tolerance)
        for key, value in metrics.items():
            out.loc[index, f"ext_{key}"] = value
        for key in ("objective", "objective_low", "objective_high"):
            out.loc[index, key] = metrics[key]
    return out


def _stored_scores(checkpoints: list[str], prefix: str, scored: Scored) -> np.ndarray | None:
    """The members' mean stored scores on one set, in ``scored``'s order (None if any image lacks one)."""
    if not all(has_predictions(path, prefix) for path in checkpoints):
        return None
    frames = [load_predictions(path, prefix).set_index("content_hash")["score"] for path in checkpoints]
    mean = pd.concat(frames, axis=1).mean(axis=1)
    hashes = scored.rows["content_hash"]
    return mean.loc[hashes].to_numpy() if set(hashes) <= set(mean.index) else None


def _predictions(scored: Scored, scores: np.ndarray, threshold: float) -> pd.DataFrame:
    return pd.DataFrame({"path": scored.rows["path"].to_numpy(), "label": scored.labels, "probability": scores,
                         "prediction": (scores >= threshold).astype(int)})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment folder or URI (STORAGE/NAME) of a finished or interrupted search")
    parser.add_argument("--trial", default=None, help="trial id to export (default: the selected best trial, into EXPERIMENT/best)")
    parser.add_argument("--ensemble", type=positive_int, default=None, metavar="K", help="export the K best trials as one averaging model (default: the space's search.ensemble, usually 1)")
    parser.add_argument("--val-data", default=None, metavar="PATH",
                        help="a labelled folder (NORMAL/, PNEUMONIA/) from the target site: rank the trials, pick the ensemble and choose "
                             "the threshold on it instead of the experiment's own deciding set (default: the experiment's)")
    parser.add_argument("--tta", type=int_between(1, len(TTA_VIEWS)), default=1, metavar="N",
                        help=f"average the model over N fixed test-time views (1 to {len(TTA_VIEWS)}: identity, zoom, shifts, small rotations) inside the ONNX graph (default: 1, none)")
    parser.add_argument("--out", default=None, help="output folder (default: EXPERIMENT/best, or EXPERIMENT/exports/<trial> with --trial)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    experiment = storage.resolve(args.experiment)
    if args.ensemble is not None and args.trial:
        raise UserError("--ensemble K needs no --trial")
    target = storage.resolve(args.out) if args.out else storage.join(experiment, "best" if args.trial is None else f"exports/{args.trial}")
    meta = export_trial(experiment, args.trial, target, args.ensemble, val_data=args.val_data, tta=args.tta)
    print(summary(meta, target))
    return 0


if __name__ == "__main__":
    run_cli(main)
