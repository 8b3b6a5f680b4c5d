"""What each choice of the real-data recipe does to validation metrics, measured side by side.

Two kinds of comparison, both on the experiment's own validation split:

- post hoc, from the stored validation scores of the search's best trials (no training): one model
  vs the averaging ensemble, and the threshold at the best cut vs in the middle of the near-best
  range;
- retraining: the selected configuration and one-change variants of it (class weighting,
  augmentation, intensity normalization, resolution), same split, seed and epochs, one after
  another in one Ray session.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxr_tune.bench.common import PROJECT, check_varied, other_experiment_data, results_folder, write_result
from cxr_tune.bench.kept import KeptRuns, kept_runs
from cxr_tune.data.prepared import datasets_by_size
from cxr_tune.experiment import Experiment
from cxr_tune.formatting import code_span
from cxr_tune.selection import best_epoch, choose_threshold, ensemble_members, ranked_trials
from cxr_tune.serving import META_FILE, read_meta
from cxr_tune.train.checkpoints import load_predictions, load_state
from cxr_tune.train.hparams import HParams
from cxr_tune.train.metrics import evaluate_scores, rates_at
from cxr_tune.train.trainer import Resources, fit, make_trainer

COLUMNS = ["val_auc", "val_balanced_accuracy", "val_sensitivity", "val_specificity", "val_loss", "val_brier"]


def margin(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Logit distance from the threshold to the nearest validation score (how far images may drift)."""
    logit = lambda p: np.log(np.clip(p, 1e-7, 1 - 1e-7) / (1 - np.clip(p, 1e-7, 1 - 1e-7)))  # noqa: E731
    return float(np.min(np.abs(logit(scores) - logit(np.array(threshold)))))


def post_hoc(experiment: Experiment, k: int) -> pd.DataFrame:
    ranked = ranked_trials(experiment.trials(ranked=False), experiment.deciding_set)
    members = [row for _, row in ensemble_members(ranked, k).iterrows()]
    predictions = [load_predictions(experiment.checkpoint_for(row)).set_index("content_hash") for row in members]
    hp = HParams.from_config(load_state(experiment.checkpoint_for(members[0]))["hparams"])
    labels = predictions[0]["label"].to_numpy()
    rows = []
    for name, scores in (("best trial alone", predictions[0]["score"]),
                         (f"average of the {len(members)} best trials", pd.concat([p["score"] for p in predictions], axis=1).mean(axis=1))):
        scores = scores.loc[predictions[0].index].to_numpy()
        for rule, tolerance in (("best cut", 0.0), (f"middle of near-best (tolerance {hp.threshold_tolerance:g})", hp.threshold_tolerance)):
            threshold = choose_threshold(labels, scores, hp.criterion, hp.min_sensitivity, tolerance)
            metrics = {**evaluate_scores(labels, scores, hp.criterion, hp.min_sensitivity, tolerance), **rates_at(labels, scores, threshold)}
            rows.append({"model": name, "threshold rule": rule, "threshold": threshold, "margin (logit)": margin(labels, scores, threshold),
                         **{c: metrics[c.removeprefix("val_")] for c in COLUMNS}})
    return pd.DataFrame(rows)


def configurations(experiment: Experiment, variants: list[tuple[str, object]], epochs: int) -> list[tuple[str, dict]]:
    """(name, hyperparameters) of each run: the exported configuration, then each variant of it (one no
    configuration can take is refused here, before the baseline retrains)."""
    base = read_meta(experiment.file("best", META_FILE))["hparams"]
    base["epochs"] = epochs
    configs = [("selected configuration", base)] + [(f"with {key}={value}", {**base, key: value}) for key, value in variants]
    for _, config in configs[1:]:
        check_varied(config)
    return configs


def retrain(experiment: Experiment, configs: list[tuple[str, dict]], epochs: int, kept: KeptRuns) -> pd.DataFrame:
    import ray

    from cxr_tune.ray_session import ray_session
    from cxr_tune.train.progress import epoch_lines

    split = experiment.split()
    rows = []
    with ray_session(), epoch_lines(sum(epochs for name, _ in configs if not kept.has(_run_name(name))), experiment.deciding_set) as callbacks_for:
        cpus = float(int(ray.cluster_resources()["CPU"]))
        for name, config in configs:
            run = _run_name(name)
            if (row := kept.get(run)) is None:
                hp = HParams.from_config(config)
                datasets = datasets_by_size(split, [hp.image_size])[hp.image_size]
                result = fit(make_trainer(hp, datasets, split.class_counts(), resources=Resources(1, cpus), storage_path=kept.fresh(run),
                                          deciding=experiment.deciding_set, name=run, callbacks=callbacks_for(name, epochs)))
                with result.checkpoint.as_directory() as folder:
                    history = pd.DataFrame(load_state(folder)["history"])
                best = best_epoch(history, experiment.deciding_set)
                row = kept.put(run, {"run": name, "best epoch": int(best["epoch"]), **{c: float(best[c]) for c in COLUMNS},
                                     "last-epoch val_balanced_accuracy": float(history.iloc[-1]["val_balanced_accuracy"]),
                                     "last-epoch val_loss": float(history.iloc[-1]["val_loss"])})
            rows.append(row)
            print(rows[-1], flush=True)
    frame = pd.DataFrame(rows)
    for column in COLUMNS:
        frame[f"Δ {column}"] = frame[column] - frame[column].iloc[0]
    return frame


def run(experiment: str, variants: list[tuple[str, object]], epochs: int, k: int, out: str | None = None) -> None:
    experiment = Experiment(experiment)
    configs = configurations(experiment, variants, epochs)  # a --vary no configuration takes is refused first
    folder = results_folder("ablation", out, other_experiment_data(experiment), default=PROJECT / "results" / "real")
    hoc = post_hoc(experiment, k)
    with kept_runs("ablation", {"experiment": experiment.path, "configs": configs}) as kept:
        trained = retrain(experiment, configs, epochs, kept) if variants else pd.DataFrame()
    summary = [
        f"Experiment {code_span(experiment.path)}; all numbers on its validation split (carved from train by patient).",
        "",
        "## Post hoc: ensemble and threshold rule (stored validation scores, no retraining)",
        "",
        hoc.to_markdown(index=False, floatfmt=".4f"),
    ]
    if not trained.empty:
        summary += [
            "",
            f"## Retrained, {epochs} epochs each, same split and seed (best epoch by the objective)",
            "",
            trained.to_markdown(index=False, floatfmt=".4f"),
        ]
    write_result("ablation", "Real data: what each choice does on validation", summary,
                 {"post_hoc": hoc.to_dict(orient="records"), "retrained": trained.to_dict(orient="records")},
                 folder=folder)
    kept.remove()


def _run_name(name: str) -> str:
    return name.replace(" ", "_").replace("=", "-")

