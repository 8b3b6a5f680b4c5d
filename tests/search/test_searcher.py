"""What TPE learns from each trial: the value selection judges it by, and PRUNED for trials that ended early."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from cxr_tune.search.space import SpaceSampler, load_space


@pytest.fixture
def searcher(tmp_path):
    from cxr_tune.search.searcher import StudySearch

    return StudySearch(space=SpaceSampler(load_space("smoke")), metric="objective", mode="max", study_name="exp",
                       sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=3, database=str(tmp_path / "study.db"))


def told(searcher, trial_id: str) -> optuna.trial.FrozenTrial:
    """The trial as the study file holds it (what TPE and optuna-dashboard read)."""
    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{searcher._database}")
    return next(t for t in study.get_trials() if t.user_attrs.get("tune_trial_id") == trial_id)


def run(searcher, trial_id: str, objectives: list[float], *, error: bool = False) -> optuna.trial.FrozenTrial:
    searcher.suggest(trial_id)
    results = [{"objective": value, "epoch": epoch, "training_iteration": epoch} for epoch, value in enumerate(objectives, 1)]
    for result in results[:-1]:
        searcher.on_trial_result(trial_id, result)
    searcher.on_trial_complete(trial_id, results[-1] if results else None, error=error)
    return told(searcher, trial_id)


def test_a_trial_that_ran_its_course_is_complete_at_its_best_epoch_not_its_last(searcher):
    trial = run(searcher, "full", [0.6, 0.8, 0.7])
    assert trial.state == TrialState.COMPLETE and trial.value == 0.8  # Ray's OptunaSearch told 0.7, the last epoch
    assert trial.intermediate_values == {1: 0.6, 2: 0.8, 3: 0.8}  # at our own epoch count: the best so far


def test_a_trial_asha_stopped_is_pruned_with_its_values(searcher):
    trial = run(searcher, "stopped", [0.55])
    assert trial.state == TrialState.PRUNED and trial.value == 0.55 and trial.intermediate_values == {1: 0.55}
    assert run(searcher, "failed", [0.5], error=True).state == TrialState.FAIL


def test_a_trial_that_measured_nothing_is_failed_not_pruned(searcher):
    # ended by the budget before its first epoch, or every value non-finite: TPE must not score it as its worst result
    assert run(searcher, "never", []).state == TrialState.FAIL
    assert run(searcher, "never_finite", [float("nan"), float("nan")]).state == TrialState.FAIL


def test_a_repeated_epoch_report_is_told_once(searcher):
    searcher.suggest("again")
    for result in ({"objective": 0.6, "epoch": 1}, {"objective": 0.6, "epoch": 1}, {"objective": 0.7, "epoch": 2}):
        searcher.on_trial_result("again", result)  # a report replayed after a restart
    searcher.on_trial_complete("again", {"objective": 0.65, "epoch": 3})
    trial = told(searcher, "again")
    assert trial.intermediate_values == {1: 0.6, 2: 0.7, 3: 0.7} and trial.value == 0.7


def test_a_trial_told_finished_after_the_searcher_was_saved_is_not_told_again_when_it_is_restored(searcher, tmp_path, caplog):
    # The end of a budget-ended search tells the study after Tune's last snapshot of the searcher; the resumed one
    # reported and told it again, and Optuna's refusals reached the console.
    searcher.suggest("cut")
    searcher.on_trial_result("cut", {"objective": 0.6, "epoch": 1})
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.on_trial_complete("cut", {"objective": 0.6, "epoch": 1})
    searcher.restore(str(tmp_path / "searcher.pkl"))  # as a resumed search restores it: it had not seen the trial end
    with caplog.at_level("WARNING"):
        searcher.on_trial_result("cut", {"objective": 0.7, "epoch": 2})  # an epoch only its checkpoint held
        searcher.on_trial_complete("cut", {"objective": 0.7, "epoch": 2})
    assert told(searcher, "cut").state == TrialState.PRUNED and told(searcher, "cut").value == 0.6
    assert told(searcher, "cut").intermediate_values == {1: 0.6}
    assert not [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert run(searcher, "next", [0.5, 0.6, 0.7]).state == TrialState.COMPLETE  # the restored searcher goes on


def test_tpe_draws_at_random_until_startup_trials_have_ended_so_with_k_at_once_the_first_startup_plus_k_minus_1_are(tmp_path, monkeypatch):
    """What the README and the space files say of startup_trials: Optuna counts only ended trials (COMPLETE or PRUNED),
    not the ones still running, so two at once with startup_trials 2 draw three trials at random."""
    from cxr_tune.search.searcher import StudySearch

    drawn_at_random: set[int] = set()
    independent = optuna.samplers.RandomSampler.sample_independent

    def spy(self, study, trial, name, distribution):
        drawn_at_random.add(trial.number)
        return independent(self, study, trial, name, distribution)

    monkeypatch.setattr(optuna.samplers.RandomSampler, "sample_independent", spy)
    sampler = optuna.samplers.TPESampler(seed=0, multivariate=True, group=True, constant_liar=True, n_startup_trials=2)  # as the runner makes it
    searcher = StudySearch(space=SpaceSampler(load_space("smoke")), metric="objective", mode="max", study_name="exp", sampler=sampler,
                           max_epochs=3, database=str(tmp_path / "study.db"))
    for trial_id in ("a", "b"):  # two at once
        searcher.suggest(trial_id)
    for ended, started in (("a", "c"), ("b", "d"), ("c", "e")):  # each ending frees a place for the next
        searcher.on_trial_complete(ended, {"objective": 0.6, "epoch": 1})
        searcher.suggest(started)
    assert drawn_at_random == {0, 1, 2}  # a, b and c: 2 + 2 - 1
