"""Does searching pay? The selected model against not searching at all, on the external sample, with the compute each used.

Three models, each scored on the experiment's external set (half A of the official test split:
**selection-set numbers** — it chose the search's model and every threshold here, so all rows are
optimistic alike; AUC is threshold-free and the fairest column):

- **the search**: the exported ``best/`` (search, final fit, ensemble), at its own threshold;
- **the default**: the documented default configuration (:class:`cxr_tune.train.hparams.HParams`'s
  defaults) trained once, its last epoch, threshold by the same rule on the same set;
- **the default given the search's compute**: the default trained with as many seeds as fit in
  the CPU-minutes the search and its final fit used, averaged.

Every run uses the experiment's own split and the search's training machinery (Ray Train, the
same step and precision). Intervals: 95 % bootstrap over images; the difference in AUC to the
search's model is a paired bootstrap (same resampled images for both).
"""

from __future__ import annotations

import math
import tempfile
import time

import numpy as np
import pandas as pd

from cxr_tune import storage
from cxr_tune.bench.common import paired_auc_difference, write_result
from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from cxr_tune.selection import choose_threshold
from cxr_tune.train.checkpoints import load_predictions
from cxr_tune.train.hparams import HParams
from cxr_tune.train.metrics import rates_at

RESAMPLES = 2000


def run(experiment_dir: str, seeds: int | None, model: str | None = None) -> None:
    """``model``: the experiment's exported folder (default ``EXPERIMENT/best``; a committed copy such as ``results/real/best``)."""
    import ray

    from cxr_tune.data.prepared import datasets_by_size
    from cxr_tune.ray_session import ray_session
    from cxr_tune.search.runner import run_options
    from cxr_tune.train.trainer import Resources, make_trainer

    experiment = Experiment(experiment_dir)
    model = model or experiment.file("best")
    best = storage.join(model, "external_predictions.csv")
    if experiment.deciding_set != "external":
        raise UserError(f"'{experiment.path}' was not selected on an external set; bench value compares models on the set that chose them")
    if not _exists(best):
        raise UserError(f"'{model}' holds no external_predictions.csv: pass the folder `python -m cxr_tune.export {experiment_dir}` "
                        "wrote with --model (the export of this experiment, scored on its external set)")
    meta = _meta(model)
    if meta.get("search", {}).get("command") != experiment.info.get("command"):
        raise UserError(f"'{model}' is not an export of '{experiment.path}': its model.json names the search "
                        f"`{meta.get('search', {}).get('command')}`, the experiment was `{experiment.info.get('command')}`")
    searched = storage.read_csv(best)
    # external_predictions.csv is in the export's image order; the runs' scores are keyed by content hash.
    hashes = _hashes_in_export_order(experiment, searched)
    search_minutes = experiment.compute_minutes()
    options = experiment.options
    # The documented defaults, judged by the search's own criterion and sensitivity floor.
    hp = HParams(criterion=options.select, min_sensitivity=options.min_sensitivity)
    split = experiment.split()
    runs: list[dict] = []
    with ray_session(), tempfile.TemporaryDirectory() as scratch:
        cpus = float(ray.cluster_resources()["CPU"])
        datasets = datasets_by_size(split, [hp.image_size])[hp.image_size]
        budget = seeds
        index = 0
        while True:
            started = time.time()
            result = make_trainer(HParams.from_config({**hp.to_dict(), "seed": index}), datasets, split.class_counts(),
                                  resources=Resources(1, cpus), storage_path=scratch, name=f"default-seed{index}", deciding=experiment.deciding_set,
                                  run=run_options(options), loop_options={"keep": "last"}).fit()
            if result.error:
                raise result.error
            with result.checkpoint.as_directory() as folder:
                scores = load_predictions(folder, "ext")
            runs.append({"seed": index, "cpu_minutes": (time.time() - started) / 60 * cpus, "scores": scores})
            print(f"default configuration, seed {index}: {runs[-1]['cpu_minutes']:.1f} CPU-minutes", flush=True)
            index += 1
            if budget is None:  # as many seeds as fit in the search's compute, estimated from the first run
                budget = max(1, math.floor(search_minutes / runs[0]["cpu_minutes"]))
            if index >= budget:
                break
    labels = searched["label"].to_numpy().astype(int)
    order = runs[0]["scores"].set_index("content_hash")
    default_scores = [r["scores"].set_index("content_hash")["score"] for r in runs]
    single = order.loc[hashes, "score"].to_numpy()
    averaged = pd.concat(default_scores, axis=1).mean(axis=1).loc[hashes].to_numpy()
    rows = [
        _row("the search (best/: search, final fit, ensemble)", labels, searched["probability"].to_numpy(), float(meta["threshold"]),
             search_minutes, None),
        _row("the default configuration, one run", labels, single, _threshold(labels, single, hp), runs[0]["cpu_minutes"], searched["probability"].to_numpy()),
        _row(f"the default configuration, {len(runs)} seeds averaged" + (" (the search's compute)" if seeds is None else ""), labels, averaged, _threshold(labels, averaged, hp),
             sum(r["cpu_minutes"] for r in runs), searched["probability"].to_numpy()),
    ]
    summary = [
        f"Experiment `{experiment.path}`, its exported model `{model}`. External set: `{experiment.external}` ({len(labels)} images); **every number here is a "
        "selection-set number** (half A chose the search's model and every threshold). Default configuration: "
        + ", ".join(f"`{k}={v}`" for k, v in hp.to_dict().items() if k in ("arch", "depth", "filters", "image_size", "epochs", "lr", "batch_size", "augment_strength")),
        "",
        _table(rows),
        "",
        ("The last column is the default's AUC minus the search's on the same images, with a paired 95 % bootstrap interval: an interval "
         "below zero means the search's model ranks these patients measurably better."),
    ]
    write_result("value_of_search", "Does the search pay? The selected model vs the default configuration", summary,
                 {"rows": rows, "search_cpu_minutes": search_minutes, "default_runs": [{k: v for k, v in r.items() if k != "scores"} for r in runs]})


def _row(name: str, labels: np.ndarray, scores: np.ndarray, threshold: float, cpu_minutes: float, reference: np.ndarray | None) -> dict:
    from cxr_tune.export import bootstrap_intervals

    rates = rates_at(labels, scores, threshold)
    ci = bootstrap_intervals(labels, scores, threshold, resamples=RESAMPLES)
    from sklearn.metrics import roc_auc_score

    row = {"model": name, "cpu_minutes": cpu_minutes, "auc": float(roc_auc_score(labels, scores)), "auc_ci": ci.get("auc"),
           "balanced_accuracy": rates["balanced_accuracy"], "ba_ci": ci.get("balanced_accuracy"),
           "sensitivity": rates["sensitivity"], "specificity": rates["specificity"], "threshold": threshold}
    if reference is not None:
        row["auc - search"], row["diff_ci"] = paired_auc_difference(labels, scores, reference, RESAMPLES)
    return row


def _table(rows: list[dict]) -> str:
    """The rows for people: each metric with its 95 % interval in one cell."""
    from cxr_tune.formatting import fmt, interval

    return pd.DataFrame([{
        "model": row["model"], "CPU-minutes": f"{row['cpu_minutes']:.1f}",
        "AUC [95 % CI]": fmt(row["auc"]) + interval(row["auc_ci"]),
        "balanced accuracy [95 % CI]": fmt(row["balanced_accuracy"]) + interval(row["ba_ci"]),
        "sensitivity": fmt(row["sensitivity"]), "specificity": fmt(row["specificity"]), "threshold": fmt(row["threshold"], 3),
        "AUC minus the search's [paired 95 % CI]": fmt(row["auc - search"]) + interval(row["diff_ci"]) if "diff_ci" in row else "",
    } for row in rows]).to_markdown(index=False, disable_numparse=True)


def _threshold(labels: np.ndarray, scores: np.ndarray, hp: HParams) -> float:
    return choose_threshold(labels, scores, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance)


def _meta(model: str) -> dict:
    import json

    return json.loads(storage.read_text(storage.join(model, "model.json")))


def _hashes_in_export_order(experiment: Experiment, predictions: pd.DataFrame) -> list[str]:
    """Content hashes of the export's external images, in its CSV's order (matched by path)."""
    rows = experiment.splits[experiment.splits["role"] == "external"].drop_duplicates("path").set_index("path")
    unknown = sorted(set(predictions["path"]) - set(rows.index))
    if unknown:
        raise UserError(f"{len(unknown)} image(s) of the export's external_predictions.csv are not the experiment's external set, e.g. '{unknown[0]}'")
    return rows.loc[predictions["path"], "content_hash"].tolist()


def _exists(path: str) -> bool:
    return storage.exists(path)
