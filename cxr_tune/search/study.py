"""The Optuna study of a search (``study.db``): where it lives and how it travels to object storage.

(The searcher that keeps it in step with Tune is :class:`cxr_tune.search.searcher.StudySearch`;
this module imports no Ray, so the experiment reader and the report can use it.)

SQLite needs a local file. A local experiment keeps its study in its own folder; one on object
storage keeps a local copy in the cache, keyed by the experiment's full URI (so one ``--name``
under two storages is two studies), uploaded whenever a trial starts or ends and downloaded when
the search resumes.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import closing, contextmanager
from typing import Any

from cxr_tune import storage

STUDY_FILE = "study.db"
TUNE_TRIAL_ATTR = "tune_trial_id"  # user attribute of each Optuna trial: the Tune trial it is


def study_path(options: Any) -> str:
    """The SQLite file of the Optuna study: in the experiment folder, or, when the experiment lives
    on object storage, a local copy (SQLite needs a local file) keyed by the experiment's full URI,
    so one ``--name`` under two storages is two studies. The copy goes up as trials start and end.
    """
    return storage.local_file_for(options.experiment_dir, STUDY_FILE, "studies", options.data.resolved_cache_dir)


def prepare_study(options: Any, *, fresh: bool) -> None:
    """Make the local study file right for this run of an experiment on object storage: a new
    experiment starts from none (a copy left by an earlier experiment at the same URI is stale);
    a resumed one starts from the uploaded study, the newest there is (it goes up whenever a trial
    starts, before Tune can save a state that knows the trial)."""
    if not storage.is_uri(options.experiment_dir):
        return
    local, remote = study_path(options), storage.join(options.experiment_dir, STUDY_FILE)
    if fresh:
        storage.remove(local)
    elif storage.exists(remote):
        storage.copy(remote, local)


_running: str | None = None  # the study file of the search this process runs now (running_study)


@contextmanager
def running_study(options: Any) -> Iterator[None]:
    """While a search runs: a searcher Tune unpickles to resume it (``Tuner.restore``, then its saved state at the first
    step) opens this run's :func:`study_path`, the copy :func:`prepare_study` made and :func:`copy_study` uploads, not
    the file it was pickled with (another head node's cache, or another ``CXR_TUNE_CACHE``'s: gone, or no longer the
    experiment's)."""
    global _running
    _running = study_path(options)
    try:
        yield
    finally:
        _running = None


def running_study_path() -> str | None:
    """The study file of the search running in this process (:func:`running_study`), None outside one."""
    return _running


def copy_study(options: Any) -> None:
    """Upload the local study of an experiment on object storage (at the end of a search)."""
    if storage.is_uri(options.experiment_dir):
        upload_study(study_path(options), storage.join(options.experiment_dir, STUDY_FILE))


#: The study's user attribute that says how the selected trial was chosen, and why ``study.best_trial`` can be another.
SELECTED_BY = ("cxr_tune.selection.ranked_trials: each trial at its best epoch; the trials whose 95 % interval of the metric overlaps "
               "the best one's tie with it, and the highest AUC on the deciding set among them is selected (so it can differ from "
               "study.best_trial, the highest value among COMPLETE trials); failed trials are never selected")


def record_selection(experiment: Any, selected_trial: str, metric: str) -> None:
    """Write into the experiment's study what its values measure (``metric``, also as Optuna's metric name, which the
    dashboard and ``trials_dataframe`` show) and which trial the search selected: Optuna's ``best_trial`` is the highest
    value, not the selection's tie rule, so a reader of ``study.db`` alone could not tell. Uploaded for an experiment on
    object storage (its ``study_path`` is a local copy); nothing for an experiment without a study file."""
    database = experiment.study_path
    if not os.path.exists(database):
        return
    from optuna.exceptions import ExperimentalWarning

    study = experiment.study()
    with warnings.catch_warnings():  # set_metric_names is "experimental" since Optuna 3.2; the console is for the search's own lines
        warnings.simplefilter("ignore", ExperimentalWarning)
        study.set_metric_names([metric])
    for key, value in {"selected_trial": selected_trial, "metric": metric, "deciding_set": experiment.deciding_set, "selected_by": SELECTED_BY}.items():
        study.set_user_attr(key, value)
    if storage.is_uri(experiment.path):
        upload_study(database, storage.join(experiment.path, STUDY_FILE))


def upload_study(database: str, remote: str) -> None:
    """Copy the local SQLite study to ``remote``: a consistent snapshot (SQLite's backup API), even
    while the search writes to it."""
    if not os.path.exists(database):
        return
    with tempfile.TemporaryDirectory() as tmp:
        snapshot = os.path.join(tmp, STUDY_FILE)
        with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(snapshot)) as target:
            source.backup(target)
        with open(snapshot, "rb") as handle:
            storage.write_bytes_atomic(remote, handle.read())
