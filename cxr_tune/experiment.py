"""One experiment folder, read in one place: options, deciding set, space, images and roles, trials, checkpoints.

A search writes ``STORAGE/NAME`` (a local folder or an ``s3://`` URI)::

    experiment.json   the options (paths absolute), the deciding set, class counts, the command
    space.yaml        the space as it was
    splits.csv        every image's role
    study.db          the Optuna study
    train/<trial>/    each trial's Ray Train checkpoints
    finalfit/...      the final-fit stage's runs (when the space has one)
    + Tune's own state, trial_events.jsonl, search.log, and after it ends trials.csv, report.md, best/

Every command that reads an experiment (export, the report, the end of a search, ``--resume``,
the benchmarks) goes through :class:`Experiment`, so each fact has one reading: which set decides
is the recorded ``deciding_set``, never a guess. Importing this module does not import Ray Tune;
Tune's state is read only when the trial table is asked for::

    experiment = Experiment("results/wide-20240101")
    experiment.deciding_set                 # "external" or "carved"
    table = experiment.trials()             # ranked: rank 1 is the selected trial
    folder = experiment.checkpoint_for(table.sort_values("rank").iloc[0])
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import pandas as pd

from cxr_tune import storage
from cxr_tune.data.prepared import DataOptions, SplitData
from cxr_tune.errors import UserError, damaged
from cxr_tune.search.options import SearchOptions
from cxr_tune.search.results import TRAIN_DIR
from cxr_tune.search.space import Space, load_space
from cxr_tune.selection import ranked_trials
from cxr_tune.train.checkpoints import RUN_FILE

EXPERIMENT_FILE = "experiment.json"
SPACE_FILE = "space.yaml"
SPLITS_FILE = "splits.csv"
EVENTS_FILE = "trial_events.jsonl"
LOG_FILE = "search.log"
FINAL_FIT_DIR = "finalfit"
FINAL_FIT_MEMBERS = "members.json"
COMPUTE_FILE = "compute.jsonl"  # one line per stage run: what it held and for how long
HEARTBEAT_SECONDS = 60.0  # how often a running stage rewrites its compute.jsonl line (a killed run loses at most this)
_TEXT_COLUMNS = ("path", "content_hash", "patient_id", "group_id", "split", "role", "role_note")


@dataclass(frozen=True)
class FinalRun:
    """One run of the final-fit stage (:mod:`cxr_tune.search.finalfit`): a search trial's configuration with a new seed."""

    name: str
    trial_id: str
    seed: int
    epochs: int


def export_one_configuration(epochs: int | str = "its epochs") -> str:
    """How one configuration trained by ``python -m cxr_tune.train`` becomes an exportable model: export takes only a
    search's experiment (its trials' records, splits and deciding set), which a one-trial search of a space with
    nothing to search makes."""
    return (f"for an exportable model of that configuration, run python -m cxr_tune.search --space FILE.yaml with a space file whose "
            f"search: holds trials: 1, max_epochs: {epochs} and grace_period: 1, and whose fixed: holds its other hyperparameters")


class Experiment:
    """A search's folder; raises :class:`UserError` when ``path`` holds no experiment."""

    def __init__(self, path: str) -> None:
        self.path = storage.resolve(str(path))
        if not storage.exists(self.file(EXPERIMENT_FILE)):
            if storage.exists(self.file(RUN_FILE)):  # export, search --report-only, bench: say what does give a model
                raise UserError(f"'{path}' holds a `train` run ({RUN_FILE}), not a search's experiment (no {EXPERIMENT_FILE}); "
                                f"{export_one_configuration()}")
            raise UserError(f"'{path}' is not a cxr_tune experiment (no {EXPERIMENT_FILE})")

    @staticmethod
    def exists(path: str) -> bool:
        return storage.exists(storage.join(storage.resolve(str(path)), EXPERIMENT_FILE))

    def file(self, *parts: str) -> str:
        return storage.join(self.path, *parts)

    @property
    def name(self) -> str:
        return storage.name(self.path)

    # --- what experiment.json records ------------------------------------------------------------

    @cached_property
    def info(self) -> dict[str, Any]:
        path = self.file(EXPERIMENT_FILE)
        info = storage.read_json(path)
        if not isinstance(info, dict) or not isinstance(info.get("options"), dict):
            raise damaged(path, ValueError("it holds no options object"))
        return info

    @cached_property
    def options(self) -> SearchOptions:
        try:
            return SearchOptions.from_json(self.info["options"])
        except (KeyError, TypeError, ValueError) as exc:  # an option missing, unknown to DataOptions, or not an object
            raise damaged(self.file(EXPERIMENT_FILE), exc) from None

    @property
    def deciding_set(self) -> str:
        """``external`` or ``carved``: the set that chose every epoch, trial and threshold, as recorded."""
        recorded = self.info.get("deciding_set")
        if recorded in ("external", "carved"):
            return recorded
        return "external" if self.info.get("external") and self.options.select_on == "external" else "carved"

    @property
    def synthetic(self) -> bool:
        return bool(self.info.get("synthetic"))

    @property
    def has_test(self) -> bool:
        return bool(self.info.get("has_test"))

    @property
    def external(self) -> str:
        """Where the external validation set came from ('' when there was none)."""
        return self.info.get("external") or ""

    # --- space, images and roles -----------------------------------------------------------------

    def space(self) -> Space:
        """The space the experiment was started with (its own ``space.yaml``), under the name it had then."""
        name = os.path.splitext(storage.name(self.info.get("space_path") or SPACE_FILE))[0]
        try:
            data = storage.read_bytes(self.file(SPACE_FILE))
        except OSError as exc:
            raise damaged(self.file(SPACE_FILE), exc) from None
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, f"{name}.yaml")  # load_space names a space after its file
            with open(local, "wb") as handle:
                handle.write(data)
            try:
                space = load_space(local, checked=False)  # it ran: a rule added since must not lock its results away
            except UserError as exc:  # named after the experiment's own file, not the copy read
                raise UserError(str(exc).replace(local, self.file(SPACE_FILE))) from None
        return dataclasses.replace(space, path=self.file(SPACE_FILE))

    @cached_property
    def splits(self) -> pd.DataFrame:
        """``splits.csv``: every image's path, content hash, label, patient, group, folder and role."""
        try:
            roles = storage.read_csv(self.file(SPLITS_FILE), dtype={c: str for c in _TEXT_COLUMNS}, keep_default_na=False)
            roles["label"] = roles["label"].astype(int)
        except (OSError, ValueError, KeyError) as exc:  # gone, cut short mid-row, or without its columns
            raise damaged(self.file(SPLITS_FILE), exc) from None
        self._check_counts(roles)
        return roles

    def class_counts(self, role: str) -> list[int]:
        """[NORMAL, PNEUMONIA] distinct images of ``role`` (``train``, ``val``, ``external``, ``test``), as ``experiment.json``
        recorded them; counted from ``splits.csv`` for an experiment from before the record (the test split's, before 2026-12-07)."""
        recorded = self.info.get(f"class_counts_{role}")
        return list(recorded) if recorded is not None else _class_counts(self.splits, role)

    def _check_counts(self, roles: pd.DataFrame) -> None:
        """A ``splits.csv`` cut short at the end of a row still parses: the class counts of each role
        that ``experiment.json`` recorded when it was written tell."""
        for role in ("train", "val", "external", "test"):
            recorded = self.info.get(f"class_counts_{role}")
            found = _class_counts(roles, role)
            if recorded is not None and list(recorded) != found:
                raise damaged(self.file(SPLITS_FILE), ValueError(f"{found[0]} NORMAL and {found[1]} PNEUMONIA {role} images where "
                                                                 f"{EXPERIMENT_FILE} records {recorded[0]} and {recorded[1]}"))

    def split(self, data: DataOptions | None = None) -> SplitData:
        """The images and roles the experiment was started with, rebuilt from its own ``splits.csv``.

        Nothing is scanned or split again: whatever the data folder holds today, a resumed search
        trains and selects on exactly these images. Their paths are absolute (or URIs), and the
        image cache is found by their content hashes (and rebuilt from those paths if it is gone).
        """
        from cxr_tune.data.sources import SKIPPED_COLUMNS, Source

        data = data or self.options.data
        roles = self.splits
        manifest = roles[["path", "label", "patient_id", "group_id", "split", "content_hash"]]
        source = Source(root=self.info["data_root"], manifest=manifest, skipped=pd.DataFrame(columns=SKIPPED_COLUMNS), synthetic=self.synthetic)
        return SplitData(source=source, roles=roles, cache_dir=data.resolved_cache_dir, options=data,
                         external=self.external, external_note=self.info.get("external_note") or "")

    @property
    def cache_dir(self) -> str:
        return self.options.data.resolved_cache_dir

    # --- trials and checkpoints ------------------------------------------------------------------

    @property
    def max_epochs(self) -> int:
        return self.options.max_epochs or self.space().settings.max_epochs

    def rungs(self) -> tuple[int, ...]:
        """The epochs at which ASHA could stop a trial (none without early stopping)."""
        from cxr_tune.search.results import asha_rungs

        settings = self.space().settings
        return asha_rungs(settings.grace_period, settings.reduction_factor, self.max_epochs) if self.options.early_stopping else ()

    def histories(self) -> tuple[list[Any], dict[str, pd.DataFrame]]:
        """Tune's trials and, by trial id, each one's per-epoch results: one row per epoch, ``epoch`` counting from 1, ``lr``
        the learning rate after the epoch's last step (the schedule's, so 0 after a cosine schedule's last epoch). Reads
        Tune's state: of a search still running, its last snapshot (statuses lag; ``trial_events.jsonl`` is current)."""
        from cxr_tune.search.results import trial_histories

        return trial_histories(self.path)

    def trials(self, *, ranked: bool = True) -> pd.DataFrame:
        """The trial table, in trial-id order, with the selection's ``rank`` (1 = selected) and
        ``tied`` columns unless ``ranked`` is False; its columns are ``trials.csv``'s (README, "What an experiment
        folder holds"). Works on finished and interrupted experiments alike (reads Tune's state: of a search still
        running, its last snapshot, whose statuses lag; ``trial_events.jsonl`` is current). Ranking raises
        :class:`UserError` when no trial reported."""
        from cxr_tune.search.results import trials_table

        table = trials_table(self.path, self.max_epochs, self.rungs(), self.deciding_set)
        return ranked_table(table, self.deciding_set) if ranked else table

    def checkpoint_for(self, row: pd.Series) -> str:
        """The trial's checkpoint from its best epoch; its newest checkpoint if that one is gone."""
        from cxr_tune.search.results import checkpoint_for

        return checkpoint_for(row, self.path)

    def compute_log(self) -> list[dict[str, Any]]:
        """Each run of a stage (search, resumed search, final fit): wall seconds and the CPUs/GPUs it held
        (a run killed or crashed: its seconds to its last ``last_seen_at``, and no ``ended_at``)."""
        path = self.file(COMPUTE_FILE)
        if not storage.exists(path):
            return []
        return storage.read_json(path, lines=True)

    def stage_minutes(self) -> dict[str, float]:
        """Wall minutes of each stage (search, final fit), over every run of it, in the order they first ran."""
        minutes: dict[str, float] = {}
        for entry in self.compute_log():
            minutes[entry["stage"]] = minutes.get(entry["stage"], 0.0) + entry["seconds"] / 60
        return minutes

    def compute_minutes(self) -> float:
        """CPU-minutes the search and its final fit held (wall time x the cluster's CPUs), over every run."""
        return sum(entry["seconds"] * entry["cpus"] for entry in self.compute_log()) / 60

    @contextmanager
    def compute_logged(self, stage: str, resources: Callable[[], tuple[float, float]], *,
                       every: float = HEARTBEAT_SECONDS) -> Iterator[dict[str, Any]]:
        """Record one stage run in ``compute.jsonl`` (the search and the final fit run inside this).

        Its line is written when the run starts and again every ``every`` seconds, so a command
        killed with ``kill -9`` or a crash still leaves its time, to within ``every``; such a line has
        ``last_seen_at`` and no ``ended_at``; a heartbeat an unreachable store refuses is skipped (the end's write
        records the whole run, or raises the store's error, once). ``resources``: the (CPUs, GPUs) the cluster holds, asked
        at the start and the end. The dict yielded is for notes the caller adds before the end (what
        ended a search, say)."""
        import threading
        import time

        old = storage.read_text(self.file(COMPUTE_FILE)) if storage.exists(self.file(COMPUTE_FILE)) else ""
        started, (cpus, gpus), notes = time.time(), resources(), {}

        def write(**end: Any) -> None:  # the notes at the end only: the caller fills them while the heartbeat runs
            line = json.dumps({"stage": stage, "seconds": round(time.time() - started, 1), "cpus": cpus, "gpus": gpus,
                               **(notes if "ended_at" in end else {}), **end})
            storage.write_text_atomic(self.file(COMPUTE_FILE), old + line + "\n")

        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(every):
                try:
                    write(last_seen_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
                except storage.StoreError:  # the store is gone for now: the end's write records the whole run, or says so once
                    pass

        write(last_seen_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        heart = threading.Thread(target=beat, name="compute.jsonl", daemon=True)
        heart.start()
        try:
            yield notes
        finally:
            stop.set()
            heart.join()
            try:
                cpus, gpus = resources()
            except Exception:  # noqa: BLE001 - the cluster may be gone after a crash; the start's count stands
                pass
            write(ended_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))

    def final_fit_runs(self) -> list[FinalRun]:
        """The final-fit runs ``finalfit/members.json`` lists ([] before a final fit started)."""
        path = self.file(FINAL_FIT_DIR, FINAL_FIT_MEMBERS)
        if not storage.exists(path):
            return []
        return [FinalRun(**run) for run in storage.read_json(path)]

    def final_fit_ends(self) -> list[tuple[FinalRun, str, bool]]:
        """(run, checkpoint of its last epoch, whether it diverged) for every final-fit run that ended:
        it trained all its epochs, or its scores turned non-finite (the loop stops there, and the same
        seed would diverge again, so it is never trained again)."""
        from cxr_tune.train.checkpoints import diverged_at_last, newest, run_ended

        out = []
        for run in self.final_fit_runs():
            found = newest(self.file(FINAL_FIT_DIR, TRAIN_DIR, run.name))
            if found is not None and run_ended(found[1], run.epochs):
                out.append((run, found[0], diverged_at_last(found[1])))
        return out

    def final_fit_checkpoints(self) -> list[tuple[FinalRun, str]]:
        """(run, checkpoint of its last epoch) for every final-fit run that trained all its epochs without diverging."""
        return [(run, folder) for run, folder, lost in self.final_fit_ends() if not lost]

    def final_fit_complete(self) -> bool:
        """Every final-fit run ended (:meth:`final_fit_ends`): nothing is left for ``--resume`` to train."""
        runs = self.final_fit_runs()
        return bool(runs) and len(self.final_fit_ends()) == len(runs)

    @cached_property
    def study_path(self) -> str:
        """The Optuna study as a local SQLite file: this folder's own ``study.db``, wherever the
        experiment was when it ran (a copied or moved folder must not open the original's); for one
        on object storage, a fresh local snapshot of the uploaded study (another machine may have
        resumed the search since this one last saw it), kept apart from the copy a search on this
        machine writes (never overwritten under it); that copy while nothing is uploaded yet."""
        from cxr_tune.search.study import STUDY_FILE

        if not storage.is_uri(self.path):
            return self.file(STUDY_FILE)
        cache = self.options.data.resolved_cache_dir
        if not storage.exists(self.file(STUDY_FILE)):
            return storage.local_file_for(self.path, STUDY_FILE, "studies", cache)
        snapshot = storage.local_file_for(self.path, STUDY_FILE, "study-snapshots", cache)
        storage.copy(self.file(STUDY_FILE), snapshot)
        return snapshot

    def study(self) -> Any:
        """The search's Optuna study, read from :attr:`study_path` (the report's importances, bench search's count of random trials).
        A folder without one is a UserError naming the file: a reader never creates it (optuna.load_study on a missing
        SQLite file made an empty one, then raised a bare KeyError 'Record does not exist.')."""
        import optuna

        from cxr_tune.search.study import STUDY_FILE

        database = self.study_path
        if not storage.exists(database):
            raise UserError(f"'{self.file(STUDY_FILE)}' does not exist: this experiment has no Optuna study (a search writes it "
                            f"when it starts; a copy of the folder may have left it out)")
        return optuna.load_study(study_name=self.options.name, storage=f"sqlite:///{database}")

    def has_tune_state(self) -> bool:
        """True once Tune has saved the search's state, which it does at its first step."""
        return tune_state_saved(self.path)


def _class_counts(roles: pd.DataFrame, role: str) -> list[int]:
    """[NORMAL, PNEUMONIA] distinct images (by content) of ``role`` in a ``splits.csv``, as the search counted them."""
    rows = roles.loc[roles["role"] == role].drop_duplicates("content_hash")
    return [int((rows["label"] == 0).sum()), int((rows["label"] == 1).sum())]


def tune_state_saved(folder: str) -> bool:
    """Whether Tune can restore the run in ``folder`` (a search, or its final fit): ``tuner.pkl`` is
    written before the first step, the trials' state (``experiment_state-*.json``) only at it; a
    restore from ``tuner.pkl`` alone logs Ray's "Failed to restore the run state" traceback and starts afresh."""
    return storage.exists(storage.join(folder, "tuner.pkl")) and bool(storage.glob(folder, "experiment_state-*.json"))


def ranked_table(table: pd.DataFrame, deciding: str) -> pd.DataFrame:
    """``table`` with the selection's ``rank`` (1 = selected) and ``tied`` columns, in trial-id order."""
    try:
        ranked = ranked_trials(table, deciding)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    ranks = pd.Series(range(1, len(ranked) + 1), index=ranked.index)
    return table.assign(rank=ranks, tied=ranked["tied"]).astype({"tied": "boolean"})
