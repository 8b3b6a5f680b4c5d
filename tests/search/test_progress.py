"""Search progress on the console: a resumed search's lines belong to the command that resumed it."""

import io
import pickle
from types import SimpleNamespace

from cxr_tune.search.progress import ProgressPrinter


def _trial(trial_id: str, epoch: int = 0, status: str = "RUNNING"):
    return SimpleNamespace(trial_id=trial_id, config={"lr": 0.001}, status=status, last_result={"epoch": epoch})


def _result(epoch: int, objective: float) -> dict:
    return {"epoch": epoch, "objective": objective, "objective_low": objective - 0.05, "objective_high": objective + 0.05,
            "val_auc": 0.9, "val_sensitivity": 0.8, "val_specificity": 0.7}


def test_a_resumed_search_prints_with_the_running_commands_clock_and_verbosity(monkeypatch):
    """Tune resumes a search with the copy of its callbacks it saved: the lines a resumed search
    prints start from its own clock, follow its own --verbose, and estimate the time left from
    the epochs it ran itself, not from the first command's pace."""
    first = ProgressPrinter(total_trials=4, max_epochs=5, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO())
    first.on_trial_start(0, [], _trial("a"))
    for epoch in range(1, 6):
        first.on_trial_result(0, [], _trial("a"), _result(epoch, 0.7))
    first.on_trial_complete(0, [_trial("a", 5, "TERMINATED")], _trial("a", 5, "TERMINATED"))
    first.started -= 3600  # as if the first command had run for an hour

    monkeypatch.setattr(ProgressPrinter, "verbose", True)  # the resuming command was given --verbose
    monkeypatch.setattr(ProgressPrinter, "trained_before", frozenset({"a"}))  # what the runner reads from the saved trials
    resumed = pickle.loads(pickle.dumps(first))  # what Tune hands back on resume
    console = io.StringIO()
    resumed.stream = console
    resumed.on_trial_start(0, [], _trial("b"))
    resumed.on_trial_result(0, [], _trial("b"), _result(1, 0.6))
    resumed.on_trial_result(0, [], _trial("b"), _result(2, 0.8))
    lines = console.getvalue().splitlines()
    assert lines and all(line.startswith("[00:0") for line in lines), lines  # this command's clock, not an hour in
    assert any("trial b epoch 1/5" in line for line in lines)  # verbose: a line per epoch
    assert any(line.startswith("[00:0") and "new best: trial b epoch 2" in line for line in lines)  # 0.8 beats the first command's 0.7
    never_trained = SimpleNamespace(trial_id="c", status="TERMINATED", last_result={})  # a budget ended it before its first epoch
    resumed.on_trial_complete(0, [_trial("a", 5, "TERMINATED"), never_trained, _trial("b", 5, "TERMINATED")], _trial("b", 5, "TERMINATED"))
    done = console.getvalue().splitlines()[-1]
    # Counts both commands' trials, not the one that never trained (a resume replaces it); estimates from this one's pace.
    assert "(2/4 trials done" in done and "left" in done


def test_a_resumed_search_counts_a_trial_whose_epoch_only_its_checkpoint_holds(monkeypatch):
    """A time budget can stop a trial after its epoch reached its checkpoint but before the epoch's
    report reached Tune: Tune's copy shows no epoch, the trial table (which reads the checkpoint)
    shows one. The resumed search's console counts it as the table does, so it ends at 4/4."""
    printer = ProgressPrinter(total_trials=4, max_epochs=1, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO())
    monkeypatch.setattr(ProgressPrinter, "trained_before", frozenset({"a", "c"}))
    checkpointed = SimpleNamespace(trial_id="c", status="TERMINATED", last_result={})
    never_trained = SimpleNamespace(trial_id="e", status="TERMINATED", last_result={})  # replaced by the resume, not counted
    trials = [_trial("a", 1, "TERMINATED"), checkpointed, never_trained, _trial("b", 1, "TERMINATED"), _trial("d", 1, "TERMINATED")]
    printer.on_trial_complete(0, trials, trials[-1])
    assert "(4/4 trials done" in printer.stream.getvalue().splitlines()[-1]


def test_a_resumed_search_calls_new_best_only_what_beats_every_epoch_so_far(monkeypatch):
    """An epoch can reach its checkpoint (and the table) but not Tune before Ctrl-C: before, the resumed search's first
    report was a "new best" below it, and the console contradicted the table."""
    monkeypatch.setattr(ProgressPrinter, "best_before", (0.5564, "a"))  # what the runner reads from the saved trials
    printer = ProgressPrinter(total_trials=4, max_epochs=3, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO())
    printer.on_trial_result(0, [], _trial("a"), _result(2, 0.5392))
    printer.on_trial_result(0, [], _trial("b"), _result(1, 0.6))
    news = [line for line in printer.stream.getvalue().splitlines() if "new best" in line]
    assert len(news) == 1 and "new best: trial b epoch 1" in news[0], news


def test_the_time_left_is_the_budgets_when_a_budget_ends_the_search_first(monkeypatch):
    """200 trials at this pace would take hours; a job budget that ends the search in 5 minutes is what the line says."""
    import time

    from cxr_tune.search.budget import SessionBudget

    printer = ProgressPrinter(total_trials=200, max_epochs=5, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO())
    printer.started -= 600  # ten minutes for the first trial's five epochs
    monkeypatch.setattr(SessionBudget, "ends_at", (time.time() + 5 * 60 + 30, "job budget"))
    for epoch in range(1, 6):
        printer.on_trial_result(0, [], _trial("a"), _result(epoch, 0.7))
    printer.on_trial_complete(0, [_trial("a", 5, "TERMINATED")], _trial("a", 5, "TERMINATED"))
    assert printer.stream.getvalue().splitlines()[-1].endswith("(1/200 trials done, about 6 min left (the job budget))")
    monkeypatch.setattr(SessionBudget, "ends_at", None)  # no budget: the trials' pace
    printer.on_trial_complete(0, [_trial("a", 5, "TERMINATED"), _trial("b", 5, "TERMINATED")], _trial("b", 5, "TERMINATED"))
    assert "min left" in printer.stream.getvalue().splitlines()[-1] and "budget" not in printer.stream.getvalue().splitlines()[-1]


def test_the_final_fit_s_time_left_is_its_own_not_the_search_s_budget(monkeypatch):
    """A search's budget ends the search only: the final fit after it runs to its end (before, its lines said
    "about 5 min left (the time budget)" with 16 minutes of final fit to go)."""
    import time

    from cxr_tune.search.budget import SessionBudget

    printer = ProgressPrinter(total_trials=6, max_epochs=5, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO(),
                              label="final-fit run", budgeted=False)
    printer.started -= 600
    monkeypatch.setattr(SessionBudget, "ends_at", (time.time() + 5 * 60, "time budget"))
    for epoch in range(1, 6):
        printer.on_trial_result(0, [], _trial("a"), _result(epoch, 0.7))
    printer.on_trial_complete(0, [_trial("a", 5, "TERMINATED")], _trial("a", 5, "TERMINATED"))
    line = printer.stream.getvalue().splitlines()[-1]  # 25 epochs to go at 2 minutes each: its own pace
    assert line.endswith("(1/6 final-fit runs done, about 51 min left)") and "budget" not in line, line


def test_each_way_a_trial_ends_has_its_own_line_and_the_scaling_benchmark_reads_the_last(monkeypatch):
    from cxr_tune.bench.scaling import search_end_minutes

    printer = ProgressPrinter(total_trials=3, max_epochs=4, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO())
    finished, stopped = _trial("a", 4, "TERMINATED"), _trial("b", 2, "TERMINATED")
    diverged = SimpleNamespace(trial_id="c", config={}, status="TERMINATED", last_result={"epoch": 1, "diverged": True})
    for minutes, trial in ((1, finished), (2, stopped), (3, diverged)):
        monkeypatch.setattr(printer, "started", __import__("time").monotonic() - 60 * minutes)
        printer.on_trial_complete(0, [finished, stopped, diverged], trial)
    lines = printer.stream.getvalue().splitlines()
    assert "trial a finished" in lines[0] and "trial b stopped by ASHA after 2 epoch(s)" in lines[1]
    assert "trial c diverged at epoch 1 (its scores were not finite" in lines[2] and "ASHA" not in lines[2]
    assert search_end_minutes("\n".join(lines[:2])) == 2.0 and search_end_minutes("\n".join(lines)) == 3.0  # before: the ASHA line was missed


def test_a_diverged_epoch_is_never_called_a_new_best():
    printer = ProgressPrinter(total_trials=2, max_epochs=3, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO())
    printer.on_trial_result(0, [], _trial("a"), {**_result(1, 0.5), "diverged": True, "val_non_finite": 89})
    printer.on_trial_result(0, [], _trial("b"), _result(1, 0.45))
    news = [line for line in printer.stream.getvalue().splitlines() if "new best" in line]
    assert len(news) == 1 and "new best: trial b epoch 1" in news[0], news


def test_a_budget_logs_every_trial_it_cut_short_even_one_whose_epochs_only_its_checkpoint_holds(tmp_path, monkeypatch):
    """Tune may end a trial before its first report arrives, after its checkpoint was written: the trial table counts
    that checkpoint's epochs, and without an event here it guessed 'ASHA stopped' when they fell on a rung."""
    import json

    from cxr_tune.search.budget import SessionBudget
    from cxr_tune.search.progress import TrialEventLog

    log = TrialEventLog(str(tmp_path / "trial_events.jsonl"), max_epochs=300)
    log.on_trial_complete(0, [], _trial("stopped", 2, "TERMINATED"))
    monkeypatch.setattr(SessionBudget, "ended", "time budget")
    unreported = SimpleNamespace(trial_id="unreported", config={}, status="TERMINATED", last_result={})
    log.on_experiment_end(trials=[_trial("stopped", 2, "TERMINATED"), unreported, _trial("pending", 0, "PENDING")])
    logged = [json.loads(line) for line in (tmp_path / "trial_events.jsonl").read_text().splitlines()]
    assert [(e["trial_id"], e["event"]) for e in logged] == [("stopped", "ASHA stopped"), ("unreported", "cut short")]



def test_a_trial_that_ends_again_as_it_had_ended_is_logged_once(tmp_path):
    """A trial a kill left running in Tune's state ends again on --resume as it had ended: trial_events.jsonl held its end
    twice (seen: 'completed' after 3 epochs, twice)."""
    import json

    from cxr_tune.search.progress import TrialEventLog

    log = TrialEventLog(str(tmp_path / "trial_events.jsonl"), max_epochs=3)
    log.on_trial_complete(0, [], _trial("done", 3, "TERMINATED"))
    log.on_trial_complete(0, [], _trial("stopped", 1, "TERMINATED"))
    resumed = TrialEventLog(str(tmp_path / "trial_events.jsonl"), max_epochs=3)  # the resumed command's copy
    resumed.on_trial_complete(0, [], _trial("done", 3, "TERMINATED"))
    resumed.on_trial_complete(0, [], _trial("stopped", 1, "TERMINATED"))
    resumed.on_trial_error(0, [], _trial("done", 3, "ERROR"))  # another end: logged
    logged = [json.loads(line) for line in (tmp_path / "trial_events.jsonl").read_text().splitlines()]
    assert [(e["trial_id"], e["event"], e["epochs"]) for e in logged] == [("done", "completed", 3), ("stopped", "ASHA stopped", 1), ("done", "error", 3)]


def test_a_trial_started_again_after_a_failure_is_called_a_restart_and_a_resumed_searchs_first_start_is_not():
    """Tune starts a failed trial again (FailureConfig): the console printed the same "started" line each time (three
    identical lines when the object store went away), with nothing saying it had failed. A search resumed with the saved
    printer starts its unfinished trials afresh, which is no failure."""
    printer = ProgressPrinter(total_trials=2, max_epochs=3, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO())
    for _ in range(3):
        printer.on_trial_start(0, [], _trial("a"))
    printer.on_trial_start(0, [], _trial("b"))
    lines = printer.stream.getvalue().splitlines()
    assert "trial a started: lr=0.001" in lines[0] and "trial b started: lr=0.001" in lines[3], lines
    assert "trial a restarted (attempt 2" in lines[1] and "trial a restarted (attempt 3" in lines[2], lines
    resumed = pickle.loads(pickle.dumps(printer))
    resumed.stream = io.StringIO()
    resumed.on_trial_start(0, [], _trial("b"))
    assert "trial b started: lr=0.001" in resumed.stream.getvalue()


def test_a_failed_trials_line_names_its_error_and_where_its_traceback_is(tmp_path, monkeypatch):
    """The FAILED line named neither ("trial aa76345d FAILED; the search goes on (2/2 trials done)"): the worker's exception
    is read from Tune's staging copy of error.txt (the experiment's copy comes with Tune's next sync), and the path named is
    the experiment's, where trials.csv's error column reads it from too."""
    staged = tmp_path / "session" / "error.txt"
    staged.parent.mkdir()
    staged.write_text("Failure # 3 (occurred at 2026-12-07_19-40-02)\nray.exceptions.RayTaskError(TrainingFailedError): ray::run_trial()\n"
                      "Traceback (most recent call last):\n  File \"loop.py\", line 9, in step\n"
                      "RuntimeError: DefaultCPUAllocator: can't allocate memory\n")
    monkeypatch.setattr(ProgressPrinter, "errors_in", str(tmp_path / "exp"))
    printer = ProgressPrinter(total_trials=2, max_epochs=3, criterion="balanced_accuracy", deciding="carved", stream=io.StringIO())
    trial = SimpleNamespace(**vars(_trial("aa76345d", 1, "ERROR")), storage=SimpleNamespace(trial_dir_name="aa76345d"), error_file=str(staged))
    printer.on_trial_error(0, [trial], trial)
    line = printer.stream.getvalue().strip()
    assert (f"trial aa76345d FAILED: RuntimeError: DefaultCPUAllocator: can't allocate memory (traceback: {tmp_path / 'exp' / 'aa76345d' / 'error.txt'}); "
            "the search goes on (1/2 trials done") in line, line
