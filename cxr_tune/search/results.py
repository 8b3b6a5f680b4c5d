"""The trial table of an experiment (finished or interrupted) and the choice of the best trial.

One row per trial: its sampled parameters, the metrics of its best epoch (by the objective), how
many epochs it ran, whether ASHA stopped it, how long it ran, where its best checkpoint is and,
for a trial that failed, why.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_tune import storage
from cxr_tune.errors import UserError

METRICS = [
    "objective", "val_auc", "val_sensitivity", "val_specificity", "val_balanced_accuracy", "val_youden",
    "val_gmean", "val_min_sens_spec", "val_threshold", "val_loss", "val_brier", "val_accuracy",
    "val_sensitivity_at_0.5", "val_specificity_at_0.5", "train_loss", "train_images_per_s",
    "worker_nodes", "worker_images",
]
ID_COLUMNS = ["trial_id", "status", "stop_reason", "epochs", "best_epoch", "run_seconds"]


def trial_histories(experiment_dir: str) -> tuple[list[Any], dict[str, pd.DataFrame]]:
    """Tune's trials and each trial's per-epoch results (from its ``result.json``)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(experiment_dir)
    except ValueError:
        raise UserError(f"'{experiment_dir}' holds no Tune experiment state yet (did the search start?)") from None
    return analysis.trials, analysis.trial_dataframes


def trials_table(experiment_dir: str, max_epochs: int) -> pd.DataFrame:
    """The table written to ``trials.csv`` / ``trials.parquet``; sorted by trial start."""
    trials, histories = trial_histories(experiment_dir)
    rows = []
    params: list[str] = []
    for trial in trials:
        for key in trial.config:
            if key not in params:
                params.append(key)
        history = histories.get(trial.trial_id, pd.DataFrame())
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status, **trial.config}
        if not history.empty and "objective" in history:
            history = history.dropna(subset=["objective"])
        if history.empty or "objective" not in history:
            row.update({"epochs": 0, "best_epoch": math.nan, "run_seconds": math.nan, "checkpoint_path": None})
        else:
            best = best_epoch(history)
            row.update({
                "epochs": int(history["epoch"].max()),
                "best_epoch": int(best["epoch"]),
                "run_seconds": float(history["time_total_s"].max()) if "time_total_s" in history else math.nan,
                "checkpoint_path": best.get("checkpoint_path"),
                **{m: best.get(m, math.nan) for m in METRICS},
            })
        row["error"] = _error(trial) if trial.status == "ERROR" else ""
        row["stop_reason"] = _stop_reason(trial.status, row["epochs"], max_epochs)
        row["started"] = trial.run_metadata.start_time if getattr(trial, "run_metadata", None) else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ordered = ID_COLUMNS + params + [m for m in METRICS if m in table] + ["checkpoint_path", "error"]
    table = table.reindex(columns=[c for c in ordered if c in table] + [c for c in table if c not in ordered])
    return table.sort_values("trial_id").reset_index(drop=True)


def best_epoch(history: pd.DataFrame) -> pd.Series:
    """The epoch a trial is judged by: highest objective; ties go to higher AUC, then lower loss."""
    ranked = history.sort_values(["objective", "val_auc", "val_loss", "epoch"], ascending=[False, False, True, True])
    return ranked.iloc[0]


def select_best(table: pd.DataFrame, criterion: str) -> pd.Series:
    """The trial with the best validation balance (``val_<criterion>`` at its chosen threshold).

    Ties (common: validation carved from train saturates) go to the higher AUC, then the lower
    validation loss. Trials that failed or never reported are not candidates.
    """
    column = f"val_{criterion}"
    candidates = table[table["epochs"] > 0].dropna(subset=[column]) if not table.empty else table
    if candidates.empty:
        raise UserError("no trial has reported a validation result yet; nothing to select")
    ranked = candidates.sort_values([column, "val_auc", "val_loss"], ascending=[False, False, True])
    return ranked.iloc[0]


def pareto_front(sensitivity: np.ndarray, specificity: np.ndarray) -> np.ndarray:
    """Boolean mask of points no other point beats on both sensitivity and specificity."""
    points = np.column_stack([sensitivity, specificity])
    mask = np.ones(len(points), dtype=bool)
    for i, point in enumerate(points):
        dominated = np.all(points >= point, axis=1) & np.any(points > point, axis=1)
        mask[i] = not dominated.any()
    return mask


def checkpoint_for(row: pd.Series, experiment_dir: str) -> str:
    """The trial's best checkpoint; falls back to its newest one if that was removed."""
    path = row.get("checkpoint_path")
    if isinstance(path, str) and storage.exists(path):
        return path
    runs = Path(storage.join(experiment_dir, "train", str(row["trial_id"])))
    found = sorted(runs.glob("checkpoint_*")) if runs.exists() else []
    if not found:
        raise UserError(f"trial {row['trial_id']} has no checkpoint under {runs}")
    return str(found[-1])


def _stop_reason(status: str, epochs: int, max_epochs: int) -> str:
    if status == "ERROR":
        return "error"
    if status == "TERMINATED":
        return "completed" if epochs >= max_epochs else "ASHA stopped"
    return f"unfinished ({status.lower()})"


def _error(trial: Any) -> str:
    """The last meaningful line of the trial's error (the worker's exception, not Ray's wrapper)."""
    path = Path(trial.local_path or "", "error.txt") if getattr(trial, "local_path", None) else None
    text = path.read_text(errors="replace") if path and path.exists() else str(getattr(trial, "error_msg", "") or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "File ", "Traceback", "^"))]
    candidates = [ln for ln in lines if "Error" in ln or "Exception" in ln] or lines
    return candidates[-1][:300] if candidates else "failed (no error text recorded)"
