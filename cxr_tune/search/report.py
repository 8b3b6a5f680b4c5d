"""``report.md`` and its PNG plots: search progress, parameter importances, the sensitivity/
specificity Pareto front, and the selected trial's ROC curve, confusion matrix and learning curves.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cxr_tune import storage  # noqa: E402
from cxr_tune.search.results import checkpoint_for, pareto_front, trial_histories  # noqa: E402
from cxr_tune.search.runner import experiment_info, load_options, study_path  # noqa: E402
from cxr_tune.train.checkpoints import load_predictions  # noqa: E402

TOP = 10
TABLE_COLUMNS = ["trial_id", "stop_reason", "epochs", "objective", "val_auc", "val_sensitivity", "val_specificity", "val_threshold", "val_loss"]


def write_report(experiment_dir: str, table: pd.DataFrame, selected: pd.Series, exported: dict[str, Any] | None) -> str:
    """Write ``report.md`` and ``plots/*.png``; returns the report's path."""
    if storage.is_uri(experiment_dir):  # plots are drawn locally and uploaded
        local = Path(load_options(experiment_dir).data.resolved_cache_dir, "reports", Path(experiment_dir).name)
    else:
        local = Path(experiment_dir)
    plots = local / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    options = load_options(experiment_dir)
    info = experiment_info(experiment_dir)
    _, histories = trial_histories(experiment_dir)
    checkpoint = checkpoint_for(selected, experiment_dir)
    predictions = load_predictions(checkpoint)
    notes = {
        "progress": _plot_progress(plots / "progress.png", histories),
        "importances": _plot_importances(plots / "importances.png", options),
        "pareto": _plot_pareto(plots / "pareto.png", table, selected),
        "roc": _plot_roc(plots / "roc.png", predictions, float(selected["val_threshold"])),
        "confusion": _plot_confusion(plots / "confusion.png", predictions, float(selected["val_threshold"])),
        "learning": _plot_learning(plots / "learning_curves.png", histories.get(selected["trial_id"], pd.DataFrame())),
    }
    text = _markdown(info, options, table, selected, exported, notes)
    (local / "report.md").write_text(text, encoding="utf-8")
    if local != Path(experiment_dir):
        for file in [local / "report.md", *plots.glob("*.png")]:
            storage.write_bytes_atomic(storage.join(experiment_dir, str(file.relative_to(local))), file.read_bytes())
    return storage.join(experiment_dir, "report.md")


def _markdown(info: dict, options: Any, table: pd.DataFrame, selected: pd.Series, exported: dict | None, notes: dict[str, str | None]) -> str:
    criterion = options.select.replace("_", " ")
    lines = [f"# Search report: {options.name}", ""]
    if info["synthetic"]:
        lines += ["> **SYNTHETIC DATA.** Every number below comes from procedurally drawn images, not patients.", ""]
    counts = ", ".join(f"{v} {k}" for k, v in table["stop_reason"].value_counts().items())
    lines += [
        f"- Command: `{info['command']}`",
        f"- Data: {info['data_description']}",
        f"- Train / validation images (distinct, NORMAL/PNEUMONIA): {tuple(info['class_counts_train'])} / {tuple(info['class_counts_val'])}; "
        f"validation is carved from the training folder by patient group ({options.data.val_fraction:.0%}, split seed {options.data.split_seed})",
        f"- Space: `{info['space_path']}` (copied to `space.yaml`)",
        f"- Selection: validation {criterion} at a validation-chosen threshold"
        + (f", sensitivity >= {options.min_sensitivity:g}" if options.min_sensitivity else "")
        + f"; trials within {options.select_tolerance:g} of the best count as tied and go by lowest validation log loss."
        + " The test split never selects anything.",
        f"- Trials: {len(table)} ({counts})",
        f"- Written {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"## Selected trial `{selected['trial_id']}`",
        "",
        f"Best epoch {int(selected['best_epoch'])} of {int(selected['epochs'])}, threshold {selected['val_threshold']:.4f}.",
        "",
        _table(pd.DataFrame([{c: selected.get(c) for c in TABLE_COLUMNS[3:] + ["val_balanced_accuracy", "val_gmean", "val_youden"]}])),
        "",
        "Parameters: " + ", ".join(f"`{k}={_fmt(selected[k])}`" for k in _param_columns(table) if not _missing(selected.get(k))),
        "",
    ]
    if exported:
        members = [m["trial_id"] for m in exported.get("members", [])]
        what = f"the average of trials {', '.join(f'`{m}`' for m in members)}" if len(members) > 1 else "this trial"
        val = exported["validation"]
        lines += [
            f"Exported to `best/`: {what} (ONNX, loaded back and checked against PyTorch and the stored scores). "
            f"Decision threshold {exported['threshold']:.4f} ({exported['threshold_rule']}); validation at it: "
            f"AUC {val['auc']:.4f}, sensitivity {val['sensitivity']:.4f}, specificity {val['specificity']:.4f}, "
            f"balanced accuracy {val['balanced_accuracy']:.4f}."
        ]
        if "test" in exported:
            test, ci = exported["test"], exported["test"]["ci95"]
            lines += ["", "Held-out test split, scored once at the stored threshold (95 % bootstrap intervals):", ""]
            lines += [_table(pd.DataFrame([{k: f"{test[k]:.4f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" for k in ci}]))]
        lines.append("")
    lines += ["## Plots", ""]
    captions = {
        "progress": ("progress.png", "Search progress: every epoch's validation objective over time, and the best so far."),
        "importances": ("importances.png", "Parameter importances (Optuna fANOVA over finished trials)."),
        "pareto": ("pareto.png", "Validation sensitivity vs specificity of every trial's best epoch; the Pareto front and the selected trial."),
        "roc": ("roc.png", "Selected trial: validation ROC curve and the chosen threshold."),
        "confusion": ("confusion.png", "Selected trial: validation confusion matrix at the chosen threshold."),
        "learning": ("learning_curves.png", "Selected trial: learning curves."),
    }
    for key, (file, caption) in captions.items():
        lines += [f"**{caption}**", ""]
        lines += [f"_{notes[key]}_" if notes[key] else f"![{key}](plots/{file})", ""]
    lines += [f"## Top {min(TOP, len(table))} trials", ""]
    ranked = table.sort_values(["objective", "val_auc"], ascending=False, na_position="last").head(TOP)
    lines += [_table(ranked[[c for c in TABLE_COLUMNS + _param_columns(table) if c in ranked]]), ""]
    errors = table[table["status"] == "ERROR"]
    if not errors.empty:
        lines += ["## Failed trials", "", _table(errors[["trial_id", "error"]]), ""]
    lines += ["All trials: `trials.csv` / `trials.parquet`. Optuna study: `study.db` (open with `optuna-dashboard`).", ""]
    return "\n".join(lines)


def _plot_progress(path: Path, histories: dict[str, pd.DataFrame]) -> str | None:
    frames = [h.assign(trial=t) for t, h in histories.items() if not h.empty and "objective" in h and "timestamp" in h]
    if not frames:
        return "No results yet."
    results = pd.concat(frames).dropna(subset=["objective"]).sort_values("timestamp")
    minutes = (results["timestamp"] - results["timestamp"].min()) / 60
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(minutes, results["objective"], s=12, alpha=0.5, label="an epoch of a trial")
    ax.step(minutes, results["objective"].cummax(), where="post", color="C3", label="best so far")
    ax.set(xlabel="minutes since the first result", ylabel="validation objective", title="Search progress")
    ax.legend(loc="lower right")
    _save(fig, path)
    return None


def _plot_importances(path: Path, options: Any) -> str | None:
    import optuna

    db = study_path(options)
    if not Path(db).exists():
        return "No Optuna study file."
    try:
        study = optuna.load_study(study_name=options.name, storage=f"sqlite:///{db}")
        importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return f"Parameter importances are not available: {exc}"
    if not importances:
        return "Parameter importances are not available (fewer than two finished trials)."
    names, values = list(importances)[::-1], list(importances.values())[::-1]
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.4 * len(names))))
    ax.barh(names, values)
    ax.set(xlabel="importance (fANOVA)", title="Parameter importances")
    _save(fig, path)
    return None


def _plot_pareto(path: Path, table: pd.DataFrame, selected: pd.Series) -> str | None:
    done = table.dropna(subset=["val_sensitivity", "val_specificity"])
    if done.empty:
        return "No finished trials."
    sens, spec = done["val_sensitivity"].to_numpy(), done["val_specificity"].to_numpy()
    front = pareto_front(sens, spec)
    order = np.argsort(spec[front])
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.scatter(spec, sens, s=20, alpha=0.6, label="trials (best epoch)")
    ax.plot(spec[front][order], sens[front][order], "-o", color="C2", ms=5, label="Pareto front")
    ax.scatter([selected["val_specificity"]], [selected["val_sensitivity"]], s=120, marker="*", color="C3", label="selected", zorder=5)
    ax.set(xlabel="validation specificity", ylabel="validation sensitivity", title="Sensitivity vs specificity")
    ax.legend(loc="lower left")
    _save(fig, path)
    return None


def _plot_roc(path: Path, predictions: pd.DataFrame, threshold: float) -> str | None:
    from sklearn.metrics import RocCurveDisplay

    labels, scores = predictions["label"].to_numpy(), predictions["score"].to_numpy()
    if len(np.unique(labels)) < 2:
        return "Validation holds one class only; no ROC curve."
    fig, ax = plt.subplots(figsize=(5.5, 5))
    RocCurveDisplay.from_predictions(labels, scores, ax=ax, name="validation")
    predicted = scores >= threshold
    sens, spec = predicted[labels == 1].mean(), 1 - predicted[labels == 0].mean()
    ax.scatter([1 - spec], [sens], s=80, color="C3", zorder=5, label=f"threshold {threshold:.3f}")
    ax.legend(loc="lower right")
    ax.set(title="Selected trial: validation ROC")
    _save(fig, path)
    return None


def _plot_confusion(path: Path, predictions: pd.DataFrame, threshold: float) -> str | None:
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        predictions["label"], (predictions["score"] >= threshold).astype(int), labels=[0, 1],
        display_labels=["NORMAL", "PNEUMONIA"], ax=ax, colorbar=False,
    )
    ax.set(title=f"Validation at threshold {threshold:.3f}")
    _save(fig, path)
    return None


def _plot_learning(path: Path, history: pd.DataFrame) -> str | None:
    if history.empty or "epoch" not in history:
        return "No per-epoch history for the selected trial."
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(history["epoch"], history["train_loss"], "-o", label="train loss (weighted, augmented)")
    left.plot(history["epoch"], history["val_loss"], "-o", label="validation log loss")
    left.set(xlabel="epoch", title="Loss")
    left.legend()
    for column, label in (("val_auc", "validation AUC"), ("objective", "validation objective"), ("val_sensitivity", "sensitivity"), ("val_specificity", "specificity")):
        right.plot(history["epoch"], history[column], "-o", label=label, ms=3)
    right.set(xlabel="epoch", title="Validation metrics")
    right.legend(loc="lower right")
    _save(fig, path)
    return None


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _param_columns(table: pd.DataFrame) -> list[str]:
    start = table.columns.get_loc("run_seconds") + 1 if "run_seconds" in table else 0
    end = table.columns.get_loc("objective") if "objective" in table else len(table.columns)
    return list(table.columns[start:end])


def _table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4f")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
