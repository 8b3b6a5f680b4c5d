"""The trial table of an experiment (finished or interrupted); read through :class:`cxr_tune.experiment.Experiment`.

One row per trial: its sampled parameters, the metrics of its best epoch (by
:func:`cxr_tune.selection.best_epoch`) on carved validation (``val_``) and, when there is one, on
the external set (``ext_``), how many epochs it ran, whether ASHA stopped it, how long it ran,
where its best checkpoint is and, for a trial that failed, why. Which trial wins is
:mod:`cxr_tune.selection`'s business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from cxr_tune import storage
from cxr_tune.console import unreported_trials_unwarned
from cxr_tune.errors import UserError, damaged
from cxr_tune.selection import diverged
from cxr_tune.train.precision import epochs_trained_in

SET_METRICS = [
    "objective", "objective_low", "objective_high", "auc", "sensitivity", "specificity", "balanced_accuracy", "youden",
    "gmean", "min_sens_spec", "threshold", "loss", "brier", "accuracy", "sensitivity_at_0.5", "specificity_at_0.5",
    "non_finite",  # images scored NaN at the best epoch: above 0 only for a trial that diverged at every epoch
]
METRICS = [
    "objective", "objective_low", "objective_high",
    *(f"{prefix}_{m}" for prefix in ("ext", "val") for m in SET_METRICS),
    "train_loss", "train_images_per_s", "precision", "channels_last", "worker_nodes", "worker_images",
]
#: The stop reason of a trial Tune had not seen end (a resume continues it).
UNFINISHED = "unfinished"
FAILED = "error"  # the stop reason of a trial Tune ended with an error (its error column says which)
ID_COLUMNS = ["trial_id", "status", "stop_reason", "epochs", "best_epoch", "run_seconds"]
#: After the metrics: the best checkpoint, a failed trial's error, when it started, then the selection's rank and tie
#: (:func:`cxr_tune.experiment.ranked_table` adds those two).
TAIL_COLUMNS = ["checkpoint_path", "error", "started", "rank", "tied"]
TRAIN_DIR = "train"  # in an experiment folder: one Ray Train run (its checkpoints) per trial, see train_run


def selected_metrics(criterion: str) -> tuple[str, ...]:
    """The metrics the report's selected-trial table and the console give on each set: the rates, balanced accuracy, and the
    criterion that chose the trial where it is another (``--select youden``), then the threshold.

    >>> selected_metrics("youden")
    ('auc', 'sensitivity', 'specificity', 'balanced_accuracy', 'youden', 'threshold')
    """
    return ("auc", "sensitivity", "specificity", "balanced_accuracy", *([criterion] if criterion != "balanced_accuracy" else []), "threshold")


def trial_histories(experiment_dir: str) -> tuple[list[Any], dict[str, pd.DataFrame]]:
    """Tune's trials and each trial's per-epoch results (from its ``result.json``), completed from
    its newest checkpoint where Tune missed an epoch (see :func:`with_checkpointed_epochs`)."""
    from ray.tune import ExperimentAnalysis

    try:
        with unreported_trials_unwarned():
            analysis = ExperimentAnalysis(experiment_dir)
    except ValueError as exc:
        states = storage.glob(experiment_dir, "experiment_state-*.json")
        if states:  # Tune reads the newest; one cut short is a JSONDecodeError. Each run rewrites its own in place (no older copy of it)
            cut = damaged(states[-1], exc, what="Tune's state file")
            raise UserError(f"{cut}; without it Tune cannot list the trials, so neither "
                            "--resume, --report-only nor export can use this experiment: copy it again if it is a copy, else start "
                            "the search again under another --name (the image cache is reused)") from None
        tables = [table for table in (storage.join(experiment_dir, name) for name in ("trials.csv", "trials.parquet")) if storage.exists(table)]
        if tables:  # its table is here, Tune's files and checkpoints are not
            readers = " and ".join(f"'{table}' (pandas.read_{storage.name(table).rpartition('.')[2]})" for table in tables)
            raise UserError(f"'{experiment_dir}' is a copy of a finished experiment without Tune's state and its checkpoints (as the "
                            f"committed results/real/* folders are: report, tables and study only); its trial table is in {readers}; "
                            "for checkpoints and Tune's own records use the folder the search wrote") from None
        raise UserError(f"'{experiment_dir}' holds no Tune experiment state yet (did the search start?)") from None
    histories = analysis.trial_dataframes
    events = _event_records(experiment_dir)
    stopped = {trial: record["epochs"] for trial, record in events.items() if record["event"] == "ASHA stopped"}
    for trial in analysis.trials:
        reported = one_row_per_epoch(histories.get(trial.trial_id, pd.DataFrame()))
        # Stopped by the search's end (Ctrl-C, a budget): its worker may have trained and checkpointed epochs Tune no longer heard of.
        stopped_mid_run = trial.status in ("PENDING", "RUNNING", "PAUSED") or events.get(trial.trial_id, {}).get("event") == "cut short"
        histories[trial.trial_id] = with_checkpointed_epochs(reported, train_run(experiment_dir, trial.trial_id), until=stopped.get(trial.trial_id),
                                                             after_last=stopped_mid_run)
    return analysis.trials, histories


@dataclass(frozen=True)
class TrialCounts:
    """Where an experiment's trials stand, as Tune saved them (what ``--resume`` will act on)."""

    ended: int  # trained at least one epoch, or failed: they count towards the search's trials
    never_trained: int  # ended by the search's end (time budget) before their first epoch: a resume replaces them
    unfinished: int  # pending, running or paused when the search stopped: a resume continues them
    trained_ids: frozenset[str] = frozenset()  # the trials that trained, an epoch only a checkpoint holds included
    best: tuple[float, str] | None = None  # the best objective any epoch reached so far, and its trial
    precisions: tuple[str, ...] = ()  # what each unfinished trial (a resume continues it) trained its last epoch in, each once


def trial_counts(experiment_dir: str) -> TrialCounts:
    """Counted from Tune's saved state, not from the trials ``Tuner.fit`` returns: after Ctrl-C
    Tune marks the trials it was starting or running TERMINATED in memory, yet saved them as
    they were, and a resume continues them."""
    trials, histories = trial_histories(experiment_dir)
    ended = never = unfinished = 0
    trained_ids: set[str] = set()
    best: tuple[float, str] | None = None
    precisions: dict[str, None] = {}
    for trial in trials:
        epochs = reported_epochs(histories.get(trial.trial_id, pd.DataFrame()))
        trained = not epochs.empty
        if trained:
            trained_ids.add(trial.trial_id)
            top = float(epochs.loc[~diverged(epochs), "objective"].max())  # the console's "new best" never counts a diverged epoch
            if not math.isnan(top) and (best is None or top > best[0]):
                best = (top, trial.trial_id)
        if trial.status == "ERROR" or (trial.status == "TERMINATED" and trained):
            ended += 1
        elif trial.status == "TERMINATED":
            never += 1
        else:
            unfinished += 1
            if trained and "precision" in epochs:  # it goes on from its last epoch: in that epoch's precision, or another here
                precisions.update(dict.fromkeys(epochs["precision"].dropna().astype(str).tail(1)))
    return TrialCounts(ended, never, unfinished, frozenset(trained_ids), best, tuple(precisions))


def reported_epochs(history: pd.DataFrame) -> pd.DataFrame:
    """The epochs of a trial's history that carry an objective (none: the trial never trained)."""
    return history.dropna(subset=["objective"]) if "objective" in history else history.iloc[0:0]


def one_row_per_epoch(history: pd.DataFrame) -> pd.DataFrame:
    """``history`` with each epoch once. A trial a kill left running in Tune's state reports its last epoch again on
    ``--resume`` (:func:`cxr_tune.search.trial.report_again_if_ended`), and Tune may have written that epoch's own report
    before the kill: its ``result.json`` then holds the epoch twice, which plots, learning curves and the report's time
    split would count twice. Of an epoch's rows the last the trial's run reported itself is kept (it carries Tune's
    timing; of two, an epoch trained again from an older checkpoint, the later, which its checkpoints hold), else the last."""
    if "epoch" not in history or not history["epoch"].dropna().duplicated().any():
        return history
    recovered = history["recovered_from_checkpoint"].eq(True) if "recovered_from_checkpoint" in history else pd.Series(False, index=history.index)
    keep = [(rows[~recovered[rows.index]] if (~recovered[rows.index]).any() else rows).index[-1]
            for _, rows in history[history["epoch"].notna()].groupby("epoch", sort=False)]
    return history[history["epoch"].isna() | history.index.isin(keep)].reset_index(drop=True)


def with_checkpointed_epochs(reported: pd.DataFrame, run: str, *, until: int | None = None, after_last: bool = False) -> pd.DataFrame:
    """``reported`` plus the epochs it lacks that the run's newest checkpoint recorded (up to epoch ``until``).

    A node lost just after Ray Train registered an epoch's checkpoint, before that epoch's report
    reached Tune, leaves a gap: the restarted trial resumes after the checkpointed epoch and never
    reports it again. Each checkpoint's state holds the run's metric history, so nothing is lost;
    recovered rows carry ``recovered_from_checkpoint``, and the ``checkpoint_path`` of the checkpoint
    that saved their epoch while Train keeps it. A trial with no gap costs no reading.
    ``until``: the epoch at which ASHA stopped the trial; a worker may train one more before the
    stop reaches it, an epoch that ASHA and the selection never saw (a resumed trial's history,
    whose earlier epochs Tune does not report again, would otherwise pick it up). A history that stops short of it is
    completed up to it: Tune's can end at an earlier epoch (external-v5's f9264f9d read 3 epochs where ASHA stopped it at 6).
    ``after_last``: the search's end stopped the trial mid-run (Ctrl-C, a time budget), so epochs after its last report
    count too: its worker can finish an epoch, checkpoint it and let Train drop the best one before (the trial's table
    row then named epoch 2 while the export, reading the one checkpoint left, shipped epoch 3).
    """
    epochs = set(reported["epoch"].dropna().astype(int)) if "epoch" in reported else set()
    if epochs and epochs == set(range(1, max(epochs) + 1)) and not after_last and (until is None or until <= max(epochs)):
        return reported
    from cxr_tune.train.checkpoints import saved_states

    states = saved_states(run)
    newest = max(states, key=lambda pair: pair[1]["epoch"])[1]["history"] if states else []
    missing = [row for row in newest if int(row["epoch"]) not in epochs and (until is None or int(row["epoch"]) <= until)]
    if not missing:
        return reported
    saved_at = {int(state["epoch"]) + 1: folder for folder, state in states}
    recovered = pd.DataFrame(missing).assign(recovered_from_checkpoint=True)
    recovered["checkpoint_path"] = [saved_at.get(int(row["epoch"])) for row in missing]
    merged = pd.concat([reported, recovered], ignore_index=True) if not reported.empty else recovered
    return merged.sort_values("epoch", kind="stable").reset_index(drop=True)


def train_run(experiment_dir: str, trial_id: str) -> str:
    """Where a trial's Ray Train run (its checkpoints) lives."""
    return storage.join(experiment_dir, TRAIN_DIR, str(trial_id))


def newest_checkpoint_history(run: str) -> list[dict[str, Any]]:
    """The metric history in the run's checkpoint of the latest epoch (empty without one)."""
    from cxr_tune.train.checkpoints import newest

    found = newest(run)
    return found[1]["history"] if found else []


def trials_table(experiment_dir: str, max_epochs: int, rungs: tuple[int, ...], deciding: str) -> pd.DataFrame:
    """The table written to ``trials.csv`` / ``trials.parquet``; sorted by trial id. Each trial's
    row is its best epoch on the ``deciding`` set (``external`` or ``carved``).

    ``rungs`` (the epochs at which ASHA may stop a trial) tell an ASHA stop from a trial the
    search's end cut short when the experiment has no ``trial_events.jsonl``.
    """
    from cxr_tune.selection import best_epoch

    trials, histories = trial_histories(experiment_dir)
    events = _events(experiment_dir)
    rows = []
    params: list[str] = []
    for trial in trials:
        for key in trial.config:
            if key not in params:
                params.append(key)
        history = reported_epochs(histories.get(trial.trial_id, pd.DataFrame()))
        row: dict[str, Any] = {"trial_id": trial.trial_id, "status": trial.status, **trial.config}
        if history.empty:
            row.update({"epochs": 0, "best_epoch": math.nan, "run_seconds": math.nan, "checkpoint_path": None})
        else:
            best = best_epoch(history, deciding)
            # Ray's path where the search ran (without the store's scheme); a copied or moved folder names its own copy
            checkpoint = best.get("checkpoint_path")
            if isinstance(checkpoint, str) and checkpoint:
                checkpoint = storage.join(train_run(experiment_dir, trial.trial_id), storage.name(checkpoint.rstrip("/")))
            row.update({
                "epochs": int(history["epoch"].max()),
                "best_epoch": int(best["epoch"]),
                "run_seconds": float(history["time_total_s"].max()) if "time_total_s" in history else math.nan,
                "checkpoint_path": checkpoint,
                **{m: best[m] for m in METRICS if m in best},
                # what the best epoch's weights trained in, every precision of a trial resumed elsewhere (not the best epoch's alone)
                **epochs_trained_in(history.to_dict("records"), int(best["epoch"])),
            })
        row["error"] = trial_error(experiment_dir, trial) if trial.status == "ERROR" else ""
        diverged = not history.empty and bool(history["diverged"].fillna(False).astype(bool).any()) if "diverged" in history else False
        # With an event log every ASHA stop is in it: the rungs guess only for an experiment without one (on object storage, from before it had one).
        guess = () if events else rungs
        row["stop_reason"] = "diverged" if diverged else _stop_reason(trial.status, row["epochs"], max_epochs, events.get(trial.trial_id), guess)
        row["started"] = trial.run_metadata.start_time if getattr(trial, "run_metadata", None) else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ordered = ID_COLUMNS + params + [m for m in METRICS if m in table] + ["checkpoint_path", "error"]
    table = table.reindex(columns=[c for c in ordered if c in table] + [c for c in table if c not in ordered])
    return table.sort_values("trial_id").reset_index(drop=True)


def param_columns(table: pd.DataFrame) -> list[str]:
    """The sampled parameters: the trial table places them between its id columns and its metrics."""
    known = {*ID_COLUMNS, *METRICS, *TAIL_COLUMNS}
    return [c for c in table.columns if c not in known]


def written_columns(table: pd.DataFrame, *, external: bool) -> list[str]:
    """Every column ``trials.csv`` of this experiment has, in order, whatever its trials reported: a search stopped before
    any trial trained an epoch, or whose every trial failed, writes the same columns as one that selected a trial, blank
    where nothing is known (it wrote 19 where a finished one has 47). ``external``: the experiment has an external set."""
    return [*ID_COLUMNS, *param_columns(table), *(m for m in METRICS if external or not m.startswith("ext_")), *TAIL_COLUMNS]


def pareto_front(sensitivity: np.ndarray, specificity: np.ndarray) -> np.ndarray:
    """Boolean mask of points no other point beats on both sensitivity and specificity."""
    points = np.column_stack([sensitivity, specificity])
    mask = np.ones(len(points), dtype=bool)
    for i, point in enumerate(points):
        dominated = np.all(points >= point, axis=1) & np.any(points > point, axis=1)
        mask[i] = not dominated.any()
    return mask


def checkpoint_for(row: pd.Series, experiment_dir: str) -> str:
    """The trial's checkpoint from its best epoch, in this experiment folder; its newest checkpoint if that one is gone.

    Tune records the checkpoint's absolute path where the search ran: a copied or moved folder must read its own
    copy of it (by its name under the trial's run), never the original's."""
    from cxr_tune.train.checkpoints import STATE, load_state, saved_checkpoints

    run = train_run(experiment_dir, row["trial_id"])
    path = row.get("checkpoint_path")
    if isinstance(path, str) and path:
        folder = storage.resolve(experiment_dir).rstrip("/") + "/"
        here = path if storage.resolve(path).startswith(folder) else storage.join(run, storage.name(path.rstrip("/")))
        if storage.exists(storage.join(here, STATE)):
            return here
    found = saved_checkpoints(run)
    if not found:
        raise UserError(f"trial {row['trial_id']} has no checkpoint under {run}")
    wanted = row.get("best_epoch")
    if isinstance(wanted, (int, float, np.integer, np.floating)) and not math.isnan(wanted):
        for folder in found:
            if load_state(folder)["epoch"] + 1 == int(wanted):  # the state counts epochs from 0
                return folder
    return found[-1]


def _stop_reason(status: str, epochs: int, max_epochs: int, event: str | None, rungs: tuple[int, ...]) -> str:
    if status == "ERROR":
        return FAILED
    if status != "TERMINATED":
        return UNFINISHED  # Tune saves a trial that was running as PENDING: its status says no more; --resume continues it
    if epochs >= max_epochs:
        return "completed"
    if event == "ASHA stopped" or (event is None and epochs in rungs):
        return "ASHA stopped"  # with no event log (an experiment on object storage from before it had one) the rung rule guesses
    return "cut short by the end of the search" if epochs else "never trained (the search ended first)"


def cut_short_trials(experiment_dir: str) -> set[str]:
    """The trials whose last recorded end is the search's end cutting them short (a budget's stop)."""
    return {trial for trial, event in _events(experiment_dir).items() if event == "cut short"}


def _events(experiment_dir: str) -> dict[str, str]:
    """The last recorded end of each trial (its event), from ``trial_events.jsonl``."""
    return {trial: record["event"] for trial, record in _event_records(experiment_dir).items()}


def _event_records(experiment_dir: str) -> dict[str, dict[str, Any]]:
    """The last record of each trial's end (``event``, ``epochs``) in ``trial_events.jsonl`` (empty if there is none).

    A line cut short by a kill mid-write is skipped: that trial's end is then taken as the search's.
    """
    import json

    path = storage.join(experiment_dir, "trial_events.jsonl")
    if not storage.exists(path):
        return {}
    out = {}
    for line in storage.read_text(path).splitlines():
        try:
            record = json.loads(line)
            out[record["trial_id"]] = {"event": record["event"], "epochs": int(record.get("epochs", 0)) or None}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return out


def asha_stopped_at(experiment_dir: str, trial_id: str) -> int | None:
    """The epoch after which ASHA stopped the trial, as ``trial_events.jsonl`` recorded it (None: it did not, or no record)."""
    record = _event_records(experiment_dir).get(trial_id)
    return record["epochs"] if record and record["event"] == "ASHA stopped" else None


def asha_rungs(grace_period: int, reduction_factor: int, max_epochs: int) -> tuple[int, ...]:
    """Epochs at which ASHA compares trials: grace * rf^k below max_epochs."""
    rungs, epoch = [], grace_period
    while epoch < max_epochs:
        rungs.append(epoch)
        epoch *= reduction_factor
    return tuple(rungs)


ERROR_FILE = "error.txt"  # Tune's name for it (ray.air.constants.EXPR_ERROR_FILE), in the trial's folder: the search names that after the trial's id


def trial_error_file(experiment_dir: str, trial: Any) -> str | None:
    """Where the trial's full traceback is: the ``error.txt`` Tune keeps in the trial's folder of the experiment (one
    entry per failed attempt), None when Tune gave the trial no folder."""
    folder = getattr(getattr(trial, "storage", None), "trial_dir_name", None)
    return storage.join(experiment_dir, folder, ERROR_FILE) if folder else None


def trial_error(experiment_dir: str | None, trial: Any) -> str:
    """The last meaningful line of the trial's error (the worker's exception, not Ray's wrapper).

    Read from the ``error.txt`` Tune persisted in the trial's folder of the experiment: the table is
    written after Ray has shut down, when Tune's ``Trial.local_path`` (a staging folder inside the
    Ray session) can no longer even be asked for. While the search runs (the console's FAILED line),
    the file may not have reached the experiment yet: Tune's staging copy, written first, is read then.
    """
    path = trial_error_file(experiment_dir, trial) if experiment_dir else None
    if path and storage.exists(path):
        text = storage.read_bytes(path).decode(errors="replace")
    else:
        try:
            staged = trial.error_file  # raises once Ray has shut down (see above)
        except Exception:  # noqa: BLE001 - any failure to ask means there is no staging copy to read
            staged = None
        text = storage.read_bytes(staged).decode(errors="replace") if staged and storage.exists(staged) else str(getattr(trial, "error_msg", "") or "")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith((" ", "File ", "Traceback", "^"))]
    candidates = [ln for ln in lines if "Error" in ln or "Exception" in ln] or lines
    return candidates[-1][:300] if candidates else "failed (no error text recorded)"
