"""Time budgets and trial bookkeeping that survive ``--resume``.

Tune saves its stopper, its trial generator and its callbacks with the experiment and, on resume,
runs with the saved copies. The classes here are written for that: the budget belongs to the
running command, a generator a budget ended generates again, and trials a budget ended are
reported to the searcher.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

from ray.tune import Callback, Stopper
from ray.tune.search import BasicVariantGenerator, SearchGenerator

from cxr_tune.errors import UserError
from cxr_tune.search.pace import FinalFitShape, TrialPace, final_fit_seconds

# What a whole-job budget keeps back besides the final fit's epochs: the final fit's own start (Ray,
# image caches), the export and the report. The carved real-data job of 2026-12-05 spent 1.1 of its
# 88.4 minutes outside its search (34.2) and final fit (53.1); this is about twice that.
EXPORT_RESERVE_SECONDS = 120.0


class SessionBudget(Stopper):
    """Ends the search :attr:`minutes` after the first Tune step of *this* command, whether it
    started the search or resumed it (None: no limit), or, with a whole-job budget, as soon as
    what is left of it would not hold the final fit (estimated from the trials' own epochs,
    :mod:`cxr_tune.search.pace`) and the export.

    Not before :attr:`settled_after` (``startup_trials`` trials at ASHA's first rung): until then
    the ranking is a few random draws, and one slow early leader (a 96-px trial with a final fit
    of 80 minutes, say) would end a 90-minute search after 8 minutes. Past that point the
    estimate rules; only the whole budget, spent, ends the search earlier.

    Tune saves its stopper with the experiment, and a resumed search runs with the saved copy, not
    the one it was given: Tune's own ``TimeoutStopper`` came back with its budget spent (a search
    its budget had stopped stopped again at once) or, for a search started without one, with no
    budget at all. This one keeps no budget of its own: it reads the running command's
    :attr:`minutes` and :attr:`job_deadline`, and a restored copy starts its clock afresh.
    """

    minutes: ClassVar[float | None] = None  # --time-budget; every class setting here is set for each command by runner._set_budgets
    job_deadline: ClassVar[float | None] = None  # --job-budget: the time.time() by which the whole command should be done
    final_fit: ClassVar[FinalFitShape | None] = None  # what the final fit after this search will train (None: none)
    ended: ClassVar[str] = ""  # what ended this command's search: "", "time budget" or "job budget"
    estimate_seconds: ClassVar[float | None] = None  # with a job budget: the final fit's estimate at the last check
    settled_after: ClassVar[tuple[int, int]] = (0, 0)  # (trials, epochs): how many must have reached that epoch first
    ends_at: ClassVar[tuple[float, str] | None] = None  # when the budgets now say the search ends, and which (for the console)

    def __init__(self) -> None:
        self._deadline: float | None = None
        self._paces: dict[str, TrialPace] = {}
        self._estimate: float | None = None  # the final fit's, as of the last result (None: to be worked out)

    def __call__(self, trial_id: str, result: dict) -> bool:
        self._paces.setdefault(trial_id, TrialPace()).add(result)
        self._estimate = None
        return False

    def stop_all(self) -> bool:
        now = time.time()
        ends: list[tuple[float, str]] = []
        if SessionBudget.minutes is not None:
            if self._deadline is None:
                self._deadline = now + SessionBudget.minutes * 60
            ends.append((self._deadline, "time budget"))
        if SessionBudget.job_deadline is not None:
            if self._estimate is None:  # Tune asks at every step; the ranking changes only with a result
                self._estimate = final_fit_seconds(self._paces, SessionBudget.final_fit) if SessionBudget.final_fit else 0.0
            SessionBudget.estimate_seconds = self._estimate
            final_fit = (self._estimate or 0.0) if self._settled() else 0.0  # unsettled, only the spent budget ends it
            ends.append((SessionBudget.job_deadline - final_fit - EXPORT_RESERVE_SECONDS, "job budget"))
        SessionBudget.ends_at = min(ends) if ends else None
        if SessionBudget.ends_at and now >= SessionBudget.ends_at[0]:
            SessionBudget.ended = SessionBudget.ends_at[1]
            return True
        return False

    def _settled(self) -> bool:
        trials, epochs = SessionBudget.settled_after
        return sum(1 for pace in self._paces.values() if pace.epochs and max(row["epoch"] for row in pace.epochs) >= epochs) >= trials

    def __setstate__(self, state: dict) -> None:
        self._deadline, self._estimate = None, None
        self._paces = state.get("_paces", {})  # the epochs it saw before: the leaders may not train again


class ResumableTrials(SearchGenerator):
    """Tune's trial generator, except that a restored one generates trials again, as many as
    :attr:`total` says, at most :attr:`concurrency` at once.

    When a stopper ends a search (the time budget), Tune marks its generator finished and saves
    it that way; restored as saved, a resumed search would start no new trial. And the trials the
    budget ended before their first epoch count as generated, though they never trained: a resume
    sets :attr:`total` to the search's trials plus those, so each is replaced by a new one.
    """

    total: ClassVar[int | None] = None  # set for a resumed search by _tuner (None: as saved)
    concurrency: ClassVar[int | None] = None  # the resumed command's trials at once (its cluster and flags), over the saved limit

    def set_state(self, state: dict) -> None:
        super().set_state({**state, "finished": False, **({"total_samples": ResumableTrials.total} if ResumableTrials.total else {})})
        if ResumableTrials.concurrency and hasattr(self.searcher, "max_concurrent"):  # restored after the limiter's own state
            self.searcher.max_concurrent = ResumableTrials.concurrency


class FinalFitRuns(BasicVariantGenerator):
    """The final fit's run generator (a grid of its runs); restored by a resumed final fit, it starts at most
    :attr:`concurrency` runs at once, as this command planned for its cluster, not the limit the first command saved
    (Tune restores both ``TuneConfig.max_concurrent_trials`` and the generator's own limit as saved)."""

    concurrency: ClassVar[int | None] = None  # set by the final fit, fresh or resumed

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if FinalFitRuns.concurrency:
            self.max_concurrent = FinalFitRuns.concurrency


class TrialsCatchUp(Callback):
    """Tells the searcher about trials Tune ended without telling it.

    When a stopper ends the search (the time budget), Tune marks the running trials TERMINATED
    but never reports them to the searcher: the concurrency limiter keeps their places, so a
    resumed search would wait forever for a free one, and the study keeps them RUNNING. At each
    step (the first of a resumed search among them) such trials are reported ended, with their
    last result, and at the end of a search a budget ended (then the study holds none RUNNING). Not at
    the end of one Ctrl-C ended: Tune ends its running trials the same way, and those a resume continues.
    """

    def __init__(self, search_alg: ResumableTrials, experiment_dir: str | None = None) -> None:
        self.search_alg = search_alg  # the very object Tune uses: both are saved in tuner.pkl
        self.experiment_dir = experiment_dir

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if SessionBudget.ended:
            self.on_step_begin(0, trials)

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        live = self.search_alg.searcher.live_trials  # the ConcurrencyLimiter's
        for trial in trials:
            if trial.trial_id in live and trial.status in ("TERMINATED", "ERROR"):
                result = trial.last_result or None
                if trial.status == "TERMINATED":
                    result = self._with_checkpointed_epochs(trial.trial_id, result)
                self.search_alg.on_trial_complete(trial.trial_id, result=result, error=trial.status == "ERROR")

    def _with_checkpointed_epochs(self, trial_id: str, result: dict | None) -> dict | None:
        """The trial's last result, after telling the searcher the epochs only its checkpoint holds.

        The stopper can end a trial after Ray Train registered an epoch's checkpoint and before
        that epoch's report reached Tune; the trial table reads the epoch from the checkpoint, so
        the study must count it too (else a trial that ran all its epochs is told as cut short).
        """
        from cxr_tune.search.results import newest_checkpoint_history, train_run

        if self.experiment_dir is None:
            return result
        try:
            history = newest_checkpoint_history(train_run(self.experiment_dir, trial_id))
        except (UserError, OSError):  # a checkpoint cut short (errors.damaged: a UserError) or a store out of reach leaves Tune's
            return result  # result as it was; an error of our own is not hidden
        reported = int((result or {}).get("epoch") or 0)
        missed = [row for row in history if int(row["epoch"]) > reported]
        for row in missed:
            self.search_alg.searcher.on_trial_result(trial_id, row)
        return missed[-1] if missed else result
