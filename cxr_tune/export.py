"""``python -m cxr_tune.export EXPERIMENT [--trial ID] [--ensemble K] [--val-data PATH] [--tta N] [--calibrate METHOD] [--final-fit]``.

Exports the selected trial of a search (or any trial, or the K best as one averaging model) as a
pickle-free model folder (:mod:`cxr_tune.modelfile`): ``model.onnx``, ``weights.safetensors`` and
``model.json`` with the hyperparameters, preprocessing, the decision threshold and the metrics
behind it: on carved validation, on the external set (when there is one: **selection-set
numbers**, since those images chose the model and the threshold) and, when the data has a test
split, on it at the stored threshold with 95 % intervals (:data:`cxr_tune.set_metrics.INTERVAL_METHODS`). Works on finished and
interrupted experiments alike.

Which trials, which threshold: :mod:`cxr_tune.selection`, on the experiment's deciding set. With
``--val-data PATH`` a labelled folder from the target site decides instead: every candidate
trial's best checkpoint is scored on it, and the ranking, ensemble members and threshold follow
those scores. After a final fit (:mod:`cxr_tune.search.finalfit`) its runs' average is exported
when it scores no lower on the deciding set than the search's own ensemble, else that ensemble is
(``model.json``'s ``final_fit`` says which, with both AUCs); ``--final-fit`` exports the runs anyway.

For a clinician to check, every labelled set also gets its calibration (ECE and Brier
score with intervals, :mod:`cxr_tune.calibration`; ``reliability.png``), its rates at a few named
operating points chosen on the deciding set (:mod:`cxr_tune.operating_points`) and, where the file
names carry them, per subgroup (:mod:`cxr_tune.subgroups`); ``MODEL_CARD.md``
(:mod:`cxr_tune.modelcard`) says all of it from ``model.json``. ``--calibrate platt|temperature``
builds a calibration map fitted on the deciding set into the graph.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cxr_tune import __version__, folder_lock, storage
from cxr_tune.cliargs import help_text, int_between, positive_int, with_exit_statuses
from cxr_tune.calibration import METHODS as CALIBRATION_METHODS
from cxr_tune.calibration import RELIABILITY_SETS, Calibration, plot_reliability, reliability_curves
from cxr_tune.calibration import fit as fit_calibration
from cxr_tune.data.cache import load_images
from cxr_tune.data.imaging import DECODE_STEPS, PREPROCESS_VERSION, RESIZE_METHOD
from cxr_tune.data.prepared import roles_fingerprint
from cxr_tune.data.sources import patient_keys
from cxr_tune.errors import UserError, run_cli
from cxr_tune.modelcard import CARD_FILE, LOGIT_MIDDLE, RELIABILITY_FILE, final_fit_line, model_card, one_score_warning
from cxr_tune.formatting import fmt, for_spreadsheet, json_safe, metric_line
from cxr_tune.operating_points import choose_points
from cxr_tune.provenance import provenance
from cxr_tune.selection import choose_threshold, diverged, ensemble_members, final_fit_kept, image_hashes, prefix_of, ranked_trials, selection_label
from cxr_tune.serving import MODEL_FILE
from cxr_tune.set_metrics import INTERVAL_METHODS, clinical_metrics, held_out_metrics, set_metrics
from cxr_tune.train.checkpoints import has_predictions, load_predictions, load_state, trained_in
from cxr_tune.train.metrics import evaluate_scores
from cxr_tune.views import TTA_VIEWS

# The modules that build a model (torch) and read an experiment are imported where they are used, so
# --help and a mistyped flag answer without loading torch (measured: in half the time).
if TYPE_CHECKING:
    from cxr_tune.experiment import Experiment
    from cxr_tune.modelfile import Members

TIE_RULE = ("Trials whose 95 % bootstrap interval of the objective overlaps the best trial's are tied with it; the tied trial with the "
            "highest AUC on the deciding set wins, then the lowest log loss.")
FINAL_FIT_RULE = ("the final-fit stage: the best configurations trained again with new seeds for a fixed schedule; each run's last "
                  "epoch (no epoch picked per run; the length is the space's final_fit_epochs, which the deciding set may have chosen), averaged; exported only when that average's AUC on the deciding set is "
                  "no lower than the search's own ensemble's (its first trials at their best epochs), else that ensemble is")
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
    calibrate: str = "none",
    final_fit: bool = False,
) -> dict[str, Any]:
    """Export the selected model of an experiment (or ``trial_id``); returns ``model.json``'s content.

    The selected model is the final-fit stage's runs when it completed (their last epochs,
    averaged: :mod:`cxr_tune.search.finalfit`) and scores no lower than the search's own ensemble
    on the deciding set (:func:`cxr_tune.selection.final_fit_kept`; ``final_fit``: the runs
    whatever they score), else the search's selected trial (or the ``K`` best: ``ensemble``).
    Every choice (trials, epochs, ensemble members, threshold) is made on the
    experiment's recorded deciding set, or on ``val_data`` when given; under a carved deciding set
    no external label takes part in any of them.
    """
    from cxr_tune.experiment import Experiment
    from cxr_tune.modelfile import members_from_states

    experiment = Experiment(experiment_dir)
    splits, cache_dir = experiment.splits, experiment.cache_dir
    site = _external_folder(val_data, splits, cache_dir) if val_data else None
    deciding = "external" if site is not None else experiment.deciding_set
    table = experiment.trials(ranked=False)
    so_far = {**trials_so_far(table), "trials_requested": experiment.options.trials or experiment.space().settings.trials}
    if note := unfinished_note(experiment.path, so_far["trials_requested"], so_far):
        print(note)
    selected = trial_id is None and ensemble is None and site is None  # the experiment's own choice of model
    if final_fit and not selected:
        raise UserError("--final-fit exports the final fit's runs: it takes no --trial, --ensemble or --val-data")
    final_done = selected and experiment.final_fit_complete()
    if final_fit and not final_done:
        raise UserError(f"{experiment.path} has no completed final fit to export")
    final_record: dict[str, Any] = {}
    if final_done:
        rows, final_record = _final_fit_or_search(experiment, table, deciding, force=final_fit)
    elif trial_id is not None:
        rows = table[table["trial_id"] == trial_id]
        if rows.empty:
            raise UserError(f"no trial {trial_id!r} in {experiment.path}; trials: {', '.join(table['trial_id'])}")
        if diverged(rows).any():
            raise UserError(f"trial {trial_id} in {experiment.path} diverged at every epoch (its scores were not finite): it has no model to export")
    else:
        if site is not None:
            table = _rescored(table, experiment, site)
        try:
            ranked = ranked_trials(table, deciding)
        except ValueError as exc:
            raise UserError(f"{experiment.path}: {exc}") from None
        k = ensemble or experiment.space().settings.ensemble
        rows = ensemble_members(ranked, k)
        if ensemble and len(rows) < ensemble:
            print(f"Note: --ensemble {ensemble} asked for {ensemble} trials; {experiment.path} has {len(rows)} that reported a result"
                  + (" at the selected trial's image size" if len(rows) < len(ranked) else "") + f", so the model averages {len(rows)}")
    checkpoints = [experiment.checkpoint_for(row) for _, row in rows.iterrows()]
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
    if experiment.has_test:
        sets["test"] = _role_images(splits, "test", size, cache_dir)
    # The scores the search itself saw (stored with each checkpoint) choose the threshold, so a
    # single trial keeps the threshold it reported; new images or new views are scored afresh.
    stored = {prefix: _stored_scores(checkpoints, prefix, sets[prefix]) for prefix in ("val", "ext") if prefix in sets and site is None and tta == 1}
    default = experiment.file("best" if trial_id is None else f"exports/{trial_id}")
    target = out or default
    source = storage.resolve(val_data) if val_data else (experiment.external or None)  # absolute, as the search records its own
    info = {**experiment.info, **so_far, "data_fingerprint": roles_fingerprint(splits), "excluded": _by_reason(splits, "excluded"), "unused": _by_reason(splits, "unused"), "patient_keys": patient_keys(splits["patient_id"]),
            **({"final_fit": final_record} if final_record else {})}
    meta = write_export(members, target, [_trial_of(path) for path in checkpoints], states, sets, prefix_of(deciding), stored,
                        info, source, tta, calibrate=calibrate, epochs_on=prefix_of(experiment.deciding_set) if site is not None else None,
                        export_options={"trial": trial_id, "ensemble": ensemble, "val_data": storage.resolve(val_data) if val_data else None,
                                        "tta": tta, "calibrate": calibrate,
                                        "final_fit": final_fit, "out": None if storage.same_folder(target, default) else target})
    if ensemble and len(rows) > 1:
        _note_ensemble(meta, rows, prefix_of(deciding))
    return meta


def _note_ensemble(meta: dict[str, Any], rows: pd.DataFrame, prefix: str) -> None:
    """Say on the console when an ensemble the user asked for holds runs that stopped early, or
    scores a lower AUC on the deciding set than its first trial alone (more is not always better)."""
    short = rows[rows["stop_reason"] != "completed"] if "stop_reason" in rows else rows.iloc[0:0]
    if len(short):
        print(f"Note: {len(short)} of the {len(rows)} members did not run their whole schedule: "
              + ", ".join(f"{row.trial_id} ({row.stop_reason}, {int(row.epochs)} epoch(s))" for row in short.itertuples()))
    alone, together = float(rows.iloc[0][f"{prefix}_auc"]), float(meta["external" if prefix == "ext" else "validation"]["auc"])
    if together < alone:
        print(f"Note: the {len(rows)}-model average scores AUC {together:.4f} on the deciding set, below {alone:.4f} for trial "
              f"{rows.iloc[0]['trial_id']} alone (selection-set numbers): a smaller --ensemble may serve better")


def _final_fit_or_search(experiment: Experiment, table: pd.DataFrame, deciding: str, *, force: bool) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows to export once a final fit completed, and the record of that choice for ``model.json``.

    The final fit's runs (their last epochs) when their average's AUC on the deciding set is no
    lower than the search's own ensemble's (:func:`cxr_tune.selection.final_fit_kept`), or when
    ``force``; else that ensemble. Both AUCs come from the scores stored with the checkpoints:
    what each model scored on the deciding set when it trained, without test-time views.
    """
    ends = experiment.final_fit_ends()
    done = [(run, path) for run, path, lost in ends if not lost]
    lost = [run.__dict__ for run, _, gone in ends if gone]
    if force and not done:
        raise UserError(f"every final-fit run in {experiment.path} diverged (its scores turned non-finite): there is no final fit to export")
    try:
        search_rows = ensemble_members(ranked_trials(table, deciding), experiment.space().settings.ensemble)
    except ValueError as exc:
        raise UserError(f"{experiment.path}: {exc}") from None
    prefix = prefix_of(deciding)
    final_auc = _stored_auc([path for _, path in done], prefix)
    search_auc = _stored_auc([experiment.checkpoint_for(row) for _, row in search_rows.iterrows()], prefix)
    exported = bool(done) and (force or final_fit_kept(final_auc, search_auc))
    record = {
        "runs": [run.__dict__ for run, _ in done],
        "diverged": lost,  # runs left out: their last epoch's scores were not finite
        "rule": FINAL_FIT_RULE,
        "exported": exported,
        "forced": force,
        "compared_on": "external" if prefix == "ext" else "carved",
        "auc": final_auc,
        "search_members": [str(trial) for trial in search_rows["trial_id"]],
        "search_auc": search_auc,
    }
    final_rows = pd.DataFrame([{"trial_id": run.name, "checkpoint_path": path} for run, path in done])
    return (final_rows if exported else search_rows), record


def _stored_auc(checkpoints: list[str], prefix: str) -> float | None:
    """AUC of the members' mean stored scores on one set (None where a member stored none, or one class is missing)."""
    from sklearn.metrics import roc_auc_score

    mean = _stored_mean(checkpoints, prefix)
    if mean is None or mean["label"].nunique() < 2:
        return None
    return float(roc_auc_score(mean["label"].to_numpy().astype(int), mean["score"].to_numpy()))


def _by_reason(splits: pd.DataFrame, role: str) -> dict[str, int]:
    """Distinct images of ``role`` (``excluded``: left out of every role; ``unused``: the val/ folder set aside), by reason:
    what the model card reports."""
    rows = splits[splits["role"] == role].drop_duplicates("content_hash")
    return {str(reason): int(count) for reason, count in rows["role_note"].value_counts().items()}


def write_export(members: Members, target: str, trial_ids: list[str], states: list[dict[str, Any]], sets: dict[str, Scored], deciding: str,
                 stored: dict[str, np.ndarray | None], info: dict[str, Any], external_source: str | None, tta: int = 1, *,
                 calibrate: str = "none", epochs_on: str | None = None, export_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Choose the threshold on the deciding set, measure every set with the ONNX file, write the folder.

    ``sets``: ``val`` (carved), optionally ``ext`` (external) and ``test``. ``stored``: per set, the
    members' mean scores stored with their checkpoints (None where there are none); the ONNX
    scores must match them. The operating points are chosen on the deciding set too
    (:mod:`cxr_tune.operating_points`). ``calibrate``: ``none``, or ``platt`` / ``temperature``
    to fit that map on the deciding set's scores and build it into the graph
    (:mod:`cxr_tune.calibration`); the thresholds are then re-expressed on the calibrated scale,
    so every decision stays the same. Writes ``MODEL_CARD.md`` and ``reliability.png`` beside
    ``model.json``. ``epochs_on``: the set (prefix) that chose each member's epoch when that was not
    the set deciding here (the search's own, under ``--val-data``: even its own external set is another sample). ``export_options``: the export flags, for
    the model card's command that builds this model again.
    """
    from cxr_tune.modelfile import PREDICTIONS_FILES, WEIGHTS_FILE, build_files, check_scores, mean_logits, write_model_folder

    hp = members.hparams[0]  # the selected trial: its threshold rule applies to an ensemble too
    files = build_files(members, tta, check_images=sets["val"].images)
    scores = {prefix: files.scores(scored.images) for prefix, scored in sets.items()}
    for prefix, expected in stored.items():
        if expected is not None:
            check_scores(scores[prefix], expected, f"the {prefix} scores stored with the checkpoints")
    decide = stored.get(deciding)
    decide = scores[deciding] if decide is None else decide
    threshold = choose_threshold(sets[deciding].labels, decide, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance)
    points = choose_points(sets[deciding].labels, decide, threshold)
    deciding_name = "external" if deciding == "ext" else "carved"
    uncalibrated = scores
    calibration = _fit_calibration(calibrate, sets[deciding].labels, decide, deciding,
                                   logits=mean_logits(members, sets[deciding].images, tta) if calibrate != "none" else None)
    calibration_record: dict[str, Any] = {"method": "none"}
    if calibration is not None:  # the same networks with the map in the graph, every threshold re-expressed on its scale
        before = {"balanced": threshold, **{name: point["threshold"] for name, point in points.items()}}
        calibration_record = {**calibration.to_dict(), "fitted_on": deciding_name, "threshold_uncalibrated": threshold,
                              "operating_points_uncalibrated": {name: point["threshold"] for name, point in points.items()}}
        files = build_files(members, tta, check_images=sets["val"].images, calibration=calibration)
        scores = {prefix: files.scores(scored.images) for prefix, scored in sets.items()}
        after = {name: _re_expressed(calibration, t, uncalibrated[deciding], scores[deciding]) for name, t in before.items()}
        threshold = after["balanced"]
        points = {name: {**point, "threshold": after[name]} for name, point in points.items()}
        for prefix in sets:
            for name, t in before.items():
                _check_same_decisions(uncalibrated[prefix], scores[prefix], t, after[name], f"{prefix} set, operating point {name}")
    meta: dict[str, Any] = {
        "format": "onnx",
        "model_file": MODEL_FILE,
        "weights_file": WEIGHTS_FILE,
        "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 1, hp.image_size, hp.image_size]},
        "output": {"name": "probability", "meaning": "probability of PNEUMONIA" + _how_computed(len(members.nets), tta, calibration, deciding)},
        "preprocessing": {
            "image_size": hp.image_size,
            "grayscale": "8-bit (16-bit images min-max scaled; RGB/CMYK/palette converted; alpha ignored)",
            "resize": RESIZE_METHOD,
            "intensity_normalization": ", ".join(sorted({h.intensity for h in members.hparams})) + " (inside the ONNX graph)",
            "preprocess_version": PREPROCESS_VERSION,
            "function": "cxr_tune.data.imaging.decode_gray",
            "steps": DECODE_STEPS.format(size=hp.image_size),  # what decode_gray does, call by call: for another tool
        },
        "tta_views": tta,  # what adapt builds again
        "threshold": threshold,
        "deciding_set": deciding_name,
        "threshold_rule": f"{LOGIT_MIDDLE} of the thresholds within {hp.threshold_tolerance:g} of the best {hp.criterion} on "
        + ("the external validation set" if deciding == "ext" else "validation carved from train")
        + (f", sensitivity >= {hp.min_sensitivity:g}" if hp.min_sensitivity else "")
        + (f"; re-expressed on the calibrated scale ({calibration_record['threshold_uncalibrated']:.4f} before)" if calibration is not None else ""),
        "operating_points": points,
        "calibration": calibration_record,
        "hparams": hp.to_dict(),
        "trial_id": trial_ids[0],
        "epoch": int(states[0]["epoch"]) + 1,
        "members": [{"trial_id": trial, "epoch": int(state["epoch"]) + 1, "hparams": h.to_dict(),
                     "trained_in": trained_in(state)}  # every precision its epochs trained in (a resumed run may mix them)
                    for trial, state, h in zip(trial_ids, states, members.hparams, strict=True)],
        "validation": {**set_metrics(sets["val"].labels, scores["val"], threshold, hp), "what": "validation carved from the training folder by patient",
                       "selection_set": "val" in (deciding, epochs_on),
                       **({"note": SELECTION_NOTE, "image_hashes": image_hashes(sets["val"].rows["content_hash"])} if "val" in (deciding, epochs_on) else {})},
        "data": {"description": info["data_description"], "synthetic": info["synthetic"], "root": info["data_root"],
                 **({"fingerprint": info["data_fingerprint"]} if "data_fingerprint" in info else {}),  # as a train run's run.json says "data"
                 "excluded_images": info.get("excluded", {}), **({"unused_images": info["unused"]} if "unused" in info else {}),
                 **({"patient_keys": info["patient_keys"]} if "patient_keys" in info else {})},
        **({"final_fit": info["final_fit"]} if info.get("final_fit") else {}),
        "train_class_counts": info.get("class_counts_train"),  # NORMAL, PNEUMONIA: the prior the probabilities were trained under
        "search": _search_record(info, hp),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"export_options": export_options} if export_options is not None else {}),
        **({"epochs_chosen_on": "external" if epochs_on == "ext" else "carved"} if epochs_on else {}),
        "cxr_tune_version": __version__,
        "provenance": provenance(),  # the exporting code's commit and library versions
    }
    if "ext" in sets:
        meta["external"] = {**set_metrics(sets["ext"].labels, scores["ext"], threshold, hp), "selection_set": deciding == "ext",
                            "source": external_source, "note": SELECTION_NOTE if deciding == "ext" else "scored for comparison only; it chose nothing",
                            # which images chose it, by content: predict and compare know a copy of them anywhere (selection_note)
                            **({"image_hashes": image_hashes(sets["ext"].rows["content_hash"])} if deciding == "ext" else {})}
    if "test" in sets and len(sets["test"].rows):
        meta["test"] = held_out_metrics(sets["test"].labels, scores["test"], threshold)
    names = {"val": "validation", "ext": "external", "test": "test"}
    for prefix in sets:
        if names[prefix] in meta:
            meta[names[prefix]].update(clinical_metrics(sets[prefix].rows["path"].astype(str).tolist(), sets[prefix].labels, scores[prefix],
                                                        threshold, points, uncalibrated[prefix] if calibration is not None else None))
            # the highest probability less the lowest: a model that gives every image one output (one_score_warning)
            meta[names[prefix]]["score_spread"] = float(np.ptp(scores[prefix])) if len(scores[prefix]) else None
    extra = {PREDICTIONS_FILES[prefix]: for_spreadsheet(_predictions(sets[prefix], scores[prefix], threshold)).to_csv(index=False).encode()
             for prefix in sets}
    extra[CARD_FILE] = model_card(json_safe(meta)).encode()
    extra[RELIABILITY_FILE] = _reliability_png(meta)
    return write_model_folder(target, files, meta, extra)


def summary(meta: dict[str, Any], target: str) -> str:
    """What an export holds, for the console."""
    tag = " [SYNTHETIC DATA]" if meta["data"]["synthetic"] else ""
    carved = "carved validation (SELECTION SET, optimistic)" if meta["validation"].get("selection_set") else "carved validation"
    lines = [
        f"Exported trial {meta['trial_id']} (epoch {meta['epoch']})"
        + (f" with {len(meta['members']) - 1} more trial(s) as an averaging ensemble" if len(meta["members"]) > 1 else "")
        + f"{tag} to {target}",
        f"  threshold {meta['threshold']:.4f} ({meta['threshold_rule']}); every set below at it, {INTERVAL_METHODS}",
        f"  {carved}: " + metric_line(meta["validation"], meta["validation"].get("ci95")),
    ]
    if flat := one_score_warning(meta):
        lines.insert(1, f"  Warning: {flat}")
    if "external" in meta:
        label = "external validation (SELECTION SET, optimistic)" if meta["external"]["selection_set"] else "external validation (not used to select)"
        lines.append(f"  {label}: " + metric_line(meta["external"], meta["external"].get("ci95")))
    if meta.get("final_fit"):
        lines.append("  " + final_fit_line(meta["final_fit"]))
    if "test" in meta:
        lines.append("  test (held out, stored threshold): " + metric_line(meta["test"], meta["test"]["ci95"]))
    measured = [(key, name) for key, name in RELIABILITY_SETS if isinstance(meta.get(key), dict) and "calibration" in meta[key]]
    if measured:
        method = meta.get("calibration", {}).get("method", "none")
        lines.append(f"  calibration ({'none' if method == 'none' else method + '-calibrated'}), ECE / Brier: "
                     + "; ".join(f"{selection_label(name, bool(meta[key].get('selection_set')))} {fmt(meta[key]['calibration']['ece'])} / "
                                 f"{fmt(meta[key]['calibration']['brier'])}" for key, name in measured))
    deciding = "external" if meta.get("deciding_set") == "external" else "validation"
    if isinstance(meta.get("operating_points"), dict) and "operating_points" in meta.get(deciding, {}):
        at = meta[deciding]["operating_points"]
        lines.append(f"  operating points (threshold: sensitivity / specificity on the {'external' if deciding == 'external' else 'carved validation'} "
                     "selection set; predict --operating-point NAME): "
                     + ", ".join(f"{name} {fmt(point['threshold'])}: {fmt(at.get(name, {}).get('sensitivity'), 3)} / {fmt(at.get(name, {}).get('specificity'), 3)}"
                                 for name, point in meta["operating_points"].items()))
    lines.append(f"  model card: {storage.join(target, CARD_FILE)}")
    return "\n".join(lines)


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
    return np.stack([decode_gray(path, size) for path in rows["path"]])


def _external_folder(val_data: str, splits: pd.DataFrame, cache_dir: str) -> pd.DataFrame:
    """The rows of a labelled site folder for export-time selection; refused if it shares a file,
    or a patient (the patient-group rule of the splits), with the images the model trained on or
    is tested on."""
    from cxr_tune.data.prepared import check_external_size
    from cxr_tune.data.sources import load_external
    from cxr_tune.data.splits import refuse_shared_files, refuse_shared_patients

    source = load_external(storage.resolve(val_data), cache_dir)
    check_external_size(source.manifest, f"--val-data '{val_data}'", "leave --val-data out (the experiment's own deciding set chooses)")
    refuse_shared_files(source.manifest, splits[splits["split"] == "train"], "training-folder")
    refuse_shared_files(source.manifest, splits[splits["role"] == "test"], "test")
    refuse_shared_patients(source.manifest, splits[splits["role"] == "train"], "training")
    refuse_shared_patients(source.manifest, splits[splits["role"] == "test"], "test")
    return source.manifest.drop_duplicates("content_hash")[["content_hash", "path", "label"]].reset_index(drop=True)


def _rescored(table: pd.DataFrame, experiment: Experiment, site: pd.DataFrame) -> pd.DataFrame:
    """The trial table with ``ext_*`` metrics and the objective measured on a new site folder, at
    each trial's best checkpoint (best by the experiment's own rule)."""
    from cxr_tune.modelfile import members_from_states, serving_model, torch_scores

    out = table.copy()
    cache: dict[int, np.ndarray] = {}
    for index, row in table[table["epochs"] > 0].iterrows():
        state = load_state(experiment.checkpoint_for(row))
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
    mean = _stored_mean(checkpoints, prefix)
    hashes = scored.rows["content_hash"]
    return mean.loc[hashes, "score"].to_numpy() if mean is not None and set(hashes) <= set(mean.index) else None


def _stored_mean(checkpoints: list[str], prefix: str) -> pd.DataFrame | None:
    """The members' mean stored ``score`` on one set, with the stored ``label``, by content hash: the
    images every member scored (None where a member stored no scores for the set)."""
    if not checkpoints or not all(has_predictions(path, prefix) for path in checkpoints):
        return None
    frames = [load_predictions(path, prefix).drop_duplicates("content_hash").set_index("content_hash") for path in checkpoints]
    mean = pd.concat([frame["score"] for frame in frames], axis=1, join="inner").mean(axis=1)
    return frames[0].loc[mean.index].assign(score=mean)


def _predictions(scored: Scored, scores: np.ndarray, threshold: float) -> pd.DataFrame:
    return pd.DataFrame({"path": scored.rows["path"].to_numpy(), "label": scored.labels, "probability": scores,
                         "prediction": (scores >= threshold).astype(int)})


def _fit_calibration(method: str, labels: np.ndarray, scores: np.ndarray, deciding: str, *, logits: np.ndarray | None = None) -> Calibration | None:
    if method == "none":
        return None
    try:
        return fit_calibration(method, labels, scores, logits=logits)
    except ValueError as exc:
        raise UserError(f"cannot calibrate on the {'external' if deciding == 'ext' else 'carved validation'} set: {exc}") from None


def _re_expressed(calibration: Calibration, threshold: float, before: np.ndarray, after: np.ndarray) -> float:
    """``threshold`` on the calibrated scale: the map applied to it, unless that moves a decision on
    the deciding set (``before``/``after``: its scores without and with the map). It can: float32
    probabilities tie at 0 or 1 where the logits the map reads still differ, so a threshold of 0 or 1
    has no single image on the calibrated scale. Then the threshold is set between the calibrated scores
    of the images it called NORMAL and those it called PNEUMONIA, which the increasing map keeps apart."""
    mapped = float(calibration.apply(threshold))
    called = before >= threshold
    if np.array_equal(called, after >= mapped):
        return mapped
    normal, pneumonia = after[~called], after[called]
    if not pneumonia.size:
        return float(min(1.0, np.nextafter(normal.max(), np.inf)))
    if not normal.size:
        return 0.0
    return float((normal.max() + pneumonia.min()) / 2)


def _check_same_decisions(before: np.ndarray, after: np.ndarray, threshold: float, calibrated_threshold: float, where: str) -> None:
    """A calibration map is increasing: every image must fall on the same side of the re-expressed
    threshold (an image within float32 rounding of it may go either way)."""
    clear = np.abs(before - threshold) > 1e-5
    if not np.array_equal((before >= threshold)[clear], (after >= calibrated_threshold)[clear]):
        raise RuntimeError(f"the calibrated model decides differently from the uncalibrated one on the {where}")


def _how_computed(models: int, tta: int, calibration: Calibration | None, deciding: str) -> str:
    """What the output probability is, after "probability of PNEUMONIA": "" for one plain model."""
    parts = ([f"the mean of {models} models"] if models > 1 else []) + ([f"averaged over {tta} test-time views"] if tta > 1 else []) \
        + ([f"{calibration.method}-calibrated on {'external' if deciding == 'ext' else 'carved'} validation"] if calibration is not None else [])
    return f" ({'; '.join(parts)})" if parts else ""


def trials_so_far(table: pd.DataFrame) -> dict[str, int]:
    """How many of the experiment's trials had trained an epoch without failing, how many Tune had not seen end (a resume
    continues them), and how many failed, when the model was chosen: a search a budget ended, Ctrl-C stopped or errors cut
    short chose from fewer than asked. A trial that failed after epochs counts as failed, not trained: it is no candidate
    (:func:`cxr_tune.selection.ranked_trials`)."""
    from cxr_tune.search.results import FAILED, UNFINISHED

    failed = table["stop_reason"] == FAILED
    return {"trials_trained": int(((table["epochs"] > 0) & ~failed).sum()), "trials_unfinished": int((table["stop_reason"] == UNFINISHED).sum()),
            "trials_failed": int(failed.sum())}


def unfinished_note(path: str, requested: int, so_far: dict[str, int]) -> str | None:
    """The console's note when the model is chosen from fewer trials than the search asked for (None when all trained)."""
    trained, unfinished, failed = so_far["trials_trained"], so_far["trials_unfinished"], so_far.get("trials_failed", 0)
    if not unfinished and trained >= requested:
        return None
    what = (f"is unfinished: {trained} of its {requested} requested trials trained, {unfinished} had not ended (--resume continues them)" if unfinished
            else f"had {failed} of its {requested} requested trials fail (a failed trial is not a candidate, even after training epochs; "
                 f"report.md's Failed trials section has each error): {trained} trained and did not fail" if failed
            else f"ended before every trial trained: {trained} of its {requested} requested trials trained")
    return f"Note: {path} {what}; this model is the best of those {trained}, and the model card says so"


def _search_record(info: dict[str, Any], hp: Any) -> dict[str, Any]:
    """What the experiment recorded about the search that chose this model (for the model card)."""
    options = info.get("options") or {}
    data = options.get("data") or {}
    return {
        "command": info.get("command"),
        "command_cwd": info.get("command_cwd"),
        "experiment": storage.join(options["storage"], options["name"]) if options.get("storage") and options.get("name") else None,
        "space": info.get("space_path"),
        "trials": options.get("trials") or info.get("trials_requested"),  # the command's --trials, else its space's
        "trials_trained": info.get("trials_trained"),  # when the model was chosen (None in an export from before the record)
        "trials_unfinished": info.get("trials_unfinished"),
        "trials_failed": info.get("trials_failed"),  # before or after epochs (None in an export from before the record)
        "sampler": options.get("sampler"),
        "early_stopping": options.get("early_stopping"),
        "max_epochs": options.get("max_epochs"),
        "time_budget_min": options.get("time_budget_min"),
        "seed": options.get("seed"),
        "criterion": options.get("select", hp.criterion),
        "min_sensitivity": options.get("min_sensitivity", hp.min_sensitivity),
        "ties": TIE_RULE,
        "split": {"val_fraction": data.get("val_fraction"), "split_seed": data.get("split_seed")} if data else {},
        "class_counts": {"train": info.get("class_counts_train"), "validation": info.get("class_counts_val"), "external": info.get("class_counts_external")},
        "external_note": info.get("external_note") or "",
        "provenance": info.get("provenance"),  # the searching code's (None for an experiment from before the record)
        "trial_resources": info.get("trial_resources"),  # its threads per trial: a rerun equal bit for bit needs the same count
    }


def _reliability_png(meta: dict[str, Any]) -> bytes:
    """``reliability.png``: the reliability curve of every set ``meta`` measured (and before calibration)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / RELIABILITY_FILE
        plot_reliability(path, reliability_curves(meta), "Reliability of the exported model")
        return path.read_bytes()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.export", description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment folder or URI (STORAGE/NAME) of a finished or interrupted search")
    parser.add_argument("--trial", default=None, help="trial id to export (default: the selected best trial, into EXPERIMENT/best)")
    parser.add_argument("--ensemble", type=positive_int, default=None, metavar="K", help="export the K best trials as one averaging model (default: the space's search.ensemble, usually 1)")
    parser.add_argument("--val-data", default=None, metavar="PATH",
                        help="a labelled folder (NORMAL/, PNEUMONIA/) from the target site: rank the trials, pick the ensemble and choose "
                             "the threshold on it instead of the experiment's own deciding set (default: the experiment's)")
    parser.add_argument("--tta", type=int_between(1, len(TTA_VIEWS)), default=1, metavar="N",
                        help=f"average the model over N fixed test-time views (1 to {len(TTA_VIEWS)}: identity, zoom, shifts, small rotations) inside the ONNX graph (default: 1, none)")
    parser.add_argument("--calibrate", choices=CALIBRATION_METHODS, default="none",
                        help="fit a calibration map on the deciding set's scores and build it into the ONNX graph: platt (logistic on the "
                             "logit: slope and intercept) or temperature (logit / T); increasing, so the ranking, the AUC and every decision "
                             "stay the same and the thresholds are re-expressed (default: none)")
    parser.add_argument("--final-fit", action="store_true",
                        help="export the final fit's runs even where their average scores a lower AUC on the deciding set than the search's "
                             "own ensemble (default: the final fit only when it scores no lower)")
    parser.add_argument("--out", default=None, help="output folder (default: EXPERIMENT/best, or EXPERIMENT/exports/<trial> with --trial)")
    return with_exit_statuses(parser)


def main(argv: Sequence[str] | None = None) -> int:
    with folder_lock.holding():
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from cxr_tune.experiment import Experiment
    from cxr_tune.modelfile import check_model_target

    experiment = storage.resolve(args.experiment)
    if args.ensemble is not None and args.trial:
        raise UserError("--ensemble K needs no --trial")
    if args.out:
        check_model_target(args.out, "--out")
    target = storage.resolve(args.out) if args.out else storage.join(experiment, "best" if args.trial is None else f"exports/{args.trial}")
    folder_lock.hold(experiment)  # not while a search writes it (or another export)
    meta = export_trial(experiment, args.trial, target, args.ensemble, val_data=args.val_data, tta=args.tta, calibrate=args.calibrate,
                        final_fit=args.final_fit)
    if target != storage.join(experiment, "best"):
        print(summary(meta, target))
        return 0
    from cxr_tune.search import report as reporting  # the model report.md describes: the report follows it

    report = Experiment(experiment)
    try:
        written = reporting.write_report(report, report.trials(), meta)
    except BaseException as exc:  # best/ is the new model already; the report may be the one before, or a mix
        print(summary(meta, target))
        print(f"Report:      not rewritten ({'stopped' if isinstance(exc, KeyboardInterrupt) else 'failed'}): {report.file('report.md')} "
              "and its plots/ may still describe the model best/ held before; run this export again to rewrite them", flush=True)
        raise
    print(summary(meta, target))
    print(f"Report:      {written} (rewritten for this model)")
    return 0


if __name__ == "__main__":
    run_cli(main)
