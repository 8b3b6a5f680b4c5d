"""After a search (or an interrupted one): trial table, selection, export, report, the selection recorded in the Optuna study, console summary."""

from __future__ import annotations

import sys
from typing import Any

import pandas as pd

from cxr_tune import storage
from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from cxr_tune.formatting import METRIC_NAMES, fmt
from cxr_tune.serving import META_FILE, read_meta


class NothingToSelect(UserError):
    """No trial has an epoch to rank yet (none trained one, or every one diverged): an interrupted search's resume may
    still train one, so its command says so and names the command that continues, rather than fail. ``untrained``: no
    trial trained an epoch (a stop that came first, not a failure)."""

    def __init__(self, message: str, *, untrained: bool = False) -> None:
        super().__init__(message)
        self.untrained = untrained


def finish_experiment(experiment_dir: str, *, export: bool = True, interrupted: bool | None = False) -> dict[str, Any]:
    """Write ``trials.csv``/``trials.parquet``, export the selected trial(s), write ``report.md``;
    ``interrupted``: the search stopped before its end (its best so far is exported, and the console and report say so);
    None: as the experiment's saved state says (``--report-only``, which runs nothing and so does not know).
    Returns the table, the selected row, the export and ``unfinished``: what the search has still to run, in words."""
    from cxr_tune.export import summary
    from cxr_tune.search.report import objective_words, write_report

    experiment = Experiment(experiment_dir)
    table = experiment.trials(ranked=False)
    if not table.empty and table["epochs"].fillna(0).eq(0).all():  # nothing to rank: the table (with each trial's error) is what there is
        _write_table(experiment, table)
        errors = table[table["error"].astype(str).str.strip() != ""]["error"]
        # "and its error" only where one failed: a search stopped before any trial trained one has none
        errors_too = f" and its error: {experiment.file('trials.csv')} (the first: {str(errors.iloc[0]).strip().splitlines()[-1]})" if len(errors) else ""
        raise NothingToSelect(f"no trial of {experiment.path} trained an epoch, so there is nothing to select or export; every trial"
                              + (errors_too or f": {experiment.file('trials.csv')}"), untrained=True)
    try:
        table = experiment.trials()
    except UserError as exc:  # every trial that reported diverged: nothing is ranked, the table (their stop reasons) is what there is
        _write_table(experiment, table)
        raise NothingToSelect(f"{experiment.path}: {exc}; every trial: {experiment.file('trials.csv')}") from None
    _write_table(experiment, table)
    left = unfinished(experiment) if interrupted is not False else ""
    if interrupted and not left:  # stopped, yet nothing is left to run: its last trial or final-fit run ended as the stop came
        left = "it was stopped before its end"
    selected = table.sort_values("rank").iloc[0]
    exported = export_best(experiment) if export else None
    report = write_report(experiment, table, exported, unfinished=_continue_words(experiment, left) if left else "")
    _annotate_study(experiment, str(selected["trial_id"]), objective_words(experiment))
    _print_summary(experiment, table, selected, bool(left))
    if exported:
        print(summary(exported, experiment.file("best")))
    print(f"Trial table: {experiment.file('trials.csv')}")
    print(f"Report:      {report}")
    print(f"Optuna:      {dashboard_command(experiment)}")
    return {"table": table, "selected": selected, "exported": exported, "unfinished": left}


def _annotate_study(experiment: Experiment, selected_trial: str, metric: str) -> None:
    """Record the selection in ``study.db`` after ``best/`` and the report are written: the annotation is for a reader of the
    study alone, so a study that cannot take it (read-only, written by another Optuna, its study name missing) is one note,
    not a traceback that leaves no model and no report."""
    import sqlite3

    from optuna.exceptions import OptunaError  # Optuna's storage wraps SQLAlchemy's errors in its StorageInternalError

    from cxr_tune.search.study import record_selection

    try:
        record_selection(experiment, selected_trial, metric)
    except (OSError, RuntimeError, ValueError, KeyError, OptunaError, sqlite3.Error) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"Note: study.db not annotated with the selected trial: {reason}", file=sys.stderr, flush=True)


def unfinished(experiment: Experiment, final_fit: bool | None = None) -> str:
    """What the search has still to run, in words ("" for one that ran to its end), as ``--resume`` will find it: trials
    that Tune's saved state has not ended (a time budget's trials that never trained an epoch are run again), then a
    final fit whose runs did not all end, unless ``final_fit`` is False (``--resume --no-final-fit``; None: as recorded)."""
    from cxr_tune.search.results import trial_counts

    counts = trial_counts(experiment.path)
    settings = experiment.space().settings
    asked = experiment.options.trials or settings.trials  # as the search planned it (runner.plan_search)
    if counts.unfinished or counts.ended < asked:
        return f"{counts.ended} of its {asked} trials ended" + (f", {counts.unfinished} unfinished" if counts.unfinished else "")
    if (experiment.options.final_fit if final_fit is None else final_fit) and settings.final_fit_top > 0 and not experiment.final_fit_complete():
        runs = experiment.final_fit_runs()
        return f"its final fit did not finish ({len(experiment.final_fit_ends())} of {len(runs)} runs ended)" if runs else "its final fit has not run"
    return ""


def unwritten(experiment: Experiment, *, export: bool) -> list[str]:
    """The files a search writes once its runs end that are not there: a stop while it wrote them leaves a search with
    nothing to run and no report or model, which ``--resume`` then writes as ``--report-only`` does."""
    names = ["trials.csv", *(["best/model.json"] if export else []), "report.md"]  # model.json is the last file of best/
    return [name for name in names if not storage.exists(experiment.file(*name.split("/")))]


def _continue_words(experiment: Experiment, left: str) -> str:
    """The report's word on an unfinished search: what is left, and the command that continues it."""
    from cxr_tune.search.runner import resume_command

    return f"{left[0].upper()}{left[1:]}; what follows is its best so far. Continue it with `{resume_command(experiment.options)}`."


def export_best(experiment: Experiment) -> dict[str, Any]:
    """Export the experiment's model into ``best/``, with the flags ``best/`` was last exported with (``export EXP
    --calibrate platt``, say): rewriting a report, or finishing a resumed search, must not quietly undo an export a
    person chose. Flags that no longer apply (a ``--val-data`` folder that is gone) fall back to the search's own."""
    from cxr_tune.export import export_trial
    from cxr_tune.modelcard import export_flags

    recorded = recorded_export_options(experiment)
    if not recorded:
        return export_trial(experiment.path)
    flags = export_flags({"export_options": recorded}).strip()
    print(f"best/ is exported again with the flags it was last exported with: {flags}")
    try:
        return export_trial(experiment.path, **recorded)
    except UserError as exc:
        print(f"Note: {flags} no longer applies ({exc}); best/ is exported with the search's own settings")
        return export_trial(experiment.path)


def recorded_export_options(experiment: Experiment) -> dict[str, Any]:
    """The export flags ``best/model.json`` records that differ from a plain export ({} for none, or no ``best/``)."""
    path = experiment.file("best", META_FILE)
    if not storage.exists(path):
        return {}
    try:
        recorded = read_meta(path).get("export_options") or {}
    except UserError:  # not a model.json this project wrote: the export replaces it anyway
        return {}
    plain = {"ensemble": None, "val_data": None, "tta": 1, "calibrate": "none", "final_fit": False}
    return {key: recorded[key] for key in plain if key in recorded and recorded[key] != plain[key]}


def _write_table(experiment: Experiment, table: pd.DataFrame) -> None:
    """``trials.csv`` and ``trials.parquet``, in every column a finished search's table has (blank where nothing is known yet)."""
    from cxr_tune.search.results import written_columns

    table = table.reindex(columns=written_columns(table, external=bool(experiment.external)))
    storage.write_csv(experiment.file("trials.csv"), whole_numbers_as_written(table))
    storage.write_frame(experiment.file("trials.parquet"), table.astype({"error": str}))


def whole_numbers_as_written(table: pd.DataFrame) -> pd.DataFrame:
    """``table`` for a CSV that people read: a float column whose values are all whole numbers (a
    parameter with gaps, such as a third block's filters in a two-block net) as integers, blank where
    missing, rather than 8.0 and nan."""
    whole = [c for c in table.select_dtypes("float").columns if table[c].dropna().map(float.is_integer).all()]
    return table.astype({c: "Int64" for c in whole})


def _print_summary(experiment: Experiment, table: pd.DataFrame, selected: pd.Series, interrupted: bool = False) -> None:
    from cxr_tune.search.report import others_tied
    from cxr_tune.search.results import selected_metrics

    counts = table["stop_reason"].value_counts().to_dict()
    words = {key: name for name, key in METRIC_NAMES}  # "AUC 0.8775" as export's lines print it, not "auc"
    tag = "  [SYNTHETIC DATA - not real patients]" if experiment.synthetic else ""
    external_decides = experiment.deciding_set == "external"
    what = "Search interrupted (what follows is its best so far)" if interrupted else "Search finished"
    print(f"\n=== {what}: {len(table)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())}){tag}")
    ties = others_tied(table)
    print(f"Selected trial {selected['trial_id']} (best epoch {int(selected['best_epoch'])} of {int(selected['epochs'])}; "
          f"{ties} on {'the external set' if external_decides else 'carved validation'}"
          + ("" if ties.startswith("no ") else ", ties broken by AUC") + "; each set at a threshold chosen on it):")
    for name, set_prefix in (("carved validation", "val"), ("external validation (SELECTION SET)" if external_decides else "external validation (chose nothing)", "ext")):
        if f"{set_prefix}_auc" in selected and pd.notna(selected[f"{set_prefix}_auc"]):
            print(f"  {name}: " + ", ".join(f"{words.get(m, m)} {fmt(selected.get(f'{set_prefix}_{m}'))}"
                                              for m in selected_metrics(experiment.options.select)))


def dashboard_command(experiment: Experiment) -> str:
    """The command that opens the experiment's Optuna study (a local SQLite file, also for experiments on object storage),
    and where the dashboard is missing how to install it: by the extra's name, which works for an install from a wheel as
    for one from a checkout (``pip install -e '.[dashboard]'`` works only inside a checkout)."""
    from importlib.util import find_spec

    missing = find_spec("optuna_dashboard") is None
    return f"optuna-dashboard sqlite:///{experiment.study_path}" + ("   (pip install 'cxr_tune[dashboard]' once)" if missing else "")
