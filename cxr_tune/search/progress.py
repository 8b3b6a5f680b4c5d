"""Search progress for a person watching: trials starting and ending, each new best, time left.

Tune's own status tables are switched off: they do not know the selection metric and print every
field of every result. By default one line per trial start, per trial end and per new best, and
(on a terminal) an overall progress bar with an estimate of the time left; ``verbose`` adds a
line per trial epoch.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, ClassVar, TextIO

import pandas as pd
from ray.tune import Callback

from cxr_tune import storage
from cxr_tune.formatting import clock, time_left
from cxr_tune.search.budget import SessionBudget
from cxr_tune.search.results import trial_error, trial_error_file
from cxr_tune.selection import diverged


class ProgressPrinter(Callback):
    """Prints ``[mm:ss] ...`` lines and keeps a tqdm bar of trial-epochs (ASHA's skipped epochs count as done).

    Tune saves its callbacks with the experiment and a resumed search runs with the saved copy, so
    what belongs to the running command (``verbose``, the clock) is not taken from that copy.
    """

    verbose: ClassVar[bool] = False  # set for each command by the runner, fresh or resumed
    # Set by the runner on --resume (results.trial_counts): the trials that trained, by their saved
    # results and checkpoints. A trial the time budget stopped after its epoch reached its checkpoint
    # but before the epoch's report reached Tune trained, though Tune's copy shows no epoch.
    trained_before: ClassVar[frozenset[str]] = frozenset()
    best_before: ClassVar[tuple[float, str] | None] = None  # a resumed search's best so far: "new best" beats it, not just this session's
    # The Tune experiment folder (the search's, or its final fit's) whose trial folders hold each failed trial's error.txt:
    # set for each command by whoever runs it, as a saved copy may come from a folder since moved.
    errors_in: ClassVar[str | None] = None

    def __init__(self, total_trials: int, max_epochs: int, criterion: str, deciding: str, *, stream: TextIO | None = None, label: str = "trial",
                 budgeted: bool = True) -> None:
        self.label = label  # what a Tune trial is called on the console: a search trial, or a final-fit run
        self.budgeted = budgeted  # a search's budgets end it; they never end the final fit that follows
        self.total = total_trials
        self.max_epochs = max_epochs
        self.criterion = criterion.replace("_", " ")
        self.prefix = "ext" if deciding == "external" else "val"
        self.deciding = deciding
        self.stream = stream or sys.stdout
        self.best: tuple[float, str] | None = None
        self.finished = 0
        self.epochs: dict[str, int] = {}
        self._start_clock()

    def _start_clock(self) -> None:
        """This command's clock; the time-left estimate counts only the trial-epochs done since."""
        self.started = time.monotonic()
        self.done_before = sum(self.epochs.values())
        self.starts: dict[str, int] = {}  # a restart is one in this command: a resumed search starts its unfinished trials again, no failure
        self._bar: Any = None

    @property
    def bar(self) -> Any:
        """The tqdm bar, made on first use. ``disable=None``: no bar (and no escape codes) when the
        output is not a terminal; the lines still say how many trials are done and the time left."""
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total * self.max_epochs, initial=self.done_before, unit="epoch", desc="Search", disable=None, leave=False,
                             dynamic_ncols=True, file=self.stream,
                             bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} trial-epochs [{elapsed}<{remaining}]")
        return self._bar

    def __getstate__(self) -> dict[str, Any]:
        """Tune saves its callbacks with the experiment; a bar and a console are not saved."""
        return {**self.__dict__, "_bar": None, "stream": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("label", "trial")
        self.__dict__.setdefault("budgeted", self.label == "trial")
        self.stream = self.stream or sys.stdout
        self._start_clock()  # a monotonic reading from another process means nothing here

    def say(self, text: str) -> None:
        """One line on the console, above the bar."""
        self.bar.write(text, file=self.stream)
        self.stream.flush()

    def _count(self, trials: list, ending: Any = None) -> int:
        """Trials that have ended, counted from Tune's list so a resumed search counts the earlier
        ones; a trial a time budget ended before its first epoch is not counted (a resume replaces it),
        one whose epoch only its checkpoint holds is (as in the trial table)."""
        ended = {t.trial_id for t in trials
                 if t.status == "ERROR" or (t.status == "TERMINATED" and ((t.last_result or {}).get("epoch") or t.trial_id in self.trained_before))}
        if ending is not None:
            ended.add(ending.trial_id)
        self.finished = len(ended)
        return self.finished

    def _clock(self) -> str:
        return clock(time.monotonic() - self.started)

    def _left(self) -> str:
        """Time left, from the trial-epochs done (or skipped by ASHA) so far, or until a budget ends
        the search (:attr:`SessionBudget.ends_at`) when that comes first (a search's printer only); an estimate."""
        done, total, elapsed = sum(self.epochs.values()), self.total * self.max_epochs, time.monotonic() - self.started
        if done <= self.done_before or done >= total:
            return ""
        minutes, why = elapsed / (done - self.done_before) * (total - done) / 60, ""
        if self.budgeted and SessionBudget.ends_at and (SessionBudget.ends_at[0] - time.time()) / 60 < minutes:
            minutes, why = max(0.0, SessionBudget.ends_at[0] - time.time()) / 60, f" (the {SessionBudget.ends_at[1]})"
        return f", {time_left(minutes)}{why}"

    def _advance(self, trial_id: str, epoch: int) -> None:
        step = max(0, epoch - self.epochs.get(trial_id, 0))
        self.epochs[trial_id] = max(epoch, self.epochs.get(trial_id, 0))
        self.bar.update(step)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial's start, or its restart: Tune starts a failed trial again from its last checkpoint (FailureConfig)."""
        self.starts[trial.trial_id] = attempt = self.starts.get(trial.trial_id, 0) + 1
        if attempt > 1:
            self.say(f"{self._clock()} {self.label} {trial.trial_id} restarted (attempt {attempt}): the last one failed, the Ray log says why")
            return
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(trial.config.items()))
        self.say(f"{self._clock()} {self.label} {trial.trial_id} started: {params}")

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        objective = result.get("objective")
        if objective is None:
            return
        self._advance(trial.trial_id, int(result.get("epoch", 0)))
        summary = (f"{self.criterion} {objective:.4f} [{result.get('objective_low', math.nan):.3f}, {result.get('objective_high', math.nan):.3f}] "
                   f"on {self.deciding} validation, the selection set (AUC {result.get(f'{self.prefix}_auc', math.nan):.4f}, "
                   f"sens {result.get(f'{self.prefix}_sensitivity', math.nan):.3f}, spec {result.get(f'{self.prefix}_specificity', math.nan):.3f})")
        if self.verbose:
            self.say(f"{self._clock()} {self.label} {trial.trial_id} epoch {result.get('epoch')}/{self.max_epochs} {summary}")
        best = max((b for b in (self.best, self.best_before) if b is not None), default=None, key=lambda b: b[0])
        if not _diverged(result) and (best is None or objective > best[0]):  # a diverged epoch is never a best (selection.diverged)
            self.best = (objective, trial.trial_id)
            self.say(f"{self._clock()} new best: {self.label} {trial.trial_id} epoch {result.get('epoch')}, {summary}")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._count(trials, trial)
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self._advance(trial.trial_id, self.max_epochs)  # epochs ASHA saved are done too
        how = (f"diverged at epoch {epochs} (its scores were not finite: too high a learning rate)"
               if (trial.last_result or {}).get("diverged") else "finished" if epochs >= self.max_epochs else f"stopped by ASHA after {epochs} epoch(s)")
        self.say(f"{self._clock()} {self.label} {trial.trial_id} {how} ({self.finished}/{self.total} {self.label}s done{self._left()})")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._count(trials, trial)
        self._advance(trial.trial_id, self.max_epochs)
        where = trial_error_file(self.errors_in, trial) if self.errors_in else None
        self.say(f"{self._clock()} {self.label} {trial.trial_id} FAILED: {trial_error(self.errors_in, trial)}"
                 f"{f' (traceback: {where})' if where else ''}; the search goes on ({self.finished}/{self.total} {self.label}s done{self._left()})")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._bar is not None:
            self._bar.close()


def _diverged(result: dict) -> bool:
    return bool(diverged(pd.DataFrame([result])).iloc[0])


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class TrialEventLog(Callback):
    """Adds why each trial ended to ``trial_events.jsonl`` in the experiment folder (``path``, local or on object storage).

    Tune marks a trial TERMINATED whether ASHA stopped it, it ran all its epochs, or the search
    ended around it (time budget, Ctrl-C); only this log tells them apart afterwards. Object storage
    has no append, so each end writes the (small) file whole, atomically: a kill leaves it as it was
    before that line or after it, locally and on ``s3://`` alike.
    """

    def __init__(self, path: str, max_epochs: int) -> None:
        self.path = path
        self.max_epochs = max_epochs

    def _write(self, trial: Any, event: str) -> None:
        """One line for the trial's end, unless its last line already says the same: a trial a kill left running in Tune's
        state ends again on ``--resume`` as it had ended (:func:`cxr_tune.search.trial.report_again_if_ended`), one end."""
        import json

        epochs = int((trial.last_result or {}).get("epoch", 0))
        text = self._text()
        ends = [record for record in _records(text) if record.get("trial_id") == trial.trial_id]
        if ends and (ends[-1].get("event"), ends[-1].get("epochs")) == (event, epochs):
            return
        line = json.dumps({"trial_id": trial.trial_id, "event": event, "epochs": epochs, "time": time.time()}) + "\n"
        storage.write_text_atomic(self.path, text + line)

    def _text(self) -> str:
        return storage.read_text(self.path) if storage.exists(self.path) else ""

    def _logged(self) -> set[str]:
        """The trials whose end the file holds (from every command that ran the search: a resumed
        command's copy of this log was saved before the trials of earlier commands ended)."""
        return {record["trial_id"] for record in _records(self._text()) if "trial_id" in record}

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """A budget ends the search without ending its running trials through Tune's callbacks: they are cut short,
        Tune's last result or not (an epoch only the trial's checkpoint holds still counts in the trial table)."""
        if SessionBudget.ended:
            logged = self._logged()
            for trial in trials:
                if trial.status == "TERMINATED" and trial.trial_id not in logged:
                    self._write(trial, "cut short")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self._write(trial, "diverged" if (trial.last_result or {}).get("diverged") else "completed" if epochs >= self.max_epochs else "ASHA stopped")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "error")


def _records(text: str) -> list[dict[str, Any]]:
    """The lines of ``trial_events.jsonl`` (one cut short by a kill mid-write, before writes were atomic, skipped)."""
    import json

    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
