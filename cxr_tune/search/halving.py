"""Optuna's successive-halving rule as a Tune scheduler (``search.asha_rule: optuna`` in a space file).

Why: both Ray's ``ASHAScheduler`` and Optuna's ``SuccessiveHalvingPruner`` are asynchronous
successive halving, with rungs at grace_period * reduction_factor^k, but they promote differently.
Ray lets a trial past a rung when its objective reaches the (1 - 1/rf) percentile, interpolated, of
the objectives recorded there before it; Optuna when it is among the best max(1, n // rf) of the n
trials at the rung, itself included. With the few trials a search here has at a rung, Optuna's rule
is the stricter one: replayed on the full curves of one 24-trial random search (``bench replay``) it
ran 31 % of the trial-epochs where Ray's ran 45 %, and both kept the same best trial; in a live
TPE + ASHA search (``bench search``, 2026-12-04) it ran 41 % of random search's trial-epochs where Ray's
ran 64 % the run before, and 26 % and 39 % with seeds 1 and 2, each at a best a little below random search's,
inside the external set's noise. This wraps
Optuna's own pruner, on an in-memory study of its own, rather than writing the rule again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray.tune.schedulers import FIFOScheduler, TrialScheduler


@dataclass
class _Running:
    handle: Any  # the trial's Optuna trial
    last_epoch: int = 0
    best: float = -math.inf


class OptunaHalving(FIFOScheduler):
    """Stops a trial at a rung when Optuna's ``SuccessiveHalvingPruner`` would prune it there.

    The study is created at the first trial, so the scheduler Tune pickles with the tuner holds
    none; a resumed search tells it the saved trials' epochs again (:func:`cxr_tune.search.runner.tell_saved_trials`)."""

    def __init__(self, max_epochs: int, grace_period: int, reduction_factor: int, metric: str = "objective",
                 time_attr: str = "epoch") -> None:
        super().__init__()
        self._metric, self._mode = metric, "max"
        self.time_attr, self.max_epochs = time_attr, max_epochs
        self.grace_period, self.reduction_factor = grace_period, reduction_factor
        self._study: Any = None
        self._trials: dict[str, _Running] = {}  # by Tune trial id, until the trial ends

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return not (metric and metric != self._metric) and not (mode and mode != self._mode)

    def study(self) -> Any:
        if self._study is None:
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=self.grace_period, reduction_factor=self.reduction_factor)
            self._study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
        return self._study

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if trial.trial_id not in self._trials:  # a resumed trial keeps the record its saved epochs were told to: its rungs passed
            self._trials[trial.trial_id] = _Running(self.study().ask())

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if self.time_attr not in result or self._metric not in result or trial.trial_id not in self._trials:
            return TrialScheduler.CONTINUE
        epoch, value = int(result[self.time_attr]), float(result[self._metric])
        running = self._trials[trial.trial_id]
        if epoch <= running.last_epoch:
            return TrialScheduler.CONTINUE  # an epoch reported again after a restart: already judged
        running.last_epoch = epoch
        if not math.isnan(value):
            running.best = max(running.best, value)
        running.handle.report(value, epoch)
        if running.handle.should_prune() and epoch < self.max_epochs:
            self._end(trial.trial_id, pruned=True)
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._end(trial.trial_id, pruned=False)

    def on_trial_error(self, tune_controller: Any, trial: Any) -> None:
        self._end(trial.trial_id, pruned=False)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._end(trial.trial_id, pruned=False)

    def _end(self, trial_id: str, *, pruned: bool) -> None:
        """Closes the trial's Optuna record; the values it left at its rungs keep counting for later trials."""
        import optuna

        running = self._trials.pop(trial_id, None)
        if running is None:
            return
        if pruned:
            self._study.tell(running.handle, state=optuna.trial.TrialState.PRUNED)
        elif running.best == -math.inf:
            self._study.tell(running.handle, state=optuna.trial.TrialState.FAIL)
        else:
            self._study.tell(running.handle, running.best)

    def debug_string(self) -> str:
        return f"Optuna's successive halving: rungs from epoch {self.grace_period}, reduction factor {self.reduction_factor}"
