"""The Tune searcher: Ray's ``OptunaSearch`` with a study that stays in step with Tune and learns what selection judges.

Two things Ray 2.60's ``OptunaSearch`` gets wrong for this search (checked in its source):

- it reports each result to Optuna at Tune's ``training_iteration`` (which restarts count again)
  and, when a trial ends, tells Optuna the trial's *last* result as COMPLETE. Selection judges a
  trial by its *best* epoch, and ASHA stops most trials early at a low rung: TPE then learned from
  last-epoch values and counted every stopped trial as a finished one with a low-rung value, which
  pulls it towards configurations that converge fast.
- Here each epoch reports the trial's best objective so far at step ``epoch`` (our own epoch count,
  which survives restarts); a trial that ran its full ``max_epochs`` is told COMPLETE with its best
  epoch's objective (the number :func:`cxr_tune.selection.best_epoch` judges it by), and a trial
  that ended early without an error (ASHA stopped it, or the search's end cut it short) is told
  PRUNED, so TPE ranks it below finished trials by how far it got and how good it was.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from optuna.storages import RDBStorage
from ray.tune.search.optuna import OptunaSearch

from cxr_tune.search.study import TUNE_TRIAL_ATTR, running_study_path, upload_study


class StudySearch(OptunaSearch):
    """Ray's ``OptunaSearch`` with a study (``study.db``) that stays in step with Tune's trials.

    - Each Optuna trial carries its Tune trial id (user attribute ``tune_trial_id``).
    - Optuna writes a trial to the study, RUNNING, the moment it is suggested; Tune saves its own
      state (this searcher's included) only every ~10 s. A driver killed in between leaves a
      RUNNING trial that no resumed search knows, will never finish, and that TPE's constant liar
      keeps counting as a point being evaluated. So whenever this searcher starts or is restored,
      RUNNING trials outside its own record are marked FAIL.
    - For an experiment on object storage (``remote``: the study's URI) the local SQLite file is
      uploaded whenever a trial starts and ends, so a lost head node loses only the running
      trials' intermediate values.
    - Values: see the module docstring (best epoch, PRUNED for trials that ended early).
    - A resumed search opens this run's study file (:func:`cxr_tune.search.study.running_study`), not the one Tune
      pickled the searcher with: on another head node, or with another cache, that one is gone or no longer the experiment's.
    """

    def __init__(self, *, database: str, max_epochs: int, remote: str | None = None, **kwargs: Any) -> None:
        self._remote, self._max_epochs = remote, max_epochs
        self._best: dict[str, float] = {}  # saved with the searcher (OptunaSearch pickles its __dict__)
        self._reported: dict[str, set[int]] = {}
        super().__init__(storage=_StudyStorage(database), **kwargs)
        self._fail_abandoned()

    @property
    def _database(self) -> str:
        """The study file this searcher writes (and uploads): the one its storage opened, re-pointed when it was restored."""
        return self._storage.url.removeprefix(_SQLITE)

    def suggest(self, trial_id: str) -> dict | None:
        new = trial_id not in self._ot_trials
        config = super().suggest(trial_id)
        if new and trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TUNE_TRIAL_ATTR, trial_id)
            self._upload()
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value, epoch = result.get(self.metric), result.get("epoch")
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or not _finite(value) or epoch is None:
            return
        best = max(value, self._best.get(trial_id, -math.inf))
        self._best[trial_id] = best
        steps = self._reported.setdefault(trial_id, set())
        if int(epoch) not in steps:  # a trial restarted from a checkpoint repeats no epoch, but a lost report may come twice
            try:
                self._ot_trials[trial_id].report(best, int(epoch))
            except RuntimeError as exc:  # told finished already: at the end of a budget-ended search, after Tune's last snapshot of this searcher
                import logging

                logging.getLogger(__name__).warning(exc)
            steps.add(int(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from optuna.trial import TrialState

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        if result:
            self.on_trial_result(trial_id, result)  # the last result may not have been reported yet
        best = self._best.get(trial_id)
        ran_all = bool(result) and int(result.get("epoch") or 0) >= self._max_epochs
        if error or best is None:  # nothing measured (an error, a budget that ended it before its first epoch, never a finite value):
            state, value = TrialState.FAIL, None  # TPE ignores it; PRUNED with no value would count as its worst result
        elif ran_all and best is not None:
            state, value = TrialState.COMPLETE, best
        else:
            state, value = TrialState.PRUNED, None  # Optuna keeps the last reported value: the best so far
        try:
            self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        except Exception as exc:  # noqa: BLE001 - what OptunaSearch does: a bad value must not end the search
            import logging

            logging.getLogger(__name__).warning(exc)
        self._completed_trials.add(trial_id)
        self._upload()

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._best = getattr(self, "_best", {})
        self._reported = getattr(self, "_reported", {})
        self._count_told()
        self._fail_abandoned()
        self._upload()

    def _count_told(self) -> None:
        """Trials the study holds finished are complete here too. Tune's last snapshot of this searcher can predate
        the end of the search (a budget's end tells the study about the trials it cut short); told again on
        resume, Optuna refused each on the console ('Trial#2 has already finished', 'Cannot tell a PRUNED trial')."""
        from optuna.trial import TrialState

        finished = {trial.number for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))}
        self._completed_trials.update(trial_id for trial_id, trial in self._ot_trials.items() if trial.number in finished)

    def _fail_abandoned(self) -> None:
        from optuna.trial import TrialState

        known = {trial.number for trial in self._ot_trials.values()}
        for trial in self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial.number not in known:
                self._ot_study.tell(trial.number, state=TrialState.FAIL)

    def _upload(self) -> None:
        if self._remote:
            upload_study(self._database, self._remote)


_SQLITE = "sqlite:///"


class _StudyStorage(RDBStorage):
    """Optuna's storage on a local SQLite file. Unpickled while a search resumes (Tune's ``tuner.pkl`` and searcher state
    hold it, with the first head node's absolute path), it opens the study file of the search running now instead
    (``running_study``): the copy this run downloaded, which ``copy_study`` uploads at the end. Re-pointed here, because
    unpickling opens the file."""

    def __init__(self, database: str) -> None:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        super().__init__(_SQLITE + database)

    def __setstate__(self, state: dict[str, Any]) -> None:
        if database := running_study_path():
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            state = {**state, "url": _SQLITE + database}
        super().__setstate__(state)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
