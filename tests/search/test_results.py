"""The Pareto front of trials, each trial's per-epoch history and its error, and what a folder without
Tune's state says (selection itself is tested in tests/test_selection.py)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from cxr_tune.search.results import pareto_front, trial_error, with_checkpointed_epochs
from cxr_tune.train.checkpoints import save_state
from tests.conftest import ROOT, call_cli


def test_pareto_front_keeps_only_undominated_points():
    sensitivity = np.array([0.99, 0.95, 0.90, 0.94])
    specificity = np.array([0.80, 0.90, 0.95, 0.85])
    assert pareto_front(sensitivity, specificity).tolist() == [True, True, True, False]


def _checkpoint(folder: Path, history: list[dict]) -> None:
    folder.mkdir(parents=True)
    save_state(str(folder), {"epoch": int(history[-1]["epoch"]) - 1, "history": history}, {})


def test_an_epoch_tune_never_received_is_taken_from_the_newest_checkpoint(tmp_path):
    # A node lost after Train registered epoch 2's checkpoint, before its report reached Tune:
    # the restarted trial resumed at epoch 3.
    history = [{"epoch": e, "objective": 0.5 + e / 10, "worker_nodes": f"n{e},m{e}"} for e in (1, 2, 3, 4)]
    _checkpoint(tmp_path / "checkpoint_a", history[:2])  # the best-epoch copy Train kept
    _checkpoint(tmp_path / "checkpoint_b", history)  # the latest
    reported = pd.DataFrame([{**row, "checkpoint_path": f"c{row['epoch']}"} for row in history if row["epoch"] != 2])

    merged = with_checkpointed_epochs(reported, str(tmp_path))

    assert merged["epoch"].tolist() == [1, 2, 3, 4]
    assert merged.loc[1, "objective"] == history[1]["objective"] and merged.loc[1, "worker_nodes"] == "n2,m2"
    assert merged["recovered_from_checkpoint"].fillna(False).tolist() == [False, True, False, False]
    assert merged.loc[0, "checkpoint_path"] == "c1"


def test_a_recovered_epoch_names_the_checkpoint_that_holds_it_and_none_once_train_dropped_it(tmp_path):
    """Before: a trial whose only epoch reached Tune from its checkpoint alone (a time budget ended it between the two)
    had an empty checkpoint_path in trials.csv, though it had trained and its checkpoint was there."""
    history = [{"epoch": e, "objective": 0.5 + e / 10} for e in (1, 2, 3)]
    _checkpoint(tmp_path / "run" / "checkpoint_a", history[:2])  # epoch 2's, kept as the best; epoch 1's was dropped
    _checkpoint(tmp_path / "run" / "checkpoint_b", history)  # the latest
    merged = with_checkpointed_epochs(pd.DataFrame(), str(tmp_path / "run"))
    assert merged["epoch"].tolist() == [1, 2, 3]
    assert merged["checkpoint_path"].tolist()[1:] == [str(tmp_path / "run" / "checkpoint_a"), str(tmp_path / "run" / "checkpoint_b")]
    assert not isinstance(merged.loc[0, "checkpoint_path"], str)


def test_an_epoch_trained_after_asha_stopped_the_trial_is_not_taken_from_its_checkpoint(tmp_path):
    # A resumed trial: Tune reports only its epochs since the resume (2); ASHA stopped it there, and its
    # worker trained epoch 3 before the stop reached it. Epoch 1 is recovered, epoch 3 is not.
    history = [{"epoch": e, "objective": 0.5 + e / 10} for e in (1, 2, 3)]
    _checkpoint(tmp_path / "checkpoint_a", history)
    reported = pd.DataFrame([history[1]])
    assert with_checkpointed_epochs(reported, str(tmp_path), until=2)["epoch"].tolist() == [1, 2]
    assert with_checkpointed_epochs(reported, str(tmp_path))["epoch"].tolist() == [1, 2, 3]


def test_epochs_up_to_where_asha_stopped_the_trial_are_taken_from_its_checkpoint_when_tune_reported_fewer(tmp_path):
    """Before: external-v5's f9264f9d, stopped by ASHA at its 6-epoch rung (the event log and study.db: 6 epochs, best 0.912),
    read as "ASHA stopped, epochs 3, best epoch 2, 0.906" in trials.csv: Tune's history held a contiguous 1..3 and was kept as it was."""
    history = [{"epoch": e, "objective": 0.5 + e / 20} for e in range(1, 8)]  # epoch 7: trained before the stop reached the worker
    _checkpoint(tmp_path / "checkpoint_a", history)
    reported = pd.DataFrame(history[:3])
    merged = with_checkpointed_epochs(reported, str(tmp_path), until=6)
    assert merged["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert merged["recovered_from_checkpoint"].fillna(False).tolist() == [False] * 3 + [True] * 3


def test_a_history_without_gaps_is_returned_as_reported_without_reading_checkpoints(tmp_path):
    reported = pd.DataFrame({"epoch": [1, 2, 3], "objective": [0.6, 0.7, 0.8]})
    (tmp_path / "checkpoint_x").mkdir()
    (tmp_path / "checkpoint_x" / "state.pt").write_bytes(b"not a checkpoint")  # would fail if read
    assert with_checkpointed_epochs(reported, str(tmp_path)) is reported


def test_a_trial_that_reported_nothing_gets_its_checkpointed_epochs_and_one_without_any_stays_empty(tmp_path):
    _checkpoint(tmp_path / "run" / "checkpoint_a", [{"epoch": 1, "objective": 0.7}])
    assert with_checkpointed_epochs(pd.DataFrame(), str(tmp_path / "run"))["epoch"].tolist() == [1]
    assert with_checkpointed_epochs(pd.DataFrame(), str(tmp_path / "none")).empty


class _TrialAfterRayShutDown:
    """What the trial table reads of Tune's ``Trial`` once the search's Ray has shut down: its
    folder's name answers; ``local_path`` (a staging folder inside the Ray session) raises, as Tune's does."""

    status = "ERROR"
    error_msg = "RayTaskError: wrapped"

    def __init__(self, folder: str) -> None:
        self.storage = type("Storage", (), {"trial_dir_name": folder})()

    @property
    def local_path(self) -> str:
        raise AssertionError("Ray must be initialized to get the session dir.")


def test_a_failed_trials_error_is_the_last_exception_line_of_its_error_file_read_without_ray(tmp_path):
    (tmp_path / "c6d5a24d").mkdir()
    (tmp_path / "c6d5a24d" / "error.txt").write_text(
        "Failure # 1 (occurred at 2026-12-03_01-04-42)\nray.exceptions.RayTaskError(TrainingFailedError): ray::run_trial()\n"
        "Traceback (most recent call last):\n  File \"loop.py\", line 9, in step\n    x = model(x)\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    assert trial_error(str(tmp_path), _TrialAfterRayShutDown("c6d5a24d")) == "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    # No error file (never persisted): Tune's own message, still without asking Ray.
    assert trial_error(str(tmp_path), _TrialAfterRayShutDown("gone")) == "RayTaskError: wrapped"


def test_the_trial_table_of_a_committed_experiment_is_refused_naming_the_tables_that_are_there(tmp_path):
    """Experiment(folder).trials() said "use the folder the search wrote" beside trials.csv and trials.parquet, which
    hold the table it asked for."""
    copy = tmp_path / "copied"
    shutil.copytree(ROOT / "results" / "real" / "external", copy, ignore=shutil.ignore_patterns("trials.parquet", "plots"))
    with pytest.raises(UserError, match=rf"its trial table is in '{copy / 'trials.csv'}' \(pandas\.read_csv\); for checkpoints"):
        Experiment(str(copy)).trials()


def test_a_committed_experiment_without_tunes_state_says_what_it_is_in_one_line(tmp_path):
    committed = ROOT / "results" / "real" / "external"  # report, tables and study: no Tune state, no checkpoints
    done = call_cli("cxr_tune.export", str(committed), "--out", str(tmp_path / "best"))
    assert done.returncode == 2 and done.stderr.startswith(f"error: '{committed}' is a copy of a finished experiment without Tune's state"), done.stderr
    assert not (tmp_path / "best").exists()


def test_the_trial_csv_writes_whole_numbers_as_integers_and_gaps_blank():
    from cxr_tune.search.finish import whole_numbers_as_written

    table = pd.DataFrame({"trial_id": ["a", "b"], "filters_2": [8.0, np.nan], "lr": [0.001, 0.01], "best_epoch": [3.0, np.nan]})
    text = whole_numbers_as_written(table).to_csv(index=False)
    assert text.splitlines() == ["trial_id,filters_2,lr,best_epoch", "a,8,0.001,3", "b,,0.01,"]
    assert pd.read_csv(io.StringIO(text))["filters_2"].tolist()[0] == 8  # read back as before


def test_tunes_state_file_cut_short_is_named_not_taken_for_a_committed_copy(tmp_path):
    copy = shutil.copytree(ROOT / "results" / "real" / "external", tmp_path / "external")
    state = copy / "experiment_state-2026-01-01_00-00-00.json"
    state.write_text('{"trial_data": [["{\\"trial_id')  # a search killed while Tune wrote it
    done = call_cli("cxr_tune.export", str(copy), "--out", str(tmp_path / "best"))
    assert done.returncode == 2 and done.stderr.startswith(f"error: Tune's state file '{state}' could not be read ("), done.stderr
    assert "damaged or half-written" in done.stderr and "a copy of a finished experiment" not in done.stderr
    # What is left to do (a disk that filled as Tune wrote the file, as a reviewer's did, leaves no other copy of it)
    assert done.stderr.strip().endswith("; without it Tune cannot list the trials, so neither --resume, --report-only nor export can "
                                        "use this experiment: copy it again if it is a copy, else start the search again under another "
                                        "--name (the image cache is reused)"), done.stderr


def test_with_an_event_log_a_trial_without_an_event_was_cut_short_not_guessed_asha_stopped_from_the_rungs(tmp_path, monkeypatch):
    """The budget ended trial 'cut' after its checkpoint of epoch 2 (a rung) and before Tune got a report, so no event was
    logged for it; the rung guess is kept for an experiment without a log (one on object storage)."""
    from types import SimpleNamespace

    from cxr_tune.search import results

    def history(epochs: int) -> pd.DataFrame:
        return pd.DataFrame([{"epoch": e, "objective": 0.6, "val_objective": 0.6, "val_auc": 0.7, "val_loss": 0.5} for e in range(1, epochs + 1)])

    trials = [SimpleNamespace(trial_id=t, status="TERMINATED", config={}) for t in ("asha", "cut")]
    monkeypatch.setattr(results, "trial_histories", lambda _: (trials, {"asha": history(2), "cut": history(2)}))

    def reasons() -> dict[str, str]:
        table = results.trials_table(str(tmp_path), max_epochs=300, rungs=(1, 2, 4), deciding="carved")
        return dict(zip(table["trial_id"], table["stop_reason"]))

    assert reasons() == {"asha": "ASHA stopped", "cut": "ASHA stopped"}  # no log: the rungs guess, for both
    (tmp_path / "trial_events.jsonl").write_text('{"trial_id": "asha", "event": "ASHA stopped", "epochs": 2, "time": 0}\n')
    assert reasons() == {"asha": "ASHA stopped", "cut": "cut short by the end of the search"}


def test_the_trial_table_records_a_checkpoint_on_object_storage_by_its_full_uri(s3_dir, monkeypatch):
    """Ray gives a checkpoint's path inside its filesystem: before, trials.csv read ``bucket/runs/exp/train/...``, a local relative path."""
    from types import SimpleNamespace

    from cxr_tune.search import results

    inner = s3_dir.split("://", 1)[1] + "/train/t1/checkpoint_000001"
    history = pd.DataFrame([{"epoch": 1, "objective": 0.6, "val_objective": 0.6, "val_auc": 0.7, "val_loss": 0.5, "checkpoint_path": inner}])
    monkeypatch.setattr(results, "trial_histories", lambda _: ([SimpleNamespace(trial_id="t1", status="TERMINATED", config={})], {"t1": history}))
    table = results.trials_table(s3_dir, max_epochs=1, rungs=(), deciding="carved")
    assert table["checkpoint_path"].tolist() == [f"{s3_dir}/train/t1/checkpoint_000001"]


def test_on_object_storage_the_event_log_is_written_there_and_tells_a_budget_cut_from_an_asha_stop(s3_dir, monkeypatch):
    """An experiment on s3 had no trial_events.jsonl: a trial the time budget cut short at a rung epoch was guessed
    'ASHA stopped' from the rungs (even a search's only trial, which ASHA has nothing to compare with)."""
    from types import SimpleNamespace

    from cxr_tune import storage
    from cxr_tune.experiment import EVENTS_FILE
    from cxr_tune.search import results
    from cxr_tune.search.budget import SessionBudget
    from cxr_tune.search.progress import TrialEventLog

    trials = [SimpleNamespace(trial_id=t, status="TERMINATED", config={}, last_result={"epoch": 2}) for t in ("asha", "cut")]
    log = TrialEventLog(storage.join(s3_dir, EVENTS_FILE), max_epochs=300)  # where the search puts it
    log.on_trial_complete(0, trials, trials[0])  # ASHA stopped it at its rung
    monkeypatch.setattr(SessionBudget, "ended", "time budget")
    log.on_experiment_end(trials=trials)  # the budget ended the search around the other, at the same epoch
    history = pd.DataFrame([{"epoch": e, "objective": 0.6, "val_objective": 0.6, "val_auc": 0.7, "val_loss": 0.5} for e in (1, 2)])
    monkeypatch.setattr(results, "trial_histories", lambda _: (trials, {t.trial_id: history for t in trials}))
    table = results.trials_table(s3_dir, max_epochs=300, rungs=(1, 2, 4), deciding="carved")
    assert dict(zip(table["trial_id"], table["stop_reason"])) == {"asha": "ASHA stopped", "cut": "cut short by the end of the search"}


def test_an_epoch_a_resumed_trial_reported_again_is_read_once_with_its_own_timing(tmp_path, monkeypatch):
    """A trial a kill left running in Tune's state reports its last epoch again on --resume, after Tune had written that
    epoch's own report: its result.json held epoch 2 twice, and the report's progress plot, learning curves and time split
    counted it twice."""
    from types import SimpleNamespace

    import ray.tune

    from cxr_tune.search.results import trial_histories

    reported = pd.DataFrame([{"epoch": 1, "objective": 0.6, "time_this_iter_s": 9.0},
                             {"epoch": 2, "objective": 0.7, "time_this_iter_s": 4.0},
                             {"epoch": 2, "objective": 0.7, "time_this_iter_s": np.nan, "recovered_from_checkpoint": True}])
    retrained = pd.DataFrame({"epoch": [1, 2, 2], "objective": [0.6, 0.5, 0.8], "time_this_iter_s": [9.0, 4.0, 5.0]})  # from an older checkpoint
    analysis = SimpleNamespace(trials=[SimpleNamespace(trial_id=t, status="TERMINATED") for t in ("again", "retrained")],
                               trial_dataframes={"again": reported, "retrained": retrained})
    monkeypatch.setattr(ray.tune, "ExperimentAnalysis", lambda path: analysis)
    _, histories = trial_histories(str(tmp_path))
    assert histories["again"]["epoch"].tolist() == [1, 2] and histories["again"]["time_this_iter_s"].tolist() == [9.0, 4.0]
    assert histories["retrained"]["epoch"].tolist() == [1, 2] and histories["retrained"]["objective"].tolist() == [0.6, 0.8]


def test_the_trial_table_names_every_precision_a_trial_s_best_epoch_trained_in(tmp_path, monkeypatch):
    """A trial resumed where --precision auto means fp32 after bf16 epochs: trials.csv named its best epoch's own fp32 for
    weights that trained in bf16 first."""
    from types import SimpleNamespace

    from cxr_tune.search import results

    history = pd.DataFrame([{"epoch": e, "objective": o, "val_objective": o, "val_auc": 0.7, "val_loss": 0.5, "precision": p, "channels_last": True}
                            for e, o, p in ((1, 0.5, "bf16"), (2, 0.6, "bf16"), (3, 0.7, "fp32"), (4, 0.6, "fp32"))])
    alike = history.assign(precision="bf16")
    trials = [SimpleNamespace(trial_id=t, status="TERMINATED", config={}) for t in ("moved", "stayed")]
    monkeypatch.setattr(results, "trial_histories", lambda _: (trials, {"moved": history, "stayed": alike}))
    table = results.trials_table(str(tmp_path), max_epochs=4, rungs=(), deciding="carved")
    assert table["best_epoch"].tolist() == [3, 3]
    assert table["precision"].tolist() == ["bf16 (epochs 1-2), fp32 (epoch 3)", "bf16"] and table["channels_last"].tolist() == [True, True]


def test_a_trial_the_search_s_stop_interrupted_gets_the_epochs_its_worker_checkpointed_after_its_last_report(tmp_path, monkeypatch):
    """Before: after Ctrl-C the trial table and report named epoch 2 (its last report), while its worker had finished and
    checkpointed epoch 3 and Train had dropped epoch 2's checkpoint: the export shipped epoch 3 under epoch 2's numbers."""
    from types import SimpleNamespace

    import ray.tune

    from cxr_tune.search import results

    history = [{"epoch": e, "objective": 0.5 + e / 10} for e in (1, 2, 3)]
    for trial_id in ("stopped", "done"):
        _checkpoint(tmp_path / "train" / trial_id / "checkpoint_b", history)  # the one Train kept: the best and latest
    reported = pd.DataFrame(history[:2])
    trials = [SimpleNamespace(trial_id="stopped", status="PENDING"), SimpleNamespace(trial_id="done", status="TERMINATED")]
    analysis = SimpleNamespace(trials=trials, trial_dataframes={"stopped": reported, "done": reported})
    monkeypatch.setattr(ray.tune, "ExperimentAnalysis", lambda path: analysis)
    _, histories = results.trial_histories(str(tmp_path))
    assert histories["stopped"]["epoch"].tolist() == [1, 2, 3]
    assert histories["stopped"].loc[2, "checkpoint_path"] == str(tmp_path / "train" / "stopped" / "checkpoint_b")
    assert histories["done"]["epoch"].tolist() == [1, 2]  # a trial Tune saw end: as it reported, no checkpoint read
