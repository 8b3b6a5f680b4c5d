"""After a search (or an interrupted one): trial table, selection, export, report, console summary."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cxr_tune import storage
from cxr_tune.search.results import asha_rungs, select_best, trials_table
from cxr_tune.search.runner import experiment_info, load_options
from cxr_tune.search.space import load_space

SUMMARY_COLUMNS = ["val_auc", "val_sensitivity", "val_specificity", "val_balanced_accuracy", "val_threshold", "val_loss"]


def load_trials(experiment_dir: str) -> pd.DataFrame:
    """The trial table, computed from Tune's state (works while trials are unfinished)."""
    options = load_options(experiment_dir)
    settings = load_space(storage.join(experiment_dir, "space.yaml")).settings
    max_epochs = options.max_epochs or settings.max_epochs
    rungs = asha_rungs(settings.grace_period, settings.reduction_factor, max_epochs) if options.early_stopping else ()
    return trials_table(experiment_dir, max_epochs, rungs)


def finish_experiment(experiment_dir: str, *, export: bool = True) -> dict[str, Any]:
    """Write ``trials.csv``/``trials.parquet``, export the selected trial, write ``report.md``."""
    from cxr_tune.search.report import write_report

    options = load_options(experiment_dir)
    info = experiment_info(experiment_dir)
    table = load_trials(experiment_dir)
    storage.write_bytes_atomic(storage.join(experiment_dir, "trials.csv"), table.to_csv(index=False).encode())
    storage.write_frame(storage.join(experiment_dir, "trials.parquet"), table.astype({"error": str}))
    selected = select_best(table, options.select, options.select_tolerance)
    exported = None
    if export:
        from cxr_tune.export import export_trial, summary

        exported = export_trial(experiment_dir)
    report = write_report(experiment_dir, table, selected, exported)
    _print_summary(info, table, selected, exported, experiment_dir, report)
    return {"table": table, "selected": selected, "exported": exported}


def _print_summary(info: dict, table: pd.DataFrame, selected: pd.Series, exported: dict | None, experiment_dir: str, report: str) -> None:
    from cxr_tune.export import summary

    counts = table["stop_reason"].value_counts().to_dict()
    tag = "  [SYNTHETIC DATA — not real patients]" if info["synthetic"] else ""
    print(f"\n=== Search finished: {len(table)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}){tag}")
    print(f"Selected trial {selected['trial_id']} (best epoch {int(selected['best_epoch'])} of {int(selected['epochs'])}):")
    print("  " + ", ".join(f"{c.removeprefix('val_')} {selected[c]:.4f}" for c in SUMMARY_COLUMNS))
    if exported:
        print(summary(exported, storage.join(experiment_dir, "best")))
    print(f"Trial table: {storage.join(experiment_dir, 'trials.csv')}")
    print(f"Report:      {report}")
    print(f"Optuna:      optuna-dashboard sqlite:///{storage.join(experiment_dir, 'study.db')}")
