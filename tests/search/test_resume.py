"""--resume: an interrupted, killed or budget-stopped search continues from its own files.

It continues with the experiment's own ``space.yaml`` and ``splits.csv`` (never today's files),
from any working directory, with ``--time-budget`` as minutes for the resumed run; kept trials are
not re-run, an unfinished trial goes on from its checkpoint, and the Optuna study ends up with
exactly the trials Tune ran.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from tests.conftest import call_cli, read_trials, ROOT, run_cli
from tests.selection_oracle import expected_winner

SMOKE = (ROOT / "search_spaces" / "smoke.yaml").read_text()
TRIALS = 4  # in the budget-stopped, interrupted and resumed experiment


def start_search(*args: str, env: dict | None = None) -> subprocess.Popen:
    """The search CLI in a session of its own, so that a test can kill it and every Ray process it started."""
    return subprocess.Popen([sys.executable, "-m", "cxr_tune.search", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}, start_new_session=True)


def wait_for_line(process: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if needle in line or time.monotonic() > deadline:
            break
    return lines


def study_trials(experiment: Path) -> pd.DataFrame:
    """Every Optuna trial of the experiment: number, state, and the Tune trial it belongs to (if recorded)."""
    with sqlite3.connect(experiment / "study.db") as db:
        trials = pd.read_sql("select trial_id, number, state from trials order by number", db)
        attrs = pd.read_sql("select trial_id, value_json from trial_user_attributes where key = 'tune_trial_id'", db)
    attrs["tune_trial_id"] = attrs["value_json"].map(json.loads)
    return trials.merge(attrs[["trial_id", "tune_trial_id"]], on="trial_id", how="left")


def results_of(experiment: Path, trial_id: str) -> pd.DataFrame:
    """The results Tune recorded for one trial, in order (``result.json``, one line per epoch);
    empty for a trial Ctrl-C or a budget ended before its first report (Tune made no file for it)."""
    path = experiment / trial_id / "result.json"
    if not path.exists():
        return pd.DataFrame()
    lines = path.read_text().splitlines()
    return pd.DataFrame([json.loads(line) for line in lines if line.strip()])


# --- the pieces that make a resumed time budget work --------------------------------------------


def test_the_time_budget_belongs_to_the_running_command_even_in_tunes_saved_copy(monkeypatch):
    import ray.cloudpickle as cloudpickle
    from ray.tune.stopper import TimeoutStopper

    from cxr_tune.search.budget import SessionBudget

    # Why: Tune saves its stopper with the experiment and resumes with that copy. Its own
    # TimeoutStopper comes back spent, so a search its budget stopped would stop again at once.
    spent = TimeoutStopper(0.2)
    spent.stop_all()
    time.sleep(0.3)
    assert spent.stop_all() and cloudpickle.loads(cloudpickle.dumps(spent)).stop_all()

    monkeypatch.setattr(SessionBudget, "minutes", 0.3 / 60)
    monkeypatch.setattr(SessionBudget, "ended", False)
    budget = SessionBudget()
    assert not budget.stop_all()
    time.sleep(0.4)
    assert budget.stop_all() and SessionBudget.ended  # what the command reports as "time budget"
    restored = cloudpickle.loads(cloudpickle.dumps(budget))  # as Tune brings it back on resume
    assert not restored.stop_all()  # this command's clock starts afresh
    monkeypatch.setattr(SessionBudget, "minutes", None)  # resumed without --time-budget: no limit
    time.sleep(0.4)
    assert not restored.stop_all()


def test_a_budget_that_fired_after_every_trial_ended_whole_is_no_budget_stop(tmp_path, monkeypatch):
    """Before: a budget that ran out as the last trial ended printed "The time budget of 0.1 min ended the search before
    every trial ran" under "2 trials (2 completed)"."""
    from types import SimpleNamespace

    from cxr_tune.search import results, runner
    from cxr_tune.search.budget import SessionBudget

    monkeypatch.setattr(SessionBudget, "ended", "time budget")
    monkeypatch.setattr(results, "trial_counts", lambda _: results.TrialCounts(ended=2, never_trained=0, unfinished=0))
    plan = SimpleNamespace(trials=2)
    events = tmp_path / "trial_events.jsonl"
    events.write_text("".join(json.dumps({"trial_id": t, "event": "completed", "epochs": 3, "time": 0.0}) + "\n" for t in ("a", "b")))
    assert runner._outcome(str(tmp_path), plan) == "complete"
    with events.open("a") as log:  # the budget cut the second short: a budget stop
        log.write(json.dumps({"trial_id": "b", "event": "cut short", "epochs": 2, "time": 1.0}) + "\n")
    assert runner._outcome(str(tmp_path), plan) == "time budget"
    events.write_text(events.read_text().replace('"cut short"', '"completed"'))
    for counts in (results.TrialCounts(1, 0, 0), results.TrialCounts(2, 1, 0), results.TrialCounts(2, 0, 1)):  # fewer ran, or not all trained
        monkeypatch.setattr(results, "trial_counts", lambda _, counts=counts: counts)
        assert runner._outcome(str(tmp_path), plan) == "time budget", counts


def test_a_restored_trial_generator_starts_trials_again(monkeypatch):
    from ray.tune.search import SearchGenerator
    from ray.tune.search.optuna import OptunaSearch

    from cxr_tune.search.budget import ResumableTrials

    ended_by_budget = {"counter": 2, "total_samples": 4, "finished": True, "experiment": None}
    plain = SearchGenerator(OptunaSearch())
    plain.set_state(dict(ended_by_budget))
    assert plain.is_finished()  # Tune's own: a resumed search would start no trial
    monkeypatch.setattr(ResumableTrials, "total", None)  # as saved
    ours = ResumableTrials(OptunaSearch())
    ours.set_state(dict(ended_by_budget))
    assert not ours.is_finished()
    ours.set_state({**ended_by_budget, "counter": 4})
    assert ours.is_finished()  # every trial asked for has been started
    monkeypatch.setattr(ResumableTrials, "total", 5)  # one of the 4 never trained: a resume asks for one more
    ours.set_state({**ended_by_budget, "counter": 4})
    assert not ours.is_finished()


def test_a_resumed_search_runs_as_many_trials_at_once_as_its_own_command_planned(tmp_path, monkeypatch):
    import optuna
    import ray.cloudpickle as pickle
    from ray.tune.search import ConcurrencyLimiter

    from cxr_tune.search.budget import ResumableTrials
    from cxr_tune.search.searcher import StudySearch
    from cxr_tune.search.space import SpaceSampler, load_space

    searcher = StudySearch(space=SpaceSampler(load_space("smoke")), metric="objective", mode="max", study_name="exp",
                           sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=3, database=str(tmp_path / "study.db"))
    saved = ResumableTrials(ConcurrencyLimiter(searcher, max_concurrent=2))  # planned for a small cluster
    saved.save_to_dir(str(tmp_path), "s")
    restored = pickle.loads(pickle.dumps(saved))  # as Tuner.restore brings the generator back
    monkeypatch.setattr(ResumableTrials, "concurrency", 8)  # this command's plan: a bigger cluster
    restored.restore_from_dir(str(tmp_path))
    assert restored.searcher.max_concurrent == 8  # before: the saved 2


def test_a_resumed_final_fit_runs_as_many_runs_at_once_as_its_own_command_planned(tmp_path, monkeypatch):
    import ray.cloudpickle as pickle
    from ray import tune

    from cxr_tune.search.budget import FinalFitRuns

    saved = FinalFitRuns(max_concurrent=2)  # planned for a small cluster
    saved.add_configurations({"finalfit": {"run": lambda config: None, "config": {"run": tune.grid_search(["a", "b", "c"])}}})
    saved.save_to_dir(str(tmp_path), "s")
    restored = pickle.loads(pickle.dumps(saved))  # as Tuner.restore brings the generator back
    monkeypatch.setattr(FinalFitRuns, "concurrency", 8)  # this command's plan: a bigger cluster
    restored.restore_from_dir(str(tmp_path))
    assert restored.max_concurrent == 8  # before: the saved 2, in the generator and in the restored TuneConfig


def test_trials_a_stopper_ended_are_reported_to_the_searcher_at_the_next_step(tmp_path):
    """A stopper (the time budget) ends trials without telling the searcher: the concurrency
    limiter would keep their places, and a resumed search wait forever for one."""
    from types import SimpleNamespace

    import optuna
    import ray.cloudpickle as pickle  # as Tune writes tuner.pkl
    from ray.tune.search import ConcurrencyLimiter

    from cxr_tune.search.budget import ResumableTrials, TrialsCatchUp
    from cxr_tune.search.searcher import StudySearch
    from cxr_tune.search.space import SpaceSampler, load_space

    searcher = StudySearch(space=SpaceSampler(load_space("smoke")), metric="objective", mode="max", study_name="exp",
                           sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=3, database=str(tmp_path / "study.db"))
    search_alg = ResumableTrials(ConcurrencyLimiter(searcher, max_concurrent=1))
    # Tuner(...) saves both in one file (tuner.pkl); restored, the callback holds the generator Tune uses.
    search_alg, catch_up = pickle.loads(pickle.dumps((search_alg, TrialsCatchUp(search_alg))))
    assert catch_up.search_alg is search_alg
    search_alg.searcher.suggest("trial_a")
    assert search_alg.searcher.suggest("trial_b") is None  # its one place is taken
    cut_short = SimpleNamespace(trial_id="trial_a", status="TERMINATED", last_result={"objective": 0.625, "epoch": 1})
    catch_up.on_step_begin(iteration=1, trials=[cut_short])
    assert search_alg.searcher.suggest("trial_b") is not None
    [done, _] = optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()
    # Cut short after one of three epochs: told, as a trial that did not run its course (PRUNED) with its value.
    assert done.state == optuna.trial.TrialState.PRUNED and done.value == 0.625


def test_at_the_end_of_a_search_a_budget_ended_its_running_trials_are_told_and_logged_cut_short(tmp_path, monkeypatch):
    """No step follows the budget's stop: the end of the experiment tells the study (not left RUNNING)
    and writes the trial's end (not guessed from the rungs as ASHA's)."""
    import json
    from types import SimpleNamespace

    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from cxr_tune.search.budget import ResumableTrials, SessionBudget, TrialsCatchUp
    from cxr_tune.search.progress import TrialEventLog
    from cxr_tune.search.searcher import StudySearch
    from cxr_tune.search.space import SpaceSampler, load_space

    searcher = StudySearch(space=SpaceSampler(load_space("smoke")), metric="objective", mode="max", study_name="exp",
                           sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=3, database=str(tmp_path / "study.db"))
    search_alg = ResumableTrials(ConcurrencyLimiter(searcher, max_concurrent=2))
    catch_up, events = TrialsCatchUp(search_alg), TrialEventLog(str(tmp_path / "trial_events.jsonl"), max_epochs=3)
    for trial_id in ("running", "interrupted"):
        search_alg.searcher.suggest(trial_id)
    trials = [SimpleNamespace(trial_id=t, status="TERMINATED", last_result={"objective": 0.6, "epoch": 2}) for t in ("running", "interrupted")]
    monkeypatch.setattr(SessionBudget, "ended", "")  # Ctrl-C: a resume continues these; nothing is told
    catch_up.on_experiment_end(trials=trials[1:])
    events.on_experiment_end(trials=trials[1:])
    monkeypatch.setattr(SessionBudget, "ended", "time budget")
    catch_up.on_experiment_end(trials=trials[:1])
    events.on_experiment_end(trials=trials[:1])
    states = {t.user_attrs["tune_trial_id"]: t.state for t in optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'study.db'}").trials}
    assert states == {"running": optuna.trial.TrialState.PRUNED, "interrupted": optuna.trial.TrialState.RUNNING}
    logged = [json.loads(line) for line in (tmp_path / "trial_events.jsonl").read_text().splitlines()]
    assert [(e["trial_id"], e["event"], e["epochs"]) for e in logged] == [("running", "cut short", 2)]
    # A resumed command's log (Tune's copy from its start) leaves the ends earlier commands wrote as they were.
    events.on_trial_complete(0, [], SimpleNamespace(trial_id="stopped", status="TERMINATED", last_result={"epoch": 1}))
    resumed = TrialEventLog(str(tmp_path / "trial_events.jsonl"), max_epochs=3)
    resumed.on_experiment_end(trials=[SimpleNamespace(trial_id=t, status="TERMINATED", last_result={"epoch": 1}) for t in ("stopped", "running")])
    logged = [json.loads(line)["event"] for line in (tmp_path / "trial_events.jsonl").read_text().splitlines()]
    assert logged == ["cut short", "ASHA stopped"]


def test_a_stopped_trial_whose_last_epochs_only_its_checkpoint_holds_is_told_with_them(tmp_path):
    """The budget can end a trial after Ray Train checkpointed its last epoch and before the report
    reached Tune: the trial table reads that epoch from the checkpoint, and so must the study."""
    from types import SimpleNamespace

    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from cxr_tune.search.budget import ResumableTrials, TrialsCatchUp
    from cxr_tune.search.results import train_run
    from cxr_tune.search.searcher import StudySearch
    from cxr_tune.search.space import SpaceSampler, load_space
    from cxr_tune.train.checkpoints import save_state

    searcher = StudySearch(space=SpaceSampler(load_space("smoke")), metric="objective", mode="max", study_name="exp",
                           sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=2, database=str(tmp_path / "study.db"))
    search_alg = ResumableTrials(ConcurrencyLimiter(searcher, max_concurrent=2))
    catch_up = TrialsCatchUp(search_alg, str(tmp_path))
    search_alg.searcher.suggest("trial_a")
    history = [{"epoch": 1, "objective": 0.75}, {"epoch": 2, "objective": 0.5}]
    checkpoint = tmp_path / "train" / "trial_a" / "checkpoint_2026"
    checkpoint.mkdir(parents=True)
    save_state(str(checkpoint), {"epoch": 1, "history": history}, {})
    assert train_run(str(tmp_path), "trial_a") == str(tmp_path / "train" / "trial_a")
    never_reported = SimpleNamespace(trial_id="trial_a", status="TERMINATED", last_result={})
    catch_up.on_step_begin(iteration=1, trials=[never_reported])
    [done] = optuna.load_study(study_name="exp", storage=f"sqlite:///{tmp_path / 'study.db'}").get_trials()
    # Both epochs ran: COMPLETE, with the best epoch's value, as the trial table has it.
    assert done.state == optuna.trial.TrialState.COMPLETE and done.value == 0.75


def test_a_stopped_trial_whose_checkpoint_cannot_be_read_is_told_with_tune_s_result_and_a_bug_of_ours_is_not_hidden(tmp_path, monkeypatch):
    """A checkpoint cut short (or a store out of reach) leaves Tune's last result as it was; before, any exception did,
    so an error in our own code went unseen and the study was told a trial's epochs short."""
    import cxr_tune.search.results
    from cxr_tune.search.budget import TrialsCatchUp

    catch_up = TrialsCatchUp(SimpleNamespace(), str(tmp_path))  # the searcher is not reached when nothing is read
    checkpoint = tmp_path / "train" / "trial_a" / "checkpoint_2026"
    checkpoint.mkdir(parents=True)
    (checkpoint / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    last = {"objective": 0.5, "epoch": 1}
    assert catch_up._with_checkpointed_epochs("trial_a", last) is last

    def ours(run):
        raise TypeError("a bug of ours")

    monkeypatch.setattr(cxr_tune.search.results, "newest_checkpoint_history", ours)
    with pytest.raises(TypeError, match="a bug of ours"):
        catch_up._with_checkpointed_epochs("trial_a", last)


def test_a_restored_trial_whose_run_had_ended_reports_its_last_epoch_again_and_trains_nothing(tmp_path, monkeypatch):
    """A driver killed after a trial's run ended, before Tune saved that, leaves the trial RUNNING in Tune's state: --resume
    starts it again. Its Train run, restored at its last epoch, reported nothing, and ASHA refused the trial's end (no
    ``objective``): a TuneError ended every resume. The trial now ends as it had, on its last epoch from the checkpoint."""
    import ray.tune

    from cxr_tune.search.trial import report_again_if_ended
    from cxr_tune.train.checkpoints import save_state

    reports: list[dict] = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kwargs: reports.append(metrics))
    run = tmp_path / "train" / "trial_a"
    assert not report_again_if_ended(str(run), epochs=2) and reports == []  # a trial that never ran: it trains
    history = [{"epoch": 1, "objective": 0.75, "diverged": False}, {"epoch": 2, "objective": 0.5, "diverged": False}]
    for epoch in (1, 2):  # Train keeps the best epoch's checkpoint and the latest
        (run / f"checkpoint_{epoch}").mkdir(parents=True)
        save_state(str(run / f"checkpoint_{epoch}"), {"epoch": epoch - 1, "history": history[:epoch]}, {})
    assert not report_again_if_ended(str(run), epochs=3) and reports == []  # epochs left: its Train run goes on from the checkpoint
    assert report_again_if_ended(str(run), epochs=2)
    [again] = reports
    assert again["epoch"] == 2 and again["objective"] == 0.5 and again["checkpoint_path"] == str(run / "checkpoint_2")
    assert math.isnan(again["time_this_iter_s"])  # not the seconds since the restart: Tune did not time this epoch

    reports.clear()  # a run that diverged stopped there, whatever its epochs: the same seed would diverge again
    history[1]["diverged"] = True
    save_state(str(run / "checkpoint_2"), {"epoch": 1, "history": history}, {})
    assert report_again_if_ended(str(run), epochs=5) and reports[0]["diverged"]


def test_ctrl_c_before_any_trial_trained_an_epoch_names_the_command_that_continues(tmp_path, monkeypatch):
    """Tune saved its state, and --resume finishes such a search; yet the command ended with status 2 and "error: no trial
    ... trained an epoch", as if the user had erred, and named no command to continue it."""
    import pandas as pd

    from cxr_tune.experiment import Experiment
    from cxr_tune.search import runner
    from cxr_tune.search.options import SearchOptions

    experiment = tmp_path / "runs" / "exp"

    def interrupted_search(options: SearchOptions, **kwargs) -> tuple[str, str]:  # Ctrl-C as the first trial started
        experiment.mkdir(parents=True)
        (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        return str(experiment), "interrupted"

    monkeypatch.setattr(runner, "run_search", interrupted_search)
    monkeypatch.setattr(Experiment, "trials", lambda self, ranked=True: pd.DataFrame(
        {"trial_id": ["a1"], "status": ["PENDING"], "stop_reason": ["unfinished"], "epochs": [0], "error": [""]}))
    done = call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp", "--no-export")
    assert done.returncode == 130 and not any(line.startswith("error:") for line in done.stderr.splitlines()), done.stdout + done.stderr
    assert f"continue it with:\n  python -m cxr_tune.search --name exp --storage {tmp_path / 'runs'} --resume" in done.stderr
    assert f"no trial of {experiment} trained an epoch" in done.stderr and (experiment / "trials.csv").exists()


@pytest.mark.parametrize("started", [True, False])
def test_an_object_store_gone_mid_search_is_one_line_that_names_the_command_that_continues(started, tmp_path, monkeypatch):
    """Before: "error: '.../compute.jsonl' cannot be written: no connection ..." and status 2, naming no command, though
    Tune's state and the checkpoints uploaded until then are kept and --resume goes on from them once the store answers.
    A store gone before the experiment was written (its data's, say) has nothing to continue."""
    from cxr_tune.search import runner
    from cxr_tune.search.options import SearchOptions
    from cxr_tune.storage import StoreError

    experiment = tmp_path / "runs" / "exp"
    lost = "'s3://bkt/exp/compute.jsonl' cannot be written: no connection to http://127.0.0.1:1; check the network and AWS_ENDPOINT_URL"

    def search(options: SearchOptions, **kwargs) -> tuple[str, str]:
        if started:
            experiment.mkdir(parents=True)
            (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        raise StoreError(lost)

    monkeypatch.setattr(runner, "run_search", search)
    done = call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp")
    assert done.returncode == 2 and "Traceback" not in done.stdout + done.stderr, done.stdout + done.stderr
    hint = f"; once the store answers again, continue the search with: python -m cxr_tune.search --name exp --storage {tmp_path / 'runs'} --resume"
    assert done.stderr.strip() == f"error: {lost}" + (hint if started else ""), done.stderr


@pytest.mark.parametrize("stage", ["search", "final fit"])
def test_a_search_whose_storage_fills_ends_with_one_line_naming_the_file_and_the_command_that_continues(stage, tmp_path, monkeypatch):
    """Before: 772 lines of chained tracebacks (compute.jsonl's write, then search.log's close), status 1, no resume line."""
    import errno

    from cxr_tune.search import finalfit, runner
    from cxr_tune.search.options import SearchOptions

    experiment = tmp_path / "runs" / "exp"
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(experiment / "compute.jsonl"))

    def search(options: SearchOptions, **kwargs) -> tuple[str, str]:
        experiment.mkdir(parents=True)
        (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        if stage == "search":
            raise full
        return str(experiment), "complete"

    def final_fit(*args, **kwargs):
        raise full

    monkeypatch.setattr(runner, "run_search", search)
    monkeypatch.setattr(finalfit, "run_final_fit", final_fit)
    done = call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp")
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stderr.strip() == (f"error: cannot write '{experiment / 'compute.jsonl'}': No space left on device; free space, then continue "
                                   f"the search with: python -m cxr_tune.search --name exp --storage {tmp_path / 'runs'} --resume")


@pytest.mark.parametrize("outcome, flag", [("time budget", "--time-budget"), ("job budget", "--job-budget")])
def test_a_budget_that_ended_the_search_before_any_epoch_names_the_command_that_continues(outcome, flag, tmp_path, monkeypatch):
    """Before: status 2 and "error: no trial ... trained an epoch", as if the user had erred, and no command to continue it,
    though --resume replaces the trials the budget ended before they trained."""
    import pandas as pd

    from cxr_tune.experiment import Experiment
    from cxr_tune.search import runner
    from cxr_tune.search.options import SearchOptions

    experiment = tmp_path / "runs" / "exp"

    def budget_ended_search(options: SearchOptions, **kwargs) -> tuple[str, str]:
        experiment.mkdir(parents=True)
        (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        return str(experiment), outcome

    monkeypatch.setattr(runner, "run_search", budget_ended_search)
    monkeypatch.setattr(Experiment, "trials", lambda self, ranked=True: pd.DataFrame(
        {"trial_id": ["a1"], "status": ["TERMINATED"], "stop_reason": ["never trained (the search ended first)"], "epochs": [0], "error": [""]}))
    done = call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp", "--no-export", "--no-final-fit", flag, "0.05")
    assert done.returncode == 1 and not any(line.startswith("error:") for line in done.stderr.splitlines()), done.stdout + done.stderr
    assert (f"The {outcome} of 0.05 min ended the search before any trial trained an epoch; continue it with:\n"
            f"  python -m cxr_tune.search --name exp --storage {tmp_path / 'runs'} --resume") in done.stderr, done.stdout + done.stderr


@pytest.mark.parametrize("outcome, finish_raises", [("interrupted", "user error"), ("interrupted", "ctrl-c"), ("complete", "ctrl-c")])
def test_a_search_whose_finish_fails_or_is_interrupted_says_what_happened_and_what_continues_it(outcome, finish_raises, tmp_path, monkeypatch):
    """Before: an interrupted search whose export failed printed "Nothing to select yet:" and the export's error, though a
    trial had trained and been selected; Ctrl-C in the finish of a search ended with "interrupted" alone, naming no command
    (the trials are kept: --resume continues an interrupted search, --report-only writes a finished one's files)."""
    from cxr_tune.errors import UserError
    from cxr_tune.search import finish, runner
    from cxr_tune.search.options import SearchOptions

    experiment = tmp_path / "runs" / "exp"

    def search(options: SearchOptions, **kwargs) -> tuple[str, str]:
        experiment.mkdir(parents=True)
        (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        return str(experiment), outcome

    def finish_fails(*args, **kwargs):
        if finish_raises == "ctrl-c":
            raise KeyboardInterrupt
        raise UserError(f"export folder '{experiment / 'best'}' cannot be written: no permission")

    monkeypatch.setattr(runner, "run_search", search)
    monkeypatch.setattr(finish, "finish_experiment", finish_fails)
    done = call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp", "--no-final-fit")
    output = done.stdout + done.stderr
    assert done.returncode == 130 and "Nothing to select" not in output and "Traceback" not in output, output
    runs = tmp_path / "runs"
    if outcome == "interrupted":
        assert f"The search was interrupted; continue it with:\n  python -m cxr_tune.search --name exp --storage {runs} --resume" in output
    else:
        assert ("The search ended, but writing its trial table, report and export was interrupted; write them with:\n  "
                f"python -m cxr_tune.search --name exp --storage {runs} --report-only") in output
    if finish_raises == "user error":
        assert f"error: export folder '{experiment / 'best'}' cannot be written: no permission" in done.stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_the_final_fit_stops_the_command_even_when_its_runs_complete_as_tune_shuts_down(signum, tmp_path, monkeypatch):
    """Before: Tune took the stop and returned once its run had completed its last epoch (it was in it when the stop came): the
    final fit looked complete, and the command printed "Search finished", exported and ended with status 0."""
    import contextlib

    from cxr_tune import ray_session
    from cxr_tune.experiment import Experiment, FinalRun
    from cxr_tune.search import finalfit, finish, runner
    from cxr_tune.search.space import SPACES_DIR

    experiment = tmp_path / "runs" / "exp"
    run = FinalRun("a-seed100000", "a", 100000, 2)

    def search(options, **kwargs) -> tuple[str, str]:
        experiment.mkdir(parents=True)
        (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        shutil.copyfile(SPACES_DIR / "smoke.yaml", experiment / "space.yaml")
        return str(experiment), "complete"

    class Tuner:
        def fit(self) -> None:
            """As Tune's fit takes a stop: its handler puts back the one before it, and fit returns once its run ended."""
            before = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, lambda *args: signal.signal(signal.SIGINT, before))
            os.kill(os.getpid(), signum)
            time.sleep(0.05)

    finished = []
    monkeypatch.setattr(runner, "run_search", search)
    monkeypatch.setattr(finalfit, "runs_to_train", lambda experiment: [run])
    monkeypatch.setattr(finalfit, "_tuner", lambda *args, **kwargs: Tuner())
    monkeypatch.setattr(ray_session, "ray_session", lambda *args, **kwargs: contextlib.nullcontext())
    monkeypatch.setattr(ray_session, "cluster_held", lambda: (2.0, 0.0))
    monkeypatch.setattr(Experiment, "final_fit_ends", lambda self: [(run, str(experiment), False)])  # the run completed
    monkeypatch.setattr(Experiment, "final_fit_complete", lambda self: True)
    monkeypatch.setattr(finish, "finish_experiment", lambda path, **kwargs: finished.append(kwargs["interrupted"]) or {})
    done = call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp")
    assert done.returncode == 128 + signum, done.stdout + done.stderr
    assert finished == [True]  # its table, best-so-far export and report, saying it was stopped
    assert (f"The search was interrupted; continue it with:\n  python -m cxr_tune.search --name exp --storage {tmp_path / 'runs'} "
            "--resume") in done.stderr


def test_flags_that_cannot_apply_to_a_resumed_search_are_one_line_errors(tmp_path):
    done = run_cli("cxr_tune.search", "--resume", "--name", "exp", "--storage", str(tmp_path), "--trials", "9")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --resume ") and "--trials cannot apply" in lines[0], done.stderr


def test_a_resume_on_other_resources_per_trial_says_what_changed_in_one_line(tmp_path, capsys):
    """A resumed search whose trials train with other torch threads, workers or GPUs continues them sound but not bit for bit:
    it said nothing. The first run records what a trial trained on; a resume that differs names it."""
    from cxr_tune.search.runner import keep_trial_resources
    from cxr_tune.train.trainer import Resources

    (tmp_path / "experiment.json").write_text(json.dumps({"options": {"name": "exp"}}))
    keep_trial_resources(str(tmp_path), Resources(1, 2.0, 0.0), restored=False)  # the first run
    keep_trial_resources(str(tmp_path), Resources(1, 2.0, 0.0), restored=True)
    assert capsys.readouterr().err == ""
    keep_trial_resources(str(tmp_path), Resources(2, 1.0, 0.0), restored=True)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "2 worker(s) per trial (1 before), 1 torch thread(s) per worker (2 before)" in lines[0] and "bit-identical" in lines[0]
    assert json.loads((tmp_path / "experiment.json").read_text())["trial_resources"]["threads"] == 2  # the first run's, kept
    keep_trial_resources(str(tmp_path), Resources(1, 1.99, 0.0), restored=True)  # 2 threads all the same: computes as before
    assert capsys.readouterr().err == ""

    (tmp_path / "experiment.json").write_text(json.dumps({"options": {"name": "exp"}}))  # from before the record: nothing to compare
    keep_trial_resources(str(tmp_path), Resources(2, 1.0, 0.0), restored=True)
    assert capsys.readouterr().err == ""



def test_a_resume_under_other_code_or_libraries_says_so_in_one_line_and_each_run_s_provenance_is_kept(tmp_path, monkeypatch, capsys):
    """Provenance was written when the search started only: a resume under another commit or torch said nothing, and
    experiment.json (and the card) named the start's code alone. "provenance" stays the start's, for its readers."""
    from cxr_tune.search import runner

    start = {"commit": "aaa", "versions": {"python": "3.11.7", "torch": "2.5.1", "ray": "2.60.0"}}
    (tmp_path / "experiment.json").write_text(json.dumps({"options": {"name": "exp"}, "provenance": start}))
    monkeypatch.setattr(runner, "provenance", lambda: start)
    runner.keep_provenance(str(tmp_path))  # resumed under the same code
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(runner, "provenance", lambda: {"commit": "bbb+dirty", "versions": {**start["versions"], "torch": "2.6.0"}})
    runner.keep_provenance(str(tmp_path))
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "commit bbb+dirty (aaa at the start), torch 2.6.0 (2.5.1 at the start)" in lines[0], lines
    info = json.loads((tmp_path / "experiment.json").read_text())
    assert info["provenance"] == start
    assert [run["commit"] for run in info["provenance_history"]] == ["aaa", "aaa", "bbb+dirty"]  # the start's, then each resume's
    assert all(run["at"] for run in info["provenance_history"][1:])


def test_a_search_resumed_where_auto_means_another_precision_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    """--precision auto resolves per machine: a search whose trials trained in bf16, resumed on a CPU without native bf16,
    trained their next epochs in fp32 and said nothing (keep_trial_resources compares threads, workers and GPUs only)."""
    from types import SimpleNamespace

    from ray import tune

    import cxr_tune.train.precision
    from cxr_tune.search import results, runner
    from cxr_tune.search.options import SearchOptions
    from cxr_tune.search.space import load_space
    from cxr_tune.train.trainer import Resources

    history = pd.DataFrame([{"epoch": e, "objective": 0.6, "precision": "bf16", "channels_last": True} for e in (1, 2)])
    trials = [SimpleNamespace(trial_id=t, status=status, config={}) for t, status in (("done", "TERMINATED"), ("paused", "PAUSED"))]
    monkeypatch.setattr(results, "trial_histories", lambda _: (trials, {t.trial_id: history for t in trials}))
    monkeypatch.setattr(tune, "with_parameters", lambda trainable, **_: trainable)  # no Ray: the resume's own lines only
    monkeypatch.setattr(tune, "with_resources", lambda trainable, _: trainable)
    monkeypatch.setattr(tune.Tuner, "restore", classmethod(lambda cls, *args, **kwargs: "restored"))
    from ray.tune.schedulers import FIFOScheduler

    monkeypatch.setattr(runner, "restored_scheduler", lambda tuner: FIFOScheduler())  # its rungs: the tests after this one
    from cxr_tune.search.budget import ResumableTrials
    from cxr_tune.search.progress import ProgressPrinter

    for cls, names in ((ResumableTrials, ("total", "concurrency")), (ProgressPrinter, ("verbose", "trained_before", "best_before"))):
        for name in names:  # what a resume sets on them: back as they were after the test
            monkeypatch.setattr(cls, name, getattr(cls, name))
    options = SearchOptions(space="smoke", name="exp", storage=str(tmp_path))
    plan = runner.Plan(load_space("smoke"), 4, 3, Resources(1, 1.0, 0.0), 1)
    split = SimpleNamespace(deciding_set=lambda select_on: "carved", class_counts=lambda: (10, 10))

    monkeypatch.setattr(cxr_tune.train.precision, "cpu_has_native_bf16", lambda: True)  # resumed where auto means bf16 again
    assert runner._tuner(options, plan, split, {}, resume=True) == "restored"
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cxr_tune.train.precision, "cpu_has_native_bf16", lambda: False)  # resumed where auto means fp32
    assert runner._tuner(options, plan, split, {}, resume=True) == "restored"
    assert capsys.readouterr().err == ("Note: the last epochs so far trained in bf16, the next train in fp32, channels_last (auto: this CPU has no "
                                       "native bf16, which would be emulated and slower than fp32); each epoch records its own precision, and "
                                       "a model's records name every precision its epochs trained in\n")
    # The paused trial went on in fp32 and was stopped again: resumed again on this machine, nothing changes (the finished
    # trial, in bf16, trains no epoch more).
    paused = pd.concat([history, pd.DataFrame([{"epoch": 3, "objective": 0.6, "precision": "fp32", "channels_last": True}])], ignore_index=True)
    monkeypatch.setattr(results, "trial_histories", lambda _: (trials, {"done": history, "paused": paused}))
    assert runner._tuner(options, plan, split, {}, resume=True) == "restored"
    assert capsys.readouterr().err == ""



def _resumed_scheduler(tmp_path, monkeypatch, settings, trials: list, histories: dict) -> object:
    """The scheduler a search of ``settings`` started in ``tmp_path / "exp"`` resumes with, its saved trials ``trials``
    (with ``histories``): the tuner.pkl a start writes, restored by the resume path (no Ray started)."""
    from ray import tune

    from cxr_tune.search import results, runner
    from cxr_tune.search.budget import ResumableTrials
    from cxr_tune.search.options import SearchOptions
    from cxr_tune.search.progress import ProgressPrinter
    from cxr_tune.search.space import load_space
    from cxr_tune.search.trial import run_trial
    from cxr_tune.train.trainer import Resources

    # As the search started: Tune pickles this scheduler, its rungs empty, in tuner.pkl and never saves it again.
    tune.Tuner(run_trial, tune_config=tune.TuneConfig(scheduler=runner.asha_scheduler(settings.max_epochs, settings)),
               run_config=tune.RunConfig(storage_path=str(tmp_path), name="exp"))
    monkeypatch.setattr(results, "trial_histories", lambda _: (trials, histories))
    monkeypatch.setattr(tune, "with_parameters", lambda trainable, **_: trainable)
    monkeypatch.setattr(tune, "with_resources", lambda trainable, _: trainable)
    for cls, names in ((ResumableTrials, ("total", "concurrency")), (ProgressPrinter, ("verbose", "trained_before", "best_before"))):
        for name in names:
            monkeypatch.setattr(cls, name, getattr(cls, name))
    options = SearchOptions(space="smoke", name="exp", storage=str(tmp_path))
    plan = runner.Plan(load_space("smoke"), 2, settings.max_epochs, Resources(1, 1.0, 0.0), 1)
    split = SimpleNamespace(deciding_set=lambda select_on: "carved", class_counts=lambda: (10, 10))
    return runner.restored_scheduler(runner._tuner(options, plan, split, {}, resume=True))


def _saved(trial_id: str, status: str, *objectives: float, start: float = 100.0) -> tuple[SimpleNamespace, pd.DataFrame]:
    """A saved trial and its history: one epoch a second from ``start``."""
    trial = SimpleNamespace(trial_id=trial_id, status=status, config={}, run_metadata=SimpleNamespace(start_time=start))
    return trial, pd.DataFrame([{"epoch": e, "objective": v, "time_total_s": float(e)} for e, v in enumerate(objectives, 1)])


@pytest.mark.parametrize("rule", ["ray", "optuna"])
def test_a_resumed_search_s_asha_judges_new_epochs_against_the_saved_trials_at_its_rungs(rule, tmp_path, monkeypatch, capsys):
    """Tune restores the scheduler pickled in tuner.pkl when the search started, its rungs empty: a trial run after a resume
    was compared only with results after it. The reviewer's pair: a trial at 0.5000 after epoch 1, below the finished trial's
    0.5687 there, was "stopped by ASHA after 1 epoch(s)" uninterrupted and "finished" (2 epochs) after Ctrl-C and --resume."""
    from ray.tune.schedulers import TrialScheduler

    from cxr_tune.search.space import SearchSettings

    settings = SearchSettings(max_epochs=2, grace_period=1, reduction_factor=2, asha_rule=rule)
    finished, finished_history = _saved("a", "TERMINATED", 0.5687, 0.6044)
    scheduler = _resumed_scheduler(tmp_path, monkeypatch, settings, [finished], {"a": finished_history})
    assert capsys.readouterr().err == ""
    new = SimpleNamespace(trial_id="b")
    scheduler.on_trial_add(None, new)  # as Tune adds a trial it starts after the resume
    assert scheduler.on_trial_result(None, new, {"epoch": 1, "objective": 0.5}) == TrialScheduler.STOP


def test_a_resumed_trial_is_not_judged_again_at_a_rung_it_passed_before_the_resume(tmp_path, monkeypatch):
    """An unfinished trial goes on from its checkpoint: a rung it passed before the interruption is not judged again with its
    later epochs (Optuna's rule judged every rung up to the epoch told, and a fresh record had passed none)."""
    from ray.tune.schedulers import TrialScheduler

    from cxr_tune.search.space import SearchSettings

    settings = SearchSettings(max_epochs=9, grace_period=1, reduction_factor=3, asha_rule="optuna")
    leader, leader_history = _saved("a", "TERMINATED", 0.60, 0.70, 0.50, start=100.0)
    running, running_history = _saved("b", "RUNNING", 0.62, 0.50, start=101.0)  # passed rung 1 as the best there
    scheduler = _resumed_scheduler(tmp_path, monkeypatch, settings, [leader, running], {"a": leader_history, "b": running_history})
    scheduler.on_trial_add(None, running)  # as Tune adds the trials it restores
    # Rung 3 alone judges epoch 3, and b's 0.55 is above a's 0.50 there, as uninterrupted; judged at rung 1 again, below
    # its own 0.62 there, it was stopped.
    assert scheduler.on_trial_result(None, running, {"epoch": 3, "objective": 0.55}) == TrialScheduler.CONTINUE


def test_saved_trials_are_told_to_the_scheduler_in_the_wall_clock_order_they_reported():
    """Optuna's rule decides in the order told. Before: the order was each trial's start plus its training time, so a trial
    paused after epoch 1 and restored in an earlier resume (its epoch 2 long after b's epoch 1) was told its epoch 2 first."""
    from cxr_tune.search.runner import tell_saved_trials

    paused, paused_history = _saved("a", "TERMINATED", 0.60, 0.70, start=100.0)  # trained epochs at 101 and 102 s of training
    paused_history["timestamp"] = [101, 500]  # ... its epoch 2 after a resume, at 500 s on the clock
    later, later_history = _saved("b", "TERMINATED", 0.65, start=200.0)
    later_history["timestamp"] = [201]
    told = []
    scheduler = SimpleNamespace(on_trial_add=lambda _, trial: None, on_trial_complete=lambda *args: None,
                                on_trial_result=lambda _, trial, result: told.append((trial.trial_id, result["epoch"])))
    tell_saved_trials(scheduler, [paused, later], {"a": paused_history, "b": later_history})
    assert told == [("a", 1), ("b", 1), ("a", 2)]


def test_a_resume_whose_scheduler_this_ray_keeps_elsewhere_says_its_rungs_start_empty(tmp_path, monkeypatch, capsys):
    from cxr_tune.search import runner
    from cxr_tune.search.space import SearchSettings

    monkeypatch.setattr(runner, "restored_scheduler", lambda tuner: None)
    assert _resumed_scheduler(tmp_path, monkeypatch, SearchSettings(max_epochs=2, grace_period=1, reduction_factor=2), [], {}) is None
    assert capsys.readouterr().err == ("Note: ASHA's rungs start empty after a resume: trials run after it are compared only with results "
                                       "after it\n")


# --- end to end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resumed_thrice(ray_session, synthetic_root, tmp_path_factory) -> dict:
    """One experiment through the commands a user would type, from a working folder of its own:
    started and interrupted before Tune ever ran (Ctrl-C in the first cache build leaves
    experiment.json and no Tune state); the same command again, refused with the command that
    continues it; that command, run from the repository root after the space file changed, with a
    time budget that stops it; resumed with a budget of its own and interrupted with Ctrl-C once
    another trial finished; resumed, and killed with kill -9 right after one more trial ended; resumed to the end and
    exported. What each left behind, for the tests below."""
    from cxr_tune import folder_lock
    from cxr_tune.data.prepared import split_data
    from cxr_tune.errors import UserError
    from cxr_tune.ray_session import remove_idle_placement_groups
    from cxr_tune.search import runner
    from cxr_tune.search.__main__ import build_parser, main, options_from_args
    from cxr_tune.search.results import newest_checkpoint_history
    from cxr_tune.search.space import load_space

    work = tmp_path_factory.mktemp("resume")
    shutil.copytree(synthetic_root, work / "data")
    space_file = work / "spaces" / "tiny.yaml"
    space_file.parent.mkdir()
    space_file.write_text(SMOKE.replace("trials: 4", f"trials: {TRIALS}").replace("max_epochs: 3", "max_epochs: 1"))
    experiment = work / "runs" / "budget"
    argv = ["--space", "spaces/tiny.yaml", "--data", "data", "--storage", "runs", "--name", "budget", "--concurrency", "1"]  # exported at the end (a resume keeps a recorded --no-export)
    out: dict = {"experiment": experiment, "work": work, "space_file": space_file}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        options = options_from_args(build_parser().parse_args(argv))
        with folder_lock.holding():  # as the command holds it, and lets go as it ends
            runner._start_experiment(options, load_space(options.space), split_data(options.data), runner.search_command_line(argv))  # then Ctrl-C
        out["saved"] = json.loads((experiment / "experiment.json").read_text())["options"]
        out["splits"] = (experiment / "splits.csv").read_text()
        with pytest.raises(UserError) as refused:
            main(argv)  # the same command again
    named = re.search(r"continue it with: (python -m cxr_tune\.search .*--resume)", str(refused.value))
    assert named, str(refused.value)
    command = shlex.split(named.group(1))
    space_file.write_text(SMOKE)  # today's space file says 4 trials of 3 epochs
    common = ["--no-export"]

    def suggested() -> int:
        with sqlite3.connect(experiment / "study.db") as db:
            return db.execute("select count(*) from trials").fetchone()[0]

    # A short budget: the interrupted run below needs two trials left (one to finish, one Ctrl-C cuts).
    # A 1-epoch trial takes 12-15 s from its start to its report on some 2-core machines and 6 s on
    # others (native bf16): 0.3 minutes trained three there, and the interrupted run's one trial ended
    # the search before its Ctrl-C (seen in a fresh clone). In 9 s, none trains or one (a second's epoch
    # can reach its checkpoint as the budget stops it); the first trial starts either way, as Tune
    # fills its trial queue before it asks the stopper.
    out["first"] = call_cli(*command[2:], "--time-budget", "0.15", *common)  # from the repository root, not from work/
    out["started_first"] = suggested()
    # Resumed with a budget too long to end it first (before: a resumed search stopped again at once,
    # its saved stopper already spent); Ctrl-C once one more trial finished. It joins the session's
    # Ray (--address), as on a cluster: Ctrl-C ends the driver, not the Ray it ran on.
    # The last search's trial actors release their CPUs asynchronously; a driver that joins before
    # they do waits for a CPU to read its data. And a trial the budget stopped as it started can
    # leave its Train run's placement group reserved for as long as the process that ran the search
    # lives (seen in fresh clones: the next command then never got a CPU). That process is this
    # one, so its groups are taken back here, as the search's own next stage would.
    def cpus_free() -> None:
        deadline = time.monotonic() + 90
        while ray_session.available_resources().get("CPU", 0) < ray_session.cluster_resources()["CPU"] and time.monotonic() < deadline:
            remove_idle_placement_groups()
            time.sleep(0.5)

    cpus_free()
    address = ray_session.get_runtime_context().gcs_address
    interrupted = start_search(*command[3:], "--time-budget", "5", "--address", address, *common)
    done_before = len(read_trials(experiment)) if (experiment / "trials.csv").exists() else 0
    seen = wait_for_line(interrupted, " finished (", timeout=600)  # one more trial ended in this run
    interrupted.send_signal(signal.SIGINT)  # Ctrl-C
    out["interrupted"] = (interrupted.communicate(timeout=300)[0], interrupted.returncode, "".join(seen), done_before)
    out["started_second"] = suggested()
    out["before_last"] = read_trials(experiment)
    out["results_before_last"] = {t: results_of(experiment, t) for t in out["before_last"]["trial_id"]}
    # Resumed again and killed (kill -9) right after one more trial ended, before Tune saved its state (as if its ~10 s
    # period had not come round: it saves at its first step only, when that trial was about to start).
    cpus_free()
    killed = start_search(*command[3:], "--address", address, *common, env={"TUNE_GLOBAL_CHECKPOINT_S": "3600"})
    seen = wait_for_line(killed, " finished (", timeout=600)
    os.killpg(killed.pid, signal.SIGKILL)  # the driver: the session's Ray ends the trial's processes with it
    killed.communicate(timeout=60)
    ended = re.search(r"trial (\w+) finished \(", seen[-1])
    assert ended, "".join(seen)[-3000:]
    [state] = [_tune_state(path) for path in sorted(experiment.glob("experiment_state-*.json"))[-1:]]
    saved = {json.loads(t[0])["trial_id"]: json.loads(t[0])["status"] for t in state["trial_data"]}
    out["killed"] = (ended.group(1), saved.get(ended.group(1)), newest_checkpoint_history(str(experiment / "train" / ended.group(1))))
    cpus_free()
    out["last"] = call_cli(*command[2:])  # to the end, and best/ exported: the default job's path, with no external set
    out["table"] = read_trials(experiment)
    out["started_last"] = suggested()
    return out


def _ended(run: subprocess.CompletedProcess) -> bool:
    # A budget that ends before any trial trained an epoch leaves nothing to select: status 1, naming the command that continues.
    return run.returncode == 0 or (run.returncode == 1 and "ended the search before any trial trained an epoch; continue it with" in run.stderr)


@pytest.mark.slow
def test_a_budget_stopped_search_resumed_with_a_budget_starts_more(resumed_thrice):
    first = resumed_thrice["first"]
    assert _ended(first), first.stdout[-3000:] + first.stderr[-3000:]
    assert 1 <= resumed_thrice["started_first"] < TRIALS, first.stdout[-3000:]
    assert "The time budget of 0.15 min ended the search" in first.stdout or first.returncode != 0
    # The budget ended a trial before its first report (it has no result.json): the table says "never
    # trained", and Tune's warning about the missing file (printed after the last lines) is left out.
    assert "Failed to fetch metrics" not in first.stdout + first.stderr, first.stdout[-3000:]
    output = resumed_thrice["interrupted"][0]
    assert resumed_thrice["started_second"] > resumed_thrice["started_first"], output[-3000:]  # before: stopped again at once


@pytest.mark.slow
def test_ctrl_c_names_the_command_that_continues_and_loses_no_finished_trial(resumed_thrice):
    output, code, seen, _ = resumed_thrice["interrupted"]
    assert code == 130 and "--resume" in output, seen + output[-2000:]
    before = resumed_thrice["before_last"]
    assert 1 <= ((before["status"] == "TERMINATED") & (before["epochs"] > 0)).sum() < TRIALS


@pytest.mark.slow
def test_the_last_resume_runs_exactly_the_requested_trials_and_reruns_none_it_kept(resumed_thrice):
    last, table, before = resumed_thrice["last"], resumed_thrice["table"], resumed_thrice["before_last"]
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert "time budget" not in last.stdout  # resumed without one: no limit
    # Exactly TRIALS trained; a trial the first budget ended before its first epoch stays in the
    # table as "never trained" and was replaced by a new one (before: it counted as one of them).
    trained = table[table["epochs"] > 0]
    assert len(trained) == TRIALS and table["trial_id"].is_unique and set(table["status"]) == {"TERMINATED"}
    # best/ says the model was chosen from every requested trial (the counts of the export, after three stops and resumes)
    search = json.loads((resumed_thrice["experiment"] / "best" / "model.json").read_text())["search"]
    assert (search["trials"], search["trials_trained"], search["trials_unfinished"]) == (TRIALS, TRIALS, 0), search
    # Each names its best epoch's checkpoint, also one whose epoch reached Tune from its checkpoint alone (before: empty).
    assert all(isinstance(path, str) and (Path(path) / "state.pt").is_file() for path in trained["checkpoint_path"]), trained[["trial_id", "checkpoint_path"]]
    assert set(table.loc[table["epochs"] == 0, "stop_reason"]) <= {"never trained (the search ended first)"}
    # Each suggested once; one more when the kill came after the next trial was suggested (the study's FAIL, below).
    assert len(table) <= resumed_thrice["started_last"] <= len(table) + 1
    finished_before = before[before["status"] == "TERMINATED"].set_index("trial_id")
    kept = table.set_index("trial_id").loc[finished_before.index]
    # Same start: not run again. A trial Ctrl-C ended before its first report has no start (NaN) before and after.
    pd.testing.assert_series_equal(kept["started"], finished_before["started"], check_dtype=False)
    pd.testing.assert_series_equal(kept["epochs"], finished_before["epochs"], check_dtype=False)
    for trial_id in finished_before.index:
        assert results_of(resumed_thrice["experiment"], trial_id).equals(resumed_thrice["results_before_last"][trial_id])  # no new results


@pytest.mark.slow
def test_the_study_ends_with_exactly_the_trials_tune_ran(resumed_thrice):
    study, table = study_trials(resumed_thrice["experiment"]), resumed_thrice["table"]
    # After a trial ends the next is suggested at once: the kill -9 can come after that, before Tune knew it. No table
    # shows that one, and it is FAIL (TPE ignores it), as in test_a_killed_driver_resumes_... below.
    abandoned = study[~study["tune_trial_id"].isin(table["trial_id"])]
    assert len(abandoned) <= 1 and (abandoned["state"] == "FAIL").all(), abandoned
    study = study[study["tune_trial_id"].isin(table["trial_id"])]
    assert len(study) == len(table) and set(study["tune_trial_id"]) == set(table["trial_id"]) and not (study["state"] == "RUNNING").any()
    states = study.set_index("tune_trial_id")["state"]
    # A trial that ran its epoch is COMPLETE; one a budget cut short is PRUNED (TPE knows it did not finish); one the
    # budget ended before its first epoch measured nothing and is FAIL (TPE ignores it). Which of them a run has is timing.
    expected = {"completed": "COMPLETE", "never trained (the search ended first)": "FAIL"}
    for row in table.itertuples():
        assert states[row.trial_id] == expected.get(row.stop_reason, "PRUNED"), (row.trial_id, row.stop_reason)


@pytest.mark.slow
def test_a_driver_killed_right_after_a_trial_ended_resumes_with_that_trial_once_as_it_ended(resumed_thrice):
    """kill -9 just after a trial ended, before Tune saved its state: that state still has the trial running. Every
    --resume then ended in a TuneError: the restored trial's Train run had nothing left to train and reported nothing,
    and ASHA refused a trial end without ``objective``. Now the trial ends again on its last epoch, counted once."""
    from cxr_tune.selection import best_epoch

    trial_id, saved_status, history = resumed_thrice["killed"]
    assert saved_status in {"PENDING", "RUNNING"}, saved_status  # the case: Tune's saved state did not see it end
    last, table = resumed_thrice["last"], resumed_thrice["table"]
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    row = table.set_index("trial_id").loc[trial_id]  # one row: the trial ids are unique (above)
    assert row["status"] == "TERMINATED" and row["stop_reason"] == "completed" and row["epochs"] == len(history) == 1
    best = best_epoch(pd.DataFrame(history), "carved")  # its results as its checkpoint recorded them when it ended
    for metric in ("objective", "objective_low", "objective_high", "val_auc", "val_sensitivity", "val_specificity", "val_threshold"):
        assert row[metric] == pytest.approx(best[metric]), metric
    # What Tune recorded of it: its last epoch reported again from its checkpoint (after the epoch's own report, when the
    # kill came after Tune wrote that line), nothing trained again.
    results = results_of(resumed_thrice["experiment"], trial_id)
    assert set(results["epoch"]) == {1} and results["recovered_from_checkpoint"].eq(True).tolist()[-1:] == [True], results
    assert f"trial {trial_id} finished (" in last.stdout


@pytest.mark.slow
def test_a_search_without_an_external_set_exports_the_rules_winner_at_the_threshold_chosen_on_carved_validation(resumed_thrice):
    """The default job's path: no --val-data, so carved validation decides, sets the threshold and is labelled the
    selection set everywhere, and the card says that no external set saw the shift to new patients."""
    experiment, last, table = resumed_thrice["experiment"], resumed_thrice["last"], resumed_thrice["table"]
    meta = json.loads((experiment / "best" / "model.json").read_text())
    winner = table.set_index("trial_id").loc[expected_winner(table, "val")]
    assert meta["trial_id"] == winner.name and meta["epoch"] == int(winner["best_epoch"]) and meta["deciding_set"] == "carved"
    assert meta["threshold"] == pytest.approx(winner["val_threshold"], abs=1e-12) == pytest.approx(meta["validation"]["threshold"], abs=1e-12)
    assert "validation carved from train" in meta["threshold_rule"] and "external" not in meta
    assert meta["search"]["class_counts"]["external"] == [0, 0]
    assert f"Exported trial {winner.name} (epoch {int(winner['best_epoch'])})" in last.stdout
    assert "No external validation set: selection uses validation carved from train." in last.stdout
    assert "carved validation (SELECTION SET, optimistic)" in last.stdout and "external validation (" not in last.stdout
    card = (experiment / "best" / "MODEL_CARD.md").read_text()
    assert "| carved validation (selection set) |" in card and "There is no external set" in card


def _tune_state(path: Path) -> dict | None:
    """Tune's saved experiment state, or None while Tune is writing it (the file is written in
    place: a reader can catch it empty or half written, and CI once did)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@pytest.mark.slow
def test_a_killed_driver_resumes_its_unfinished_trial_from_its_checkpoint_and_the_study_agrees(ray_session, synthetic_root, tmp_path):
    """kill -9 between Optuna suggesting a trial and Tune saving its state, then --resume.

    Made to happen every time: Tune saves its state only at its first step (as if its ~10 s
    period had not come round) and asks for one trial at a time, so its state knows the first
    trial only; the second is suggested (RUNNING in the study) as soon as the first starts. The
    kill comes once the first trial has a checkpoint, many epochs before its end.
    """
    experiment = tmp_path / "killed"
    common = ["--storage", str(tmp_path), "--name", "killed"]
    search = start_search("--space", "smoke", "--data", str(synthetic_root), "--trials", "2", "--concurrency", "2",
                          "--max-epochs", "5", "--no-early-stopping", *common,
                          env={"TUNE_GLOBAL_CHECKPOINT_S": "3600", "TUNE_MAX_PENDING_TRIALS_PG": "1"})
    try:
        deadline, known, checkpointed = time.monotonic() + 600, [], []
        while time.monotonic() < deadline and search.poll() is None and not checkpointed:
            states = list(experiment.glob("experiment_state-*.json"))
            state = _tune_state(states[0]) if states else None
            if state is not None and (experiment / "study.db").exists():
                known = [json.loads(t[0])["trial_id"] for t in state["trial_data"]]
                with sqlite3.connect(experiment / "study.db") as db:
                    suggested = db.execute("select count(*) from trials").fetchone()[0]
                if suggested > len(known):
                    checkpointed = [t for t in known if list((experiment / "train" / t).glob("checkpoint_*"))]
            time.sleep(0.2)
        if not checkpointed:
            pytest.fail(f"the search never reached the state to kill it in: {search.stdout.read()[-3000:] if search.poll() is not None else ''}")
        os.killpg(search.pid, signal.SIGKILL)  # the driver and every Ray process it started: a lost head node
    finally:
        if search.poll() is None:
            os.killpg(search.pid, signal.SIGKILL)
        search.wait(timeout=60)
    [unfinished] = known  # in Tune's state, mid-training when killed

    resumed = call_cli("cxr_tune.search", "--resume", "--no-export", *common)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    table = read_trials(experiment)
    assert len(table) == 2 and table["trial_id"].is_unique and set(table["status"]) == {"TERMINATED"}
    study = study_trials(experiment)
    assert not (study["state"] == "RUNNING").any(), study  # before: the abandoned trial stayed RUNNING for good
    told = study[study["state"].isin(["COMPLETE", "PRUNED"])]  # each Tune trial once, as it ended
    assert len(told) == len(table) and set(told["tune_trial_id"]) == set(table["trial_id"])
    assert (study["state"] == "FAIL").sum() == 1  # the abandoned one, which no table shows
    # The unfinished trial went on from its checkpoint, not from scratch: each epoch once, those after the kill from the
    # checkpoint (Tune has the first run's epochs up to it too when their reports reached it before the kill).
    results = results_of(experiment, unfinished)
    resumed = results[results["start_epoch"] > 0]
    assert not resumed.empty and results["epoch"].is_unique, results[["epoch", "start_epoch"]]
    assert (results.loc[results["start_epoch"] == 0, "epoch"] <= resumed["start_epoch"].min()).all(), results[["epoch", "start_epoch"]]
    assert table.set_index("trial_id").loc[unfinished, "epochs"] == 5


@pytest.mark.slow
def test_an_experiment_tune_never_started_resumes_with_the_command_named_from_its_own_files(resumed_thrice):
    """Ctrl-C in the first cache build leaves experiment.json and no Tune state. The same command
    names the command that continues it, which runs from another folder on the experiment's own
    space and data even after the space file changed."""
    work, saved = resumed_thrice["work"], resumed_thrice["saved"]
    assert saved["storage"] == str((work / "runs").resolve()) and saved["data"]["data"] == str((work / "data").resolve())
    assert saved["space"] == str(resumed_thrice["space_file"].resolve())
    first, table = resumed_thrice["first"], resumed_thrice["table"]
    assert f"Data: SYNTHETIC chest X-rays (generated, not real patients) at {(work / 'data').resolve()}" in first.stdout, first.stdout[-3000:]
    # The space the experiment started with (TRIALS trials of 1 epoch), not today's file (4 of 3).
    assert (table["epochs"] > 0).sum() == TRIALS and table["epochs"].max() == 1
    assert (resumed_thrice["experiment"] / "splits.csv").read_text() == resumed_thrice["splits"]


def test_a_restored_trial_asha_had_stopped_reports_its_stop_epoch_again_and_trains_nothing(tmp_path, monkeypatch):
    """A driver killed after ASHA stopped a trial (trial_events.jsonl says so), before Tune saved that, leaves the trial
    RUNNING in Tune's state. --resume trained it on from its checkpoint, past the stop, and the trial table counted the
    epochs ASHA had cut as if it had allowed them. It now ends again at its stop: the epoch ASHA saw, from its checkpoint."""
    from types import SimpleNamespace

    import ray.tune

    from cxr_tune.search import trial
    from cxr_tune.search.trial import TrialSettings, run_trial
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.trainer import Resources

    reports: list[dict] = []
    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kwargs: reports.append(metrics))
    monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "trial_a"))
    monkeypatch.setattr(trial, "make_trainer", lambda *args, **kwargs: pytest.fail("the trial ASHA stopped trained again"))
    run = tmp_path / "train" / "trial_a"
    # ASHA stopped it after epoch 1; its worker trained epoch 2 before the stop reached it (Train keeps the best and the latest).
    history = [{"epoch": 1, "objective": 0.75, "diverged": False}, {"epoch": 2, "objective": 0.5, "diverged": False}]
    for epoch in (1, 2):
        (run / f"checkpoint_{epoch}").mkdir(parents=True)
        save_state(str(run / f"checkpoint_{epoch}"), {"epoch": epoch - 1, "history": history[:epoch]}, {})
    (tmp_path / "trial_events.jsonl").write_text(json.dumps({"trial_id": "trial_a", "event": "ASHA stopped", "epochs": 1, "time": 0.0}) + "\n")
    settings = TrialSettings(max_epochs=4, criterion="balanced_accuracy", min_sensitivity=0.0, seed=0, resources=Resources(1, 1.0, 0.0),
                             train_storage=str(tmp_path / "train"), experiment_dir=str(tmp_path))
    run_trial({"image_size": 32}, datasets={32: {}}, class_counts=(10, 10), settings=settings)
    [again] = reports
    assert again["epoch"] == 1 and again["objective"] == 0.75 and again["checkpoint_path"] == str(run / "checkpoint_1")
    assert math.isnan(again["time_this_iter_s"])
    # Epoch 2 scored better and Train dropped epoch 1's checkpoint: the trial ends on the epoch whose weights are kept,
    # never on epoch 1's metrics beside epoch 2's weights (what an export would then have shipped).
    reports.clear()
    shutil.rmtree(run / "checkpoint_1")
    run_trial({"image_size": 32}, datasets={32: {}}, class_counts=(10, 10), settings=settings)
    [again] = reports
    assert again["epoch"] == 2 and again["checkpoint_path"] == str(run / "checkpoint_2")


def test_a_resumed_search_keeps_no_export_and_a_finished_one_is_sent_to_report_only(tmp_path, monkeypatch):
    """Before: --resume of a search started with --no-export wrote best/ (model.onnx, card) all the same, and --resume of
    a finished search started Ray (35 s) and the whole start-up again without a word that nothing was left to run."""
    from cxr_tune.experiment import Experiment
    from cxr_tune.search import finish, runner
    from cxr_tune.search.options import SearchOptions

    experiment, runs = tmp_path / "runs" / "exp", tmp_path / "runs"
    exports, left = [], ["2 of its 4 trials ended"]

    def search(options: SearchOptions, resume: bool = False, **kwargs) -> tuple[str, str]:
        if not resume:
            experiment.mkdir(parents=True)
            (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        return str(experiment), "complete"

    monkeypatch.setattr(runner, "run_search", search)
    monkeypatch.setattr(finish, "finish_experiment", lambda path, **kwargs: exports.append(kwargs["export"]) or {})
    asked: list = []  # the final fit each check counted: a --resume --no-final-fit asks without it
    monkeypatch.setattr(finish, "unfinished", lambda experiment, final_fit=None: asked.append(final_fit) or left[0])
    monkeypatch.setattr(Experiment, "has_tune_state", lambda self: True)  # one stopped before Tune's first step starts afresh
    started = call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(runs), "--name", "exp", "--no-export", "--no-final-fit")
    resumed = call_cli("cxr_tune.search", "--storage", str(runs), "--name", "exp", "--resume")
    assert started.returncode == resumed.returncode == 0, started.stderr + resumed.stderr
    assert exports == [False, False]  # the resume exports nothing, as the search it continues
    assert SearchOptions.from_json({"data": {}}).export  # an experiment.json from before the record: exported on resume, as before
    left[0] = ""  # every trial (and its final fit) ended
    for name in ("trials.csv", "report.md"):  # and the search wrote its files (started with --no-export: no best/)
        (experiment / name).write_text("")
    done = call_cli("cxr_tune.search", "--storage", str(runs), "--name", "exp", "--resume")
    assert done.returncode == 0 and exports == [False, False]  # a retry of a finished search: nothing to do, not bad input (2, before)
    assert done.stderr.strip().splitlines() == [
        f"experiment '{experiment}' is finished: every trial ended, so --resume has nothing to run; its trial table and report "
        f"are written again with: python -m cxr_tune.search --name exp --storage {runs} --report-only --no-export"]
    assert asked == [False, False]  # the experiment was started with --no-final-fit: the check leaves its final fit out
    left[0] = "its final fit did not finish (1 of 2 runs ended)"
    options = json.loads((experiment / "experiment.json").read_text())
    options["options"]["final_fit"] = True
    (experiment / "experiment.json").write_text(json.dumps(options))
    call_cli("cxr_tune.search", "--storage", str(runs), "--name", "exp", "--resume", "--no-final-fit")
    assert asked[-1] is False  # the override, not the record (before: the recorded final fit, so Ray started to run nothing)


def test_a_finished_search_whose_table_report_or_best_a_stop_left_unwritten_has_them_written_by_resume(tmp_path, monkeypatch):
    """Before: --resume of a search whose trials ended but which was stopped while it wrote its trial table, report and best/
    said it was finished and ended with status 0, writing nothing: a scheduler's retry ended 'done' without a model or report."""
    from cxr_tune.experiment import Experiment
    from cxr_tune.search import finish, runner

    experiment, runs = tmp_path / "runs" / "exp", tmp_path / "runs"
    written: list = []  # each finish_experiment (faked): export, interrupted

    def search(options, resume: bool = False, **kwargs) -> tuple[str, str]:
        experiment.mkdir(parents=True)
        (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        return str(experiment), "complete"

    monkeypatch.setattr(runner, "run_search", search)
    monkeypatch.setattr(finish, "finish_experiment", lambda path, **kwargs: written.append(kwargs) or {"unfinished": ""})
    monkeypatch.setattr(finish, "unfinished", lambda experiment, final_fit=None: "")  # every trial ended
    monkeypatch.setattr(Experiment, "has_tune_state", lambda self: True)
    assert call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(runs), "--name", "exp", "--no-final-fit").returncode == 0
    (experiment / "trials.csv").write_text("trial_id\na\n")  # the stop came after the table, before the export and report
    resumed = call_cli("cxr_tune.search", "--storage", str(runs), "--name", "exp", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert written[1:] == [{"export": True, "interrupted": None}]  # what --report-only writes
    assert resumed.stderr.strip().splitlines()[0] == (
        f"experiment '{experiment}' is finished, but its best/model.json and report.md were not written (a stop while it wrote "
        "them): writing them now, as --report-only does")
    (experiment / "report.md").write_text("# report")
    (experiment / "best").mkdir()
    (experiment / "best" / "model.json").write_text("{}")
    done = call_cli("cxr_tune.search", "--storage", str(runs), "--name", "exp", "--resume")
    assert done.returncode == 0 and len(written) == 2  # every file there: nothing run, nothing written, today's one line
    assert done.stderr.strip().splitlines()[0].startswith(f"experiment '{experiment}' is finished: every trial ended, so --resume has nothing")
    (experiment / "report.md").unlink()
    failed = finish.NothingToSelect("no trial of exp trained an epoch, so there is nothing to select or export")
    monkeypatch.setattr(finish, "finish_experiment", lambda path, **kwargs: (_ for _ in ()).throw(failed))
    none = call_cli("cxr_tune.search", "--storage", str(runs), "--name", "exp", "--resume")
    assert none.returncode == 1 and none.stderr.strip().splitlines()[-1] == f"error: {failed}"  # as the search itself ended: it made no model


def test_a_resume_takes_another_cache_dir_and_the_experiment_keeps_it(tmp_path, monkeypatch, capsys):
    """Before: --resume --cache-dir was refused ("--cache-dir cannot apply"), so a search whose cache moved could not go on
    (the image caches are found by content hash and rebuilt where missing, and the study re-pointed: the search is the same)."""
    from cxr_tune.experiment import Experiment
    from cxr_tune.search.__main__ import main
    from tests.conftest import folder_with_bad_files, lines_before_ray

    common = ["--storage", str(tmp_path / "runs"), "--name", "exp"]
    lines_before_ray(main, ["--space", "smoke", "--data", str(folder_with_bad_files(tmp_path / "data")), *common,
                            "--cache-dir", str(tmp_path / "old")], monkeypatch, capsys)  # started, then stopped before Ray
    lines = lines_before_ray(main, [*common, "--resume", "--cache-dir", str(tmp_path / "moved")], monkeypatch, capsys)
    assert lines[-1].startswith("Ray and Optuna logs: ")
    assert Experiment(str(tmp_path / "runs" / "exp")).cache_dir == str(tmp_path / "moved")  # export and --report-only find it there


def test_report_only_takes_another_cache_dir_and_the_experiment_keeps_it(tmp_path, monkeypatch, capsys):
    """Before: --report-only --cache-dir was refused ("--cache-dir cannot apply"), and --resume of a finished search is refused
    too, so a finished search whose cache moved could not record the new place, where its export reads the images it scores."""
    from cxr_tune.experiment import Experiment
    from cxr_tune.search import finish
    from cxr_tune.search.__main__ import main
    from tests.conftest import folder_with_bad_files, lines_before_ray

    common = ["--storage", str(tmp_path / "runs"), "--name", "exp"]
    lines_before_ray(main, ["--space", "smoke", "--data", str(folder_with_bad_files(tmp_path / "data")), *common,
                            "--cache-dir", str(tmp_path / "old")], monkeypatch, capsys)  # started, then stopped before Ray
    read_from = []  # where the export (faked) finds the experiment's cache
    monkeypatch.setattr(finish, "finish_experiment", lambda path, **kwargs: read_from.append(Experiment(path).cache_dir) or {"unfinished": ""})
    assert main([*common, "--report-only", "--cache-dir", str(tmp_path / "moved")]) == 0
    assert read_from == [str(tmp_path / "moved")]
    assert Experiment(str(tmp_path / "runs" / "exp")).cache_dir == str(tmp_path / "moved")  # and export after it
