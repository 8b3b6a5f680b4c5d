"""An export scored on its experiment's external set, and rows of models compared with it there (``bench value``, ``bench epochs``).

Retrained runs store their external scores by image content hash; an export's
``external_predictions.csv`` lists the same images by path. This reads the export once, checks it
belongs to the experiment, and puts both in the export's image order, so every model in a table is
scored on the same images and compared by a paired bootstrap.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxr_tune import storage
from cxr_tune.bench.common import paired_auc_difference
from cxr_tune.bench.kept import KeptRuns
from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from cxr_tune.formatting import from_spreadsheet
from cxr_tune.modelfile import PREDICTIONS_FILES
from cxr_tune.selection import REPORTED_RESAMPLES, choose_threshold
from cxr_tune.serving import META_FILE, read_meta
from cxr_tune.train.hparams import HParams
from cxr_tune.train.metrics import rates_at


@dataclass(frozen=True)
class ExportOnExternal:
    model: str  # the export folder
    meta: dict  # its model.json
    labels: np.ndarray  # the external images' labels, in the export's order
    probabilities: np.ndarray  # the export's scores of them
    hashes: list[str]  # their content hashes, same order (how retrained runs' scores are keyed)
    paths: list[str]  # their paths, same order (as its external_predictions.csv names them)


def export_on_external(experiment: Experiment, model: str | None) -> ExportOnExternal:
    """``model``: the experiment's exported folder (default ``EXPERIMENT/best``; a committed copy such as ``results/real/best``)."""
    model = model or experiment.file("best")
    best = storage.join(model, PREDICTIONS_FILES["ext"])
    if experiment.deciding_set != "external":
        raise UserError(f"'{experiment.path}' was not selected on an external set; this benchmark compares models on the set that chose them")
    if not storage.exists(best):
        raise UserError(f"'{model}' holds no {PREDICTIONS_FILES['ext']}: pass the folder `python -m cxr_tune.export {experiment.path}` "
                        "wrote with --model (the export of this experiment, scored on its external set)")
    meta = read_meta(storage.join(model, META_FILE))
    if meta.get("search", {}).get("command") != experiment.info.get("command"):
        raise UserError(f"'{model}' is not an export of '{experiment.path}': its model.json names the search "
                        f"`{meta.get('search', {}).get('command')}`, the experiment was `{experiment.info.get('command')}`")
    predictions = from_spreadsheet(storage.read_csv(best))
    return ExportOnExternal(model, meta, predictions["label"].to_numpy().astype(int), predictions["probability"].to_numpy(),
                            _hashes_in_export_order(experiment, predictions), predictions["path"].tolist())


def threshold_by_rule(labels: np.ndarray, scores: np.ndarray, hp: HParams) -> float:
    """The threshold the model's own rule (criterion, sensitivity floor, tolerance) picks on these images."""
    return choose_threshold(labels, scores, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance)


def score_row(name: str, labels: np.ndarray, scores: np.ndarray, threshold: float, cpu_minutes: float | None,
              references: dict[str, np.ndarray]) -> dict:
    """AUC, balanced accuracy (95 % bootstrap intervals) and rates at ``threshold``; for each named
    reference, ``auc - NAME`` and ``NAME_ci``: this AUC minus the reference's on the same images, paired."""
    from sklearn.metrics import roc_auc_score

    from cxr_tune.set_metrics import bootstrap_intervals

    rates = rates_at(labels, scores, threshold)
    ci = bootstrap_intervals(labels, scores, threshold, resamples=REPORTED_RESAMPLES)
    row = {"model": name, "cpu_minutes": cpu_minutes, "auc": float(roc_auc_score(labels, scores)), "auc_ci": ci.get("auc"),
           "balanced_accuracy": rates["balanced_accuracy"], "ba_ci": ci.get("balanced_accuracy"),
           "sensitivity": rates["sensitivity"], "specificity": rates["specificity"], "threshold": threshold}
    for key, reference in references.items():
        row[f"auc - {key}"], row[f"{key}_ci"] = paired_auc_difference(labels, scores, reference, REPORTED_RESAMPLES)
    return row


def train_external_scores(experiment: Experiment, hp: HParams, datasets: dict[str, Any], class_counts: tuple[int, int], cpus: float,
                          kept: KeptRuns, name: str, callbacks: list[Any] | None = None) -> tuple[pd.Series, float, bool]:
    """Train ``hp`` once on ``datasets`` (the experiment's split) with the experiment's run options (its last epoch kept, no epoch
    picked on the external set); its external scores by content hash, the CPU-minutes it held, and whether an earlier try of
    the command had trained it (``kept``: :mod:`cxr_tune.bench.kept`). ``callbacks``: the trainer's
    (:func:`cxr_tune.train.progress.epoch_lines`)."""
    from cxr_tune.search.runner import run_options
    from cxr_tune.train.checkpoints import load_predictions
    from cxr_tune.train.trainer import Resources, fit, make_trainer

    if (record := kept.get(name)) is not None:
        return pd.Series(record["scores"], name="score"), record["cpu_minutes"], True
    started = time.time()
    result = fit(make_trainer(hp, datasets, class_counts, resources=Resources(1, cpus), storage_path=kept.fresh(name), name=name,
                              deciding=experiment.deciding_set, run=run_options(experiment.options), loop_options={"keep": "last"},
                              callbacks=callbacks))
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        scores = load_predictions(folder, "ext").set_index("content_hash")["score"]
    minutes = (time.time() - started) / 60 * cpus
    kept.put(name, {"scores": {str(h): float(v) for h, v in scores.items()}, "cpu_minutes": minutes})
    return scores, minutes, False


def score_table(rows: list[dict], differences: dict[str, str]) -> str:
    """The rows for people, each metric with its 95 % interval in one cell; ``differences``: the
    column title of each reference's paired AUC difference, by its key in :func:`score_row`."""
    from cxr_tune.formatting import fmt, interval

    withheld = lambda ci: " [n/a]" if ci is None else interval(ci)  # noqa: E731 - a bootstrap that bounded nothing (every resample alike)
    members = any("members_auc" in row for row in rows)
    table = []
    for row in rows:
        cells = {"model": row["model"], "CPU-minutes": "" if row["cpu_minutes"] is None else f"{row['cpu_minutes']:.1f}",
                 "AUC [95 % CI]": fmt(row["auc"]) + withheld(row["auc_ci"])}
        if members:
            cells["members alone (AUC)"] = ", ".join(fmt(a) for a in row.get("members_auc", []))
        cells.update({"balanced accuracy [95 % CI]": fmt(row["balanced_accuracy"]) + withheld(row["ba_ci"]),
                      "sensitivity": fmt(row["sensitivity"]), "specificity": fmt(row["specificity"]), "threshold": fmt(row["threshold"], 3)})
        for key, title in differences.items():
            cells[title] = fmt(row[f"auc - {key}"]) + withheld(row[f"{key}_ci"]) if f"{key}_ci" in row else ""
        table.append(cells)
    return pd.DataFrame(table).to_markdown(index=False, disable_numparse=True)


def _hashes_in_export_order(experiment: Experiment, predictions: pd.DataFrame) -> list[str]:
    """Content hashes of the export's external images, in its CSV's order (matched by path)."""
    rows = experiment.splits[experiment.splits["role"] == "external"].drop_duplicates("path").set_index("path")
    unknown = sorted(set(predictions["path"]) - set(rows.index))
    if unknown:
        raise UserError(f"{len(unknown)} image(s) of the export's external_predictions.csv are not the experiment's external set, e.g. '{unknown[0]}'")
    return rows.loc[predictions["path"], "content_hash"].tolist()
