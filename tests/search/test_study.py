"""The Optuna study of a search: one per experiment URI, uploaded as trials start and end, and
never left holding trials a killed driver abandoned."""

from __future__ import annotations

import os
import pickle
from dataclasses import replace

import optuna
import pytest
from optuna.trial import TrialState

from cxr_tune import storage
from cxr_tune.data.prepared import DataOptions
from cxr_tune.search.options import SearchOptions
from cxr_tune.search.study import study_path
from cxr_tune.search.space import SpaceSampler, load_space

STUDY_FILE, TUNE_TRIAL_ATTR = "study.db", "tune_trial_id"


def make_searcher(database: str, remote: str | None = None):
    from cxr_tune.search.searcher import StudySearch

    return StudySearch(space=SpaceSampler(load_space("smoke")), metric="objective", mode="max", study_name="exp",
                       sampler=optuna.samplers.RandomSampler(seed=0), max_epochs=3, database=str(database), remote=remote)


def trials_in(database: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="exp", storage=f"sqlite:///{database}").get_trials()


def trials_at(remote: str, tmp_path) -> list[optuna.trial.FrozenTrial]:
    local = str(tmp_path / f"download-{len(os.listdir(tmp_path))}.db")
    storage.copy(remote, local)
    return trials_in(local)


def test_one_name_under_two_storages_is_two_studies_each_in_a_local_file(tmp_path):
    team_a = SearchOptions(name="exp", storage="s3://bucket/team-a", data=DataOptions(cache_dir=str(tmp_path / "cache")))
    team_b = replace(team_a, storage="s3://bucket/team-b")
    assert study_path(team_a) != study_path(team_b)  # before: both were <cache>/studies/exp/study.db
    assert all(path.startswith(str(tmp_path / "cache")) for path in (study_path(team_a), study_path(team_b)))
    # A cache on object storage cannot hold SQLite: the study still gets a local, absolute file.
    remote_cache = replace(team_a, data=DataOptions(cache_dir="s3://bucket/cache"))
    assert not storage.is_uri(study_path(remote_cache)) and os.path.isabs(study_path(remote_cache))
    local = SearchOptions(name="exp", storage=str(tmp_path / "runs"))
    assert study_path(local) == str(tmp_path / "runs" / "exp" / STUDY_FILE)


def test_the_study_goes_up_to_object_storage_as_trials_start_and_end(s3_dir, tmp_path):
    remote = storage.join(s3_dir, STUDY_FILE)
    searcher = make_searcher(tmp_path / STUDY_FILE, remote)
    searcher.suggest("trial_a")
    [started] = trials_at(remote, tmp_path)  # before: uploaded only when the whole search ended
    assert started.state == TrialState.RUNNING and started.user_attrs == {TUNE_TRIAL_ATTR: "trial_a"}
    searcher.on_trial_complete("trial_a", {"objective": 0.75, "epoch": 3})
    [done] = trials_at(remote, tmp_path)
    assert done.state == TrialState.COMPLETE and done.value == 0.75


def test_a_resumed_search_starts_from_the_uploaded_study_and_a_new_one_from_none(s3_dir, tmp_path):
    from cxr_tune.search.study import prepare_study as _prepare_study

    options = SearchOptions(name="exp", storage=s3_dir, data=DataOptions(cache_dir=str(tmp_path / "cache")))
    local = study_path(options)
    searcher = make_searcher(local, storage.join(options.experiment_dir, STUDY_FILE))
    searcher.suggest("trial_a")
    searcher.on_trial_complete("trial_a", {"objective": 0.5, "epoch": 3})
    os.remove(local)  # the head node is gone; a new one resumes
    _prepare_study(options, fresh=False)
    assert [t.state for t in trials_in(local)] == [TrialState.COMPLETE]
    _prepare_study(options, fresh=True)  # a new experiment at the same URI must not continue this study
    assert not os.path.exists(local)


@pytest.mark.parametrize("first_cache", ["gone", "kept"])
def test_a_search_resumed_with_another_cache_writes_and_uploads_the_study_it_downloaded(s3_dir, tmp_path, first_cache):
    """Tune's tuner.pkl and searcher state hold the searcher as the first head node pickled it. Before: the restored searcher
    reopened the first cache's study file; gone (a new head node), Tuner.restore died in sqlalchemy's 'unable to open database
    file'; kept (another CXR_TUNE_CACHE on the same machine), the search wrote it, the end uploaded this cache's unchanged
    copy, and the bucket's study kept RUNNING a trial the table had COMPLETE."""
    import shutil

    from cxr_tune.search.study import copy_study, prepare_study, running_study

    first = SearchOptions(name="exp", storage=s3_dir, data=DataOptions(cache_dir=str(tmp_path / "first-cache")))
    remote = storage.join(first.experiment_dir, STUDY_FILE)
    searcher = make_searcher(study_path(first), remote)
    constructed = pickle.dumps(searcher)  # Tuner(...) saves the searcher as constructed (tuner.pkl)
    searcher.suggest("trial_a")
    saved = str(tmp_path / "searcher-state.pkl")
    searcher.save(saved)  # Tune's periodic save; then the first head node is lost
    if first_cache == "gone":
        shutil.rmtree(tmp_path / "first-cache")
    second = replace(first, data=DataOptions(cache_dir=str(tmp_path / "second-cache")))
    prepare_study(second, fresh=False)
    with running_study(second):  # as run_search holds it around Tuner.restore and fit
        restored = pickle.loads(constructed)
        restored.restore(saved)
        restored.on_trial_complete("trial_a", {"objective": 0.75, "epoch": 3})
    copy_study(second)
    [done] = trials_at(remote, tmp_path)
    assert done.state == TrialState.COMPLETE and done.value == 0.75
    assert [t.state for t in trials_in(study_path(second))] == [TrialState.COMPLETE]
    if first_cache == "kept":
        assert [t.state for t in trials_in(study_path(first))] == [TrialState.RUNNING]  # the first cache's copy is left alone



def test_a_reader_sees_the_study_another_machine_resumed_and_leaves_this_machines_copy_alone(s3_dir, tmp_path):
    import json

    from cxr_tune.experiment import Experiment

    options = SearchOptions(name="exp", storage=s3_dir, data=DataOptions(cache_dir=str(tmp_path / "cache")))
    remote = storage.join(options.experiment_dir, STUDY_FILE)
    storage.write_text_atomic(storage.join(options.experiment_dir, "experiment.json"), json.dumps({"options": options.to_json()}))
    here = make_searcher(study_path(options), remote)
    here.suggest("trial_a")
    here.on_trial_complete("trial_a", {"objective": 0.5, "epoch": 3})
    elsewhere = str(tmp_path / "other-machine" / STUDY_FILE)
    storage.copy(remote, elsewhere)  # another machine resumes the search from the uploaded study
    there = make_searcher(elsewhere, remote)
    there.suggest("trial_b")
    there.on_trial_complete("trial_b", {"objective": 0.7, "epoch": 3})
    read = Experiment(options.experiment_dir).study_path
    assert [t.value for t in trials_in(read)] == [0.5, 0.7]  # before: this machine's stale copy, one trial
    assert [t.value for t in trials_in(study_path(options))] == [0.5]  # a search here may hold it open: not overwritten

def test_trials_a_killed_driver_left_running_are_failed_when_the_search_is_restored(tmp_path):
    """Optuna records a trial RUNNING when it is suggested; Tune saves its state (the searcher's
    included) every ~10 s. Killed in between, the study keeps a RUNNING trial no resumed search
    knows: the sequence below is what Tuner(...), a step, a kill and Tuner.restore do."""
    from ray.tune.search.optuna import OptunaSearch

    def run_then_kill(searcher: OptunaSearch, folder) -> tuple[bytes, str]:
        folder.mkdir()
        constructed = pickle.dumps(searcher)  # Tuner(...) saves the searcher as constructed (tuner.pkl)
        searcher.suggest("trial_a")
        saved = str(folder / "searcher-state.pkl")
        searcher.save(saved)  # Tune's periodic save of its state
        searcher.suggest("trial_b")  # the next trial is suggested; then the driver is killed
        return constructed, saved

    # Ray's own OptunaSearch: the abandoned trial stays RUNNING for good (what TPE's constant liar keeps counting).
    plain = OptunaSearch(space=SpaceSampler(load_space("smoke")), metric="objective", mode="max", study_name="exp",
                         sampler=optuna.samplers.RandomSampler(seed=0), storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'plain.db'}"))
    constructed, saved = run_then_kill(plain, tmp_path / "plain")
    pickle.loads(constructed).restore(saved)
    assert [t.state for t in trials_in(tmp_path / "plain.db")] == [TrialState.RUNNING, TrialState.RUNNING]

    constructed, saved = run_then_kill(make_searcher(tmp_path / STUDY_FILE), tmp_path / "ours")
    restored = pickle.loads(constructed)
    restored.restore(saved)
    running, abandoned = trials_in(tmp_path / STUDY_FILE)
    assert running.state == TrialState.RUNNING and running.user_attrs[TUNE_TRIAL_ATTR] == "trial_a"  # Tune resumes it
    assert abandoned.state == TrialState.FAIL and abandoned.user_attrs[TUNE_TRIAL_ATTR] == "trial_b"
    # A search started afresh over the study (Tune never saved a step) knows no trial at all.
    make_searcher(tmp_path / STUDY_FILE)
    assert [t.state for t in trials_in(tmp_path / STUDY_FILE)] == [TrialState.FAIL, TrialState.FAIL]


def test_a_resume_on_a_new_head_node_appends_to_the_uploaded_search_log(s3_dir, tmp_path):
    """The log's twin of the study above. Before: a cache without the local log started an empty one, and the
    upload at the end replaced the experiment's search.log with the resumed run's lines alone."""
    from cxr_tune.search.runner import log_path_of

    options = SearchOptions(name="exp", storage=s3_dir, data=DataOptions(cache_dir=str(tmp_path / "new-head-cache")))
    storage.write_text_atomic(storage.join(s3_dir, "exp", "search.log"), "first run: Stop signal received\n")
    local = log_path_of(options)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    with open(local, "a", encoding="utf-8") as log:  # as library_output_to writes it
        log.write("resumed run\n")
    assert open(local, encoding="utf-8").read() == "first run: Stop signal received\nresumed run\n"
    fresh = SearchOptions(name="new", storage=s3_dir, data=DataOptions(cache_dir=str(tmp_path / "new-head-cache")))
    assert not os.path.exists(log_path_of(fresh))  # a new experiment starts its own
