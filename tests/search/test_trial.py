"""The Tune trainable of a search's trials (cxr_tune/search/trial.py)."""

from __future__ import annotations

from types import SimpleNamespace


def test_a_failing_trial_is_tried_three_times_in_all_by_tune_alone(tmp_path, monkeypatch):
    """A trial whose training raised every time (a config that runs out of memory) ran 9 times, 1 min 49 s where a healthy
    trial took 18 s, while the console said "attempt 3": Tune's FailureConfig(max_failures=2) restarted a trial whose own
    Train run had already retried twice. Train now retries nothing in a search's trial; Tune's restart builds the trainer
    again under the same name, which resumes from the run's last checkpoint (a lost node: tests/test_cluster.py)."""
    import ray.tune

    from cxr_tune.search.trial import TRIAL_RESTARTS, TrialSettings, run_trial
    from cxr_tune.train import tune_relay
    from cxr_tune.train.trainer import Resources

    trainers: list = []
    monkeypatch.setattr(ray.tune, "get_context", lambda: SimpleNamespace(get_trial_id=lambda: "trial_a"))
    monkeypatch.setattr(tune_relay, "fit_reporting_to_tune", lambda build: trainers.append(build([])))
    settings = TrialSettings(max_epochs=2, criterion="balanced_accuracy", min_sensitivity=0.0, seed=0, resources=Resources(1, 1.0, 0.0),
                             train_storage=str(tmp_path / "train"))
    run_trial({"image_size": 32}, datasets={32: {"train": [], "val": []}}, class_counts=(10, 10), settings=settings)
    [trainer] = trainers
    train_retries = trainer.run_config.failure_config.max_failures
    assert (train_retries + 1) * (TRIAL_RESTARTS + 1) == 3, (train_retries, TRIAL_RESTARTS)
