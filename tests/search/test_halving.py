"""Optuna's successive-halving rule as the search's scheduler (``asha_rule: optuna``), driven as Tune drives it."""

from __future__ import annotations

from types import SimpleNamespace

from ray.tune.schedulers import TrialScheduler

from cxr_tune.search.runner import asha_scheduler
from cxr_tune.search.space import SearchSettings

OPTUNA = SearchSettings(max_epochs=9, grace_period=1, reduction_factor=3, asha_rule="optuna")


def report(scheduler, trial_id: str, epoch: int, objective: float) -> str:
    return scheduler.on_trial_result(None, SimpleNamespace(trial_id=trial_id), {"epoch": epoch, "objective": objective})


def start(scheduler, *trial_ids: str) -> None:
    for trial_id in trial_ids:
        scheduler.on_trial_add(None, SimpleNamespace(trial_id=trial_id))


def test_a_trial_goes_on_only_among_the_best_third_of_those_at_its_rung_itself_included():
    scheduler = asha_scheduler(9, OPTUNA)
    start(scheduler, *"abcdef")
    assert report(scheduler, "a", 1, 0.70) == TrialScheduler.CONTINUE  # alone at the rung: the best
    assert report(scheduler, "b", 1, 0.60) == TrialScheduler.STOP  # 2 at the rung: only the best goes on
    # Ray's percentile cutoff lets this one through (0.68 >= 0.60 + 2/3 * (0.70 - 0.60)); Optuna's rule does not
    assert report(scheduler, "c", 1, 0.68) == TrialScheduler.STOP
    assert report(scheduler, "d", 1, 0.75) == TrialScheduler.CONTINUE
    assert report(scheduler, "e", 1, 0.72) == TrialScheduler.STOP  # 5 there: max(1, 5 // 3) = 1 goes on
    assert report(scheduler, "f", 1, 0.71) == TrialScheduler.STOP
    assert report(scheduler, "a", 2, 0.5) == TrialScheduler.CONTINUE  # between rungs nothing is judged
    assert report(scheduler, "a", 3, 0.8) == TrialScheduler.CONTINUE
    assert report(scheduler, "a", 3, 0.1) == TrialScheduler.CONTINUE  # an epoch told again after a restart is not judged again


def test_ray_s_rule_is_the_more_lenient_with_few_trials_at_a_rung():
    ray = asha_scheduler(9, SearchSettings(max_epochs=9, grace_period=1, reduction_factor=3))
    start(ray, "a", "b", "c")
    assert [report(ray, t, 1, v) for t, v in (("a", 0.70), ("b", 0.60), ("c", 0.68))] == [
        TrialScheduler.CONTINUE, TrialScheduler.STOP, TrialScheduler.CONTINUE]


def test_the_last_epoch_is_never_a_stop_and_ended_trials_keep_counting_at_their_rungs():
    scheduler = asha_scheduler(3, SearchSettings(max_epochs=3, grace_period=1, reduction_factor=3, asha_rule="optuna"))
    start(scheduler, "a", "b")
    assert report(scheduler, "a", 1, 0.9) == TrialScheduler.CONTINUE
    assert report(scheduler, "a", 3, 0.2) == TrialScheduler.CONTINUE  # rung 3 is the end: the trial finishes
    scheduler.on_trial_complete(None, SimpleNamespace(trial_id="a"), {"epoch": 3, "objective": 0.2})
    assert report(scheduler, "b", 1, 0.8) == TrialScheduler.STOP  # a finished trial's rung-1 value still competes
    scheduler.on_trial_complete(None, SimpleNamespace(trial_id="b"), {"epoch": 1, "objective": 0.8})  # after a stop: nothing to close
