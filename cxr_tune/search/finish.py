"""After a search (or an interrupted one): trial table, selection, export, report, console summary."""

from __future__ import annotations

from typing import Any

import pandas as pd

from cxr_tune import storage
from cxr_tune.errors import UserError
from cxr_tune.search.results import asha_rungs, trials_table
from cxr_tune.search.runner import SearchOptions, experiment_info, experiment_space, load_options
from cxr_tune.search.study import study_path
from cxr_tune.selection import deciding_prefix, ranked_trials


def load_trials(experiment_dir: str) -> pd.DataFrame:
    """The trial table, computed from Tune's state (works while trials are unfinished)."""
    options = load_options(experiment_dir)
    settings = experiment_space(experiment_dir).settings
    max_epochs = options.max_epochs or settings.max_epochs
    rungs = asha_rungs(settings.grace_period, settings.reduction_factor, max_epochs) if options.early_stopping else ()
    return trials_table(experiment_dir, max_epochs, rungs)


def ranked_table(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` with the selection's ``rank`` (1 = selected) and ``tied`` columns, in trial-id order."""
    try:
        ranked = ranked_trials(table)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    ranks = pd.Series(range(1, len(ranked) + 1), index=ranked.index)
    return table.assign(rank=ranks, tied=ranked["tied"]).astype({"tied": "boolean"})


def finish_experiment(experiment_dir: str, *, export: bool = True) -> dict[str, Any]:
    """Write ``trials.csv``/``trials.parquet``, export the selected trial, write ``report.md``."""
    from cxr_tune.search.report import write_report

    info = experiment_info(experiment_dir)
    table = ranked_table(load_trials(experiment_dir))
    storage.write_csv(storage.join(experiment_dir, "trials.csv"), table)
    storage.write_frame(storage.join(experiment_dir, "trials.parquet"), table.astype({"error": str}))
    selected = table.sort_values("rank").iloc[0]
    exported = None
    if export:
        from cxr_tune.export import export_trial

        exported = export_trial(experiment_dir)
    report = write_report(experiment_dir, table, exported)
    _print_summary(info, table, selected, exported, experiment_dir, report)
    return {"table": table, "selected": selected, "exported": exported}


def _print_summary(info: dict, table: pd.DataFrame, selected: pd.Series, exported: dict | None, experiment_dir: str, report: str) -> None:
    from cxr_tune.export import fmt, summary

    counts = table["stop_reason"].value_counts().to_dict()
    tag = "  [SYNTHETIC DATA — not real patients]" if info["synthetic"] else ""
    prefix = deciding_prefix(table)
    print(f"\n=== Search finished: {len(table)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}){tag}")
    print(f"Selected trial {selected['trial_id']} (best epoch {int(selected['best_epoch'])} of {int(selected['epochs'])}; "
          f"{int(table['tied'].fillna(False).sum())} trial(s) tied with the best on {'the external set' if prefix == 'ext' else 'carved validation'}):")
    for name, set_prefix in (("carved validation", "val"), ("external validation (SELECTION SET)" if prefix == "ext" else "external validation", "ext")):
        if f"{set_prefix}_auc" in selected and pd.notna(selected[f"{set_prefix}_auc"]):
            print(f"  {name}: " + ", ".join(f"{m.replace('_', ' ')} {fmt(selected[f'{set_prefix}_{m}'])}"
                                              for m in ("auc", "sensitivity", "specificity", "balanced_accuracy", "threshold")))
    if exported:
        print(summary(exported, storage.join(experiment_dir, "best")))
    print(f"Trial table: {storage.join(experiment_dir, 'trials.csv')}")
    print(f"Report:      {report}")
    print(f"Optuna:      {dashboard_command(load_options(experiment_dir))}")


def dashboard_command(options: SearchOptions) -> str:
    """The command that opens the experiment's Optuna study (a local SQLite file, also for experiments on object storage)."""
    return f"optuna-dashboard sqlite:///{study_path(options)}   (pip install -e '.[dashboard]' once)"
