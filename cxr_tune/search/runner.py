"""Run (or resume) one search: Ray Tune + OptunaSearch (multivariate TPE) + ASHA over a space file.

Everything a later step needs is written to the experiment directory ``STORAGE/NAME``:
``experiment.json`` (the options, so ``--resume`` and ``export`` need nothing else),
``space.yaml`` (the space as it was), ``splits.csv`` (every image's role) and ``study.db`` (the
Optuna study; ``optuna-dashboard sqlite:///.../study.db`` opens it). Tune keeps its own state
beside them, and every trial's Train checkpoints live under ``train/<trial_id>/``.

``--resume`` continues from those files alone: the space in ``space.yaml`` and the images and
roles in ``splits.csv``, never today's space file or data folder, so it reads the same data from
any working directory. Its ``--time-budget`` is minutes for the resumed run.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from cxr_tune import __version__, folder_lock, storage
from cxr_tune.data.prepared import SplitData, check_caches_buildable, datasets_by_size, split_data
from cxr_tune.errors import UserError, ctrl_c_kept
from cxr_tune.experiment import EVENTS_FILE, EXPERIMENT_FILE, LOG_FILE, SPACE_FILE, SPLITS_FILE, TRAIN_DIR, Experiment
from cxr_tune.provenance import provenance
from cxr_tune.search.options import SearchOptions
from cxr_tune.search.packing import HEAVY_ARCHITECTURES, space_values
from cxr_tune.search.pace import FinalFitShape, final_fit_epochs
from cxr_tune.search.space import ASHA_RULES, SearchSettings, Space, SpaceSampler, load_space
from cxr_tune.search.study import STUDY_FILE, copy_study, prepare_study, running_study, study_path
from cxr_tune.search.trial import TRIAL_RESTARTS, TrialSettings, run_trial
from cxr_tune.train.trainer import TRIAL_DRIVER_CPU, Resources, RunOptions, check_gpus, check_own_ray_gpus, ranks_share_a_gpu


@dataclass(frozen=True)
class Plan:
    """A checked search: the space, trial count, epochs and resources actually used."""

    space: Space
    trials: int
    max_epochs: int
    resources: Resources
    concurrency: int

    def trial_bundles(self) -> list[dict[str, float]]:
        """What one running trial holds: its Tune driver's sliver of a CPU, then each Ray Train worker's bundle."""
        return [{"CPU": TRIAL_DRIVER_CPU}, *[self.resources.bundle() for _ in range(self.resources.workers)]]

    @property
    def cpus_held(self) -> float:
        """CPUs the trials running at once hold together."""
        return self.concurrency * sum(bundle.get("CPU", 0.0) for bundle in self.trial_bundles())

    @property
    def gpus_held(self) -> float:
        """GPUs the trials running at once hold together."""
        return self.concurrency * sum(bundle.get("GPU", 0.0) for bundle in self.trial_bundles())


def no_gpu_note(options: SearchOptions, space: Space, cluster: dict[str, float]) -> str | None:
    """One line when a space made for GPUs (it holds torchvision networks, the ones packing gives more of a GPU) meets a
    cluster with none: :func:`plan_search` then gives its trials no GPU, and nothing said they train on the CPU."""
    heavy = [arch for arch in space_values(space, "arch") if arch in HEAVY_ARCHITECTURES]
    if not heavy or cluster.get("GPU", 0) > 0 or options.gpus_per_worker is not None:  # a --gpus-per-worker is refused or asked for
        return None
    return f"Note: the space '{space.name}' is made for GPUs ({', '.join(heavy)} among its networks), but this cluster has no GPU: the space's trials run on the CPU"


def plan_search(options: SearchOptions, space: Space, cluster: dict[str, float]) -> Plan:
    """Apply flags over the space's settings and pick resources that use this cluster well.

    Defaults: on GPUs, several trials share each GPU (the share per worker follows the space's
    largest trial: :mod:`cxr_tune.search.packing`) and as many run at once as the GPUs hold; on
    CPUs one worker per trial and up to 8 trials at once. Either way each worker gets an equal
    share of the CPUs (a little is kept back for the trial drivers, which each hold a hundredth
    of a CPU).
    """
    from cxr_tune.search.packing import default_gpu_share

    trials = options.trials or space.settings.trials
    max_epochs = options.max_epochs or space.settings.max_epochs
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if cpus <= 0:  # a head with --num-cpus=0 whose workers have not joined: every trial and the cache build would wait
        address = options.address or os.environ.get("RAY_ADDRESS")
        where = f"the Ray cluster at {address}" if address and address != "auto" else "the Ray cluster"
        raise UserError(f"{where} has no CPU yet: no worker node has joined; wait until `ray status` lists them")
    workers = options.workers_per_trial or 1
    # DDP ranks of one trial each need a GPU of their own (NCCL refuses two on one device): packing is for one-worker trials.
    packed = default_gpu_share(space) if workers == 1 else 1.0
    gpus_per_worker = options.gpus_per_worker if options.gpus_per_worker is not None else (packed if gpus > 0 else 0.0)
    if ranks_share_a_gpu(workers, gpus_per_worker):
        raise UserError(f"--gpus-per-worker {gpus_per_worker:g} with {workers} workers per trial: the workers of one DDP trial cannot share a GPU")
    check_gpus(workers, gpus_per_worker, gpus)
    if gpus_per_worker > 1 and not float(gpus_per_worker).is_integer():
        raise UserError(f"--gpus-per-worker {gpus_per_worker:g}: a worker takes a fraction of one GPU or whole GPUs, not {gpus_per_worker:g}")
    if options.concurrency:
        concurrency = options.concurrency
    else:  # true division before the floor: 1 // 0.2 is 4.0 in floating point, and a fifth packed trial fits
        concurrency = math.floor(gpus / (gpus_per_worker * workers) + 1e-9) if gpus_per_worker > 0 else min(8, math.floor(cpus / workers + 1e-9))
        if options.cpus_per_worker is not None:  # as many as the CPUs hold at that share, each with its driver
            concurrency = min(concurrency, math.floor(cpus / (workers * options.cpus_per_worker + TRIAL_DRIVER_CPU) + 1e-9))
        concurrency = max(1, concurrency)
    concurrency = min(concurrency, trials)
    if options.cpus_per_worker is not None:
        cpus_per_worker = options.cpus_per_worker
    else:
        share = (cpus - concurrency * TRIAL_DRIVER_CPU) / (concurrency * workers)
        cpus_per_worker = math.floor(share * 100) / 100
    plan = Plan(space, trials, max_epochs, Resources(workers, cpus_per_worker, gpus_per_worker), concurrency)
    check_cpus(plan, cpus, "the Ray cluster has")
    if plan.gpus_held > gpus + 1e-9:
        raise UserError(f"--concurrency {concurrency} with {workers} x {gpus_per_worker:g} GPU a trial needs {plan.gpus_held:g} GPUs, the Ray cluster "
                        f"has {gpus:g}: the trials that do not fit would fail, not wait; lower --concurrency or --gpus-per-worker")
    return plan


def check_cpus(plan: Plan, cpus: float, has: str) -> None:
    """Refuse a plan whose trials ``cpus`` cannot hold, saying the whole sum (each trial's Tune driver holds a hundredth of
    a CPU beside its workers' share); ``has``: whose CPUs they are ("the Ray cluster has")."""
    workers, cpus_per_worker = plan.resources.workers, plan.resources.cpus_per_worker
    one = workers * cpus_per_worker + TRIAL_DRIVER_CPU
    if cpus_per_worker <= 0 or one > cpus + 1e-9:
        most = math.floor((cpus - TRIAL_DRIVER_CPU) / workers * 100 + 1e-6) / 100
        room = f"at most {most:g} CPUs per worker with {workers} worker(s)" if most > 0 else "too few for any trial"
        raise UserError(f"one trial needs {workers} x {cpus_per_worker:g} CPUs plus {TRIAL_DRIVER_CPU:g} for its Tune driver = {one:g} CPUs, "
                        f"{has} {cpus:g}; {room}; lower --workers-per-trial or --cpus-per-worker")
    # Every trial starts; a Train run whose workers find no room fails after Ray Train's start timeout, it does not wait.
    if plan.cpus_held > cpus + 1e-9:
        raise UserError(f"--concurrency {plan.concurrency} with {workers} x {cpus_per_worker:g} CPUs a trial needs {plan.cpus_held:g} CPUs, "
                        f"{has} {cpus:g}: the trials that do not fit would fail, not wait; lower --concurrency or --cpus-per-worker")


def own_ray_cpus(address: str | None) -> float | None:
    """The CPUs the Ray this command starts on this machine will have (Ray's own count, as ``ray.init`` makes it);
    None when it joins a cluster (``--address``, ``RAY_ADDRESS``) or a Ray is already running in this process."""
    import ray

    try:
        from ray._private.utils import get_num_cpus  # what ray.init(num_cpus=None) gives a local Ray
    except ImportError:  # a private helper: a Ray without it checks the plan once started, as on a cluster
        return None
    if address or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return None
    return float(get_num_cpus())


def _check_own_ray_resources(options: SearchOptions, space: Space) -> None:
    """``--cpus-per-worker`` (and ``--concurrency``) or ``--gpus-per-worker`` that this machine's own Ray cannot hold: one
    line before Ray starts (half a minute) and before the data scan, the GPUs' in train's (:func:`check_own_ray_gpus`).
    The defaults share out whatever Ray has."""
    workers = options.workers_per_trial or 1
    check_own_ray_gpus(options.address, workers, options.gpus_per_worker or 0.0)
    cpus = own_ray_cpus(options.address)
    if cpus is None or options.cpus_per_worker is None:
        return
    concurrency = min(options.concurrency or 1, options.trials or space.settings.trials)
    check_cpus(Plan(space, 0, 0, Resources(workers, options.cpus_per_worker, 0.0), concurrency), cpus, "this machine's Ray will have")


def run_search(options: SearchOptions, *, command: str, resume: bool = False, verbose: bool = False,
               started: float | None = None) -> tuple[str, str]:
    """Run or resume the search. Returns (experiment directory, outcome: complete, time budget, job
    budget or interrupted). ``command``: the command that runs it, as a person types it, which a new
    experiment records (:func:`search_command_line`; ``bench search`` records its own).

    The console gets the product's own lines; Ray's and Optuna's output goes to ``search.log`` in
    the experiment (``verbose``: to the console as well, with a line per trial epoch). ``started``:
    when the command began (``time.time()``; default now), the start of a ``--job-budget``.
    """
    started = time.time() if started is None else started
    from cxr_tune.console import library_output_to
    from cxr_tune.ray_session import check_cluster_answers, check_own_ray, cluster_held, ray_session

    check_own_ray(options.address)  # before the experiment is written: a Ray that cannot start here is one line
    check_cluster_answers(options.address)  # and a cluster named that does not answer
    experiment = options.experiment_dir
    if resume:  # the experiment's own space and roles, never today's files
        saved = Experiment(experiment)
        folder_lock.hold(experiment)
        space = saved.space()
        _check_own_ray_resources(options, space)
        split = saved.split(options.data)
    else:
        _refuse_existing(options)  # before the data scan, which can take minutes
        space = load_space(options.space)
        _check_own_ray_resources(options, space)
        split = split_data(options.data)
    # A cache to build in a folder that cannot be written: one line before Ray starts, and before the experiment is
    # written (which would hold that --cache-dir, and refuse the corrected command as an experiment that exists).
    check_caches_buildable(split, space.image_sizes())
    if not resume:
        _start_experiment(options, space, split, command)  # held from there until the command ends (main's folder_lock.holding)
    else:
        keep_provenance(experiment)
        if options.data.cache_dir != saved.options.data.cache_dir:
            keep_cache_dir(experiment, options.data.cache_dir)
    restore = resume and Experiment(experiment).has_tune_state()  # else Tune never saved a step: start it afresh
    prepare_study(options, fresh=not resume)
    print(f"Data: {split.source.description}")
    print(split.describe_external(options.select_on))
    if skipped := split.describe_skipped():
        print(skipped)
    print(f"Experiment: {experiment}")
    log_path = log_path_of(options)
    print(f"Ray and Optuna logs: {log_path}" + ("" if verbose else " (--verbose shows them here too)"), flush=True)
    discard_unstarted = not resume  # until Ray has started or been joined: a cluster that cannot be joined is one line too
    try:
        with library_output_to(log_path, verbose=verbose) as log, ray_session(options.address, log=log, verbose=verbose), running_study(options):
            discard_unstarted = False
            import ray

            cluster = ray.cluster_resources()
            try:
                plan = plan_search(options, space, cluster)
            except UserError:
                if not resume:  # what this command wrote, before any trial: kept, it would refuse the corrected command as one that exists
                    discard_unstarted = True
                raise
            keep_trial_resources(experiment, plan.resources, restored=restore)
            print(
                f"Search '{space.name}': {plan.trials} trials, up to {plan.max_epochs} epochs each, "
                f"{plan.concurrency} at a time, {plan.resources.workers} worker(s) x {plan.resources.cpus_per_worker:g} CPU"
                + (f" + {plan.resources.gpus_per_worker:g} GPU" if plan.resources.use_gpu else "")
                + f" per trial; {'TPE' if options.sampler == 'tpe' else 'random'} sampling, "
                + (f"ASHA early stopping ({ASHA_RULES[space.settings.asha_rule]} rule)" if options.early_stopping else "no early stopping")
                + f"; selecting on {options.select}"
                + (f" with sensitivity >= {options.min_sensitivity:g}" if options.min_sensitivity else ""),
                flush=True,
            )
            print(f"Training precision: {describe_precision(options, plan)}", flush=True)
            if note := no_gpu_note(options, space, cluster):
                print(note, flush=True)
            datasets = datasets_by_size(split, space.image_sizes())
            tuner = _tuner(options, plan, split, datasets, resume=restore, verbose=verbose)
            _set_budgets(options, plan, cluster, started, split.deciding_set(options.select_on))
            if options.job_budget_min:
                print(f"Job budget: {options.job_budget_min:g} min for this command; the search ends when what is left would not hold "
                      f"the final fit (estimated from the leading trials' epochs) and the export", flush=True)
            with ctrl_c_kept(), Experiment(experiment).compute_logged("search (resumed)" if resume else "search", cluster_held) as notes:
                tuner.fit()
                notes.update(_budget_notes())
    except UserError:
        if discard_unstarted:
            storage.remove_tree(experiment)
        raise
    copy_study(options)
    if storage.is_uri(experiment) and Path(log_path).exists():
        storage.copy(log_path, storage.join(experiment, LOG_FILE))
    return experiment, _outcome(experiment, plan)


def can_resume(experiment_dir: str) -> bool:
    """True for any experiment: with Tune's state ``--resume`` continues it, without (stopped
    before Tune's first step, say in the first image-cache build) it starts the search afresh."""
    return Experiment.exists(experiment_dir)


def resume_command(options: SearchOptions) -> str:
    """The command that continues this experiment, as a user would type it."""
    return shlex.join(["python", "-m", "cxr_tune.search", "--name", options.name, "--storage", storage.resolve(options.storage), "--resume"])


def report_only_command(options: SearchOptions, *, export: bool = True) -> str:
    """The command that writes a finished experiment's trial table, report and (``export``) best/ again."""
    return shlex.join(["python", "-m", "cxr_tune.search", "--name", options.name, "--storage", storage.resolve(options.storage), "--report-only",
                       *([] if export else ["--no-export"])])


# --- internals ----------------------------------------------------------------------------------


def _refuse_existing(options: SearchOptions) -> None:
    """An experiment under the name is continued with --resume, never started again; a folder that
    holds other files is not written among (hidden files such as ``.DS_Store`` aside, and what the
    start writes before ``experiment.json``, from a search stopped right then, which may be written again)."""
    experiment = options.experiment_dir
    if storage.exists(storage.join(experiment, EXPERIMENT_FILE)):
        running = folder_lock.held_elsewhere(experiment)
        if running:
            raise _running_now(experiment, running)
        raise UserError(f"experiment '{experiment}' already exists; continue it with: {resume_command(options)} (or choose another --name)")
    if storage.is_file(experiment):
        raise UserError(f"--name '{options.name}': '{experiment}' is a file, not an experiment folder; choose another --name")
    others = [name for name in storage.listdir(experiment) if not name.startswith((".", SPACE_FILE, SPLITS_FILE))]
    if others:
        raise UserError(f"--name '{options.name}': '{experiment}' holds files and is not an experiment (no {EXPERIMENT_FILE}; it holds "
                        f"{', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); choose another --name")


def _running_now(experiment: str, running: str) -> UserError:
    """A new search under the name of one that ``running`` ("process 1234") runs now: not told to resume it."""
    return UserError(f"experiment '{experiment}' already exists and another command ({running}) is running it now; choose another --name")


def search_command_line(argv: Sequence[str]) -> str:
    """``python -m cxr_tune.search`` with ``argv`` (its flags), quoted so that it runs as shown.

    >>> search_command_line(["--data", "my data", "--space", "smoke"])
    "python -m cxr_tune.search --data 'my data' --space smoke"
    """
    return shlex.join(["python", "-m", "cxr_tune.search", *argv])


def _start_experiment(options: SearchOptions, space: Space, split: SplitData, command: str) -> None:
    """Write a new experiment's files, holding its folder from before the first one: a second search started under the
    same --name at the same moment is refused here, with the running one's files as they were (the lock used to come
    after the writes, and the refused search's options were what --resume then ran)."""
    experiment = options.experiment_dir
    _refuse_existing(options)
    storage.makedirs(experiment)
    running = folder_lock.claim(experiment)
    if running is not None:
        raise _running_now(experiment, running or "another process")
    _refuse_existing(options)  # again, held: one started meanwhile may have written its experiment and ended
    storage.write_text_atomic(storage.join(experiment, SPACE_FILE), Path(space.path).read_text(encoding="utf-8"))
    roles = split.roles[["path", "content_hash", "label", "patient_id", "group_id", "split", "role", "role_note"]]
    storage.write_bytes_atomic(storage.join(experiment, SPLITS_FILE), roles.to_csv(index=False).encode())
    info = {
        "options": options.to_json(),
        "command": command,
        "command_cwd": os.getcwd(),  # what the command's relative paths are relative to
        "space_path": space.path,
        "data_description": split.source.description,
        "synthetic": split.source.synthetic,
        "data_root": split.source.root,
        "has_test": split.has_test,
        "external": split.external,
        "external_note": split.external_note,
        "deciding_set": split.deciding_set(options.select_on),
        "class_counts_train": split.class_counts("train"),
        "class_counts_val": split.class_counts("val"),
        "class_counts_external": split.class_counts("external"),
        "class_counts_test": split.class_counts("test"),
        "cxr_tune_version": __version__,
        "provenance": provenance(),  # the commit and library versions: the version above never changes
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    info[PROVENANCE_HISTORY] = [{**info["provenance"], "at": info["started_at"]}]
    storage.write_text_atomic(storage.join(experiment, EXPERIMENT_FILE), json.dumps(info, indent=2))


def keep_cache_dir(experiment: str, cache_dir: str | None) -> None:
    """Record in ``experiment.json`` the ``--cache-dir`` a ``--resume`` or ``--report-only`` was given: where the experiment's
    cached files live from now on, for this command and for export after it (which takes no --cache-dir). Only that: the
    rest of a resume's flags are this run's."""
    info = Experiment(experiment).info
    options = {**info["options"], "data": {**info["options"]["data"], "cache_dir": cache_dir}}
    storage.write_text_atomic(storage.join(experiment, EXPERIMENT_FILE), json.dumps({**info, "options": options}, indent=2))


#: experiment.json's record of the code and libraries of each run of the search, the start's first ("provenance" stays the start's)
PROVENANCE_HISTORY = "provenance_history"


def keep_provenance(experiment: str) -> None:
    """Add this run's :func:`cxr_tune.provenance.provenance` to ``experiment.json``'s history of runs, and when its commit or a
    library's version is not the start's, say so in one line: the trials trained from here ran other code than the one
    ``provenance`` (and the model card) names. An experiment from before the history starts it with the start's record."""
    info = Experiment(experiment).info
    start, now = info.get("provenance") or {}, provenance()
    history = info.get(PROVENANCE_HISTORY) or ([{**start, "at": info.get("started_at")}] if start else [])
    before = {"commit": start.get("commit"), **(start.get("versions") or {})}
    differ = [f"{name} {value} ({before[name]} at the start)" for name, value in {"commit": now["commit"], **now["versions"]}.items()
              if name in before and before[name] != value]
    if differ:
        print(f"Warning: resumed under other code or libraries, {', '.join(differ)}: the trials trained from here are not what the "
              "experiment's provenance names (experiment.json's provenance_history lists each run's)", file=sys.stderr, flush=True)
    history = [*history, {**now, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}]
    storage.write_text_atomic(storage.join(experiment, EXPERIMENT_FILE), json.dumps({**info, PROVENANCE_HISTORY: history}, indent=2))


#: experiment.json's record of what each trial of the experiment's first run computed with (workers, torch threads and GPUs per worker)
TRIAL_RESOURCES = "trial_resources"


def keep_trial_resources(experiment: str, resources: Resources, *, restored: bool) -> None:
    """Record in ``experiment.json`` what a trial trains on, when nothing has trained yet; when a restored search trains on
    other resources, say so in one line: its trials continue with other torch threads, another DDP split or another
    device, so their epochs from there are sound but not bit for bit an uninterrupted run's (as ``train`` warns for a run).
    An experiment from before the record is not compared."""
    now = {"workers": resources.workers, "threads": resources.threads, "gpus_per_worker": resources.gpus_per_worker}
    info = Experiment(experiment).info
    before = info.get(TRIAL_RESOURCES)
    if not restored:
        storage.write_text_atomic(storage.join(experiment, EXPERIMENT_FILE), json.dumps({**info, TRIAL_RESOURCES: now}, indent=2))
        return
    names = {"workers": "worker(s) per trial", "threads": "torch thread(s) per worker", "gpus_per_worker": "GPU(s) per worker"}
    differ = [f"{now[key]:g} {name} ({before[key]:g} before)" for key, name in names.items()
              if isinstance(before, dict) and key in before and before[key] != now[key]]
    if differ:
        print(f"Warning: resumed with {', '.join(differ)}: trials trained from here will not be bit-identical to an uninterrupted run",
              file=sys.stderr, flush=True)


def log_path_of(options: SearchOptions) -> str:
    """Where Ray's and Optuna's output goes: ``search.log`` in a local experiment; for one on
    object storage a local file in the cache (uploaded beside the experiment when the search ends),
    which starts as the uploaded one when this cache has none (a resume on a new head node): the
    output is appended to it, and the upload keeps the runs before instead of replacing them."""
    path = storage.local_file_for(options.experiment_dir, LOG_FILE, "logs", options.data.resolved_cache_dir)
    uploaded = storage.join(options.experiment_dir, LOG_FILE)
    if storage.is_uri(uploaded) and not Path(path).exists() and storage.exists(uploaded):
        storage.copy(uploaded, path)
    return path


def _tuner(options: SearchOptions, plan: Plan, split: SplitData, datasets: dict, *, resume: bool, verbose: bool = False) -> Any:
    import optuna
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search import ConcurrencyLimiter

    from cxr_tune.search.budget import ResumableTrials, SessionBudget, TrialsCatchUp
    from cxr_tune.search.progress import ProgressPrinter, TrialEventLog
    from cxr_tune.search.results import trial_counts, trial_histories
    from cxr_tune.search.searcher import StudySearch
    from cxr_tune.train.precision import resumed_note

    settings = TrialSettings(
        max_epochs=plan.max_epochs,
        criterion=options.select,
        min_sensitivity=options.min_sensitivity,
        seed=options.seed,
        resources=plan.resources,
        train_storage=storage.join(options.experiment_dir, TRAIN_DIR),
        deciding=split.deciding_set(options.select_on),
        run=run_options(options),
        experiment_dir=options.experiment_dir,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, datasets=datasets, class_counts=split.class_counts(), settings=settings),
        {"cpu": TRIAL_DRIVER_CPU},
    )
    run_config = tune.RunConfig(
        name=options.name,
        storage_path=storage.resolve(options.storage),
        callbacks=[
            JsonLoggerCallback(),
            ProgressPrinter(plan.trials, plan.max_epochs, options.select, split.deciding_set(options.select_on)),
            TrialEventLog(storage.join(options.experiment_dir, EVENTS_FILE), plan.max_epochs),
        ],
        # The one layer that retries (TRIAL_RESTARTS): a failed worker or a trial driver lost with its node; the trial
        # starts again and resumes from its Train run's last checkpoint.
        failure_config=tune.FailureConfig(max_failures=TRIAL_RESTARTS),
        stop=SessionBudget(),  # --time-budget, --job-budget; a resumed search gets the copy Tune saved, see SessionBudget
        verbose=0,
    )
    ProgressPrinter.verbose = verbose  # this command's console, fresh or resumed
    ProgressPrinter.errors_in = options.experiment_dir  # where a failed trial's error.txt is, for its FAILED line
    ProgressPrinter.trained_before = frozenset()
    ProgressPrinter.best_before = None
    if resume:  # a trial the budget ended before its first epoch is replaced, not counted
        counts = trial_counts(options.experiment_dir)
        ResumableTrials.total = plan.trials + counts.never_trained
        ResumableTrials.concurrency = plan.concurrency  # the resources were planned for this many, not the saved limit
        ProgressPrinter.trained_before = counts.trained_ids  # so the console counts the trials the table counts
        ProgressPrinter.best_before = counts.best  # and its "new best" is one the table agrees with
        # As keep_trial_resources says of threads and workers: --precision auto resolves per machine, so a search resumed on
        # another may train its trials' next epochs in another precision than their first (a note, as train's).
        if note := resumed_note(counts.precisions, options.precision, options.memory_format, use_gpu=plan.resources.use_gpu):
            print(note, file=sys.stderr, flush=True)
        tuner = tune.Tuner.restore(options.experiment_dir, trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False)
        if options.early_stopping:
            if (scheduler := restored_scheduler(tuner)) is not None:
                tell_saved_trials(scheduler, *trial_histories(options.experiment_dir))
            else:
                print("Note: ASHA's rungs start empty after a resume: trials run after it are compared only with results after it",
                      file=sys.stderr, flush=True)
        return tuner

    if options.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=options.seed)
    else:
        sampler = optuna.samplers.TPESampler(
            seed=options.seed,
            multivariate=True,
            group=True,  # conditional parameters (per-block widths) get their own joint model
            constant_liar=True,  # parallel trials do not all pick the same promising point
            n_startup_trials=min(plan.space.settings.startup_trials, plan.trials),
        )
    searcher = StudySearch(
        space=SpaceSampler(plan.space),
        metric="objective",
        mode="max",
        sampler=sampler,
        study_name=options.name,
        database=study_path(options),
        max_epochs=plan.max_epochs,
        remote=storage.join(options.experiment_dir, STUDY_FILE) if storage.is_uri(options.experiment_dir) else None,
    )
    scheduler = asha_scheduler(plan.max_epochs, plan.space.settings) if options.early_stopping else FIFOScheduler()
    # What TuneConfig(max_concurrent_trials=...) builds, in a generator a resume can restart.
    search_alg = ResumableTrials(ConcurrencyLimiter(searcher, max_concurrent=plan.concurrency))
    run_config.callbacks.append(TrialsCatchUp(search_alg, options.experiment_dir))
    tune_config = tune.TuneConfig(
        search_alg=search_alg,
        scheduler=scheduler,
        num_samples=plan.trials,
        trial_dirname_creator=_trial_dirname,
    )
    return tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)


def _set_budgets(options: SearchOptions, plan: Plan, cluster: dict[str, float], started: float, deciding: str) -> None:
    """This command's budgets, fresh or resumed (Tune's saved stopper reads them here)."""
    from cxr_tune.search.budget import SessionBudget

    SessionBudget.minutes = options.time_budget_min
    SessionBudget.job_deadline = started + options.job_budget_min * 60 if options.job_budget_min else None
    SessionBudget.final_fit = final_fit_shape(options, plan.space, cluster, deciding)
    SessionBudget.ended, SessionBudget.estimate_seconds, SessionBudget.ends_at = "", None, None
    settings = plan.space.settings
    SessionBudget.settled_after = (min(settings.startup_trials, plan.trials), min(settings.grace_period, plan.max_epochs))


def final_fit_shape(options: SearchOptions, space: Space, cluster: dict[str, float], deciding: str) -> FinalFitShape | None:
    """What the final fit after this search will train and how many runs at once, as
    :func:`cxr_tune.search.finalfit.run_final_fit` plans it (None: no final fit)."""
    settings = space.settings
    if not options.final_fit or settings.final_fit_top <= 0:
        return None
    runs = settings.final_fit_top * settings.final_fit_seeds
    plan = plan_search(replace(options, trials=runs), space, cluster)
    return FinalFitShape(settings.final_fit_top, settings.final_fit_seeds, final_fit_epochs(settings, plan.max_epochs), plan.concurrency, deciding,
                         tuple(settings.final_fit_changes.items()))


def _budget_notes() -> dict[str, Any]:
    """What the search's line in ``compute.jsonl`` records of its budgets: the one that ended it,
    and with a job budget the final fit's estimate when it ended (for comparison with the final fit's own line)."""
    from cxr_tune.search.budget import SessionBudget

    notes: dict[str, Any] = {"ended_by": SessionBudget.ended} if SessionBudget.ended else {}
    if SessionBudget.job_deadline is not None and SessionBudget.estimate_seconds is not None:
        notes["final_fit_estimate_seconds"] = round(SessionBudget.estimate_seconds, 1)
    return notes


def asha_scheduler(max_epochs: int, settings: SearchSettings) -> Any:
    """The search's ASHA, in one place: ``bench replay`` replays this very scheduler on full learning curves."""
    from ray.tune.schedulers import ASHAScheduler

    if settings.asha_rule == "optuna":
        from cxr_tune.search.halving import OptunaHalving

        return OptunaHalving(max_epochs, settings.grace_period, settings.reduction_factor)
    return ASHAScheduler(
        metric="objective",
        mode="max",
        time_attr="epoch",  # our own epoch count: it survives restarts, Tune's iteration counter does not
        max_t=max_epochs,
        grace_period=settings.grace_period,
        reduction_factor=settings.reduction_factor,
    )


def restored_scheduler(tuner: Any) -> Any:
    """The scheduler a restored ``tuner`` will run with: the one Tune pickled in ``tuner.pkl`` when the search started (a
    resumed search gets no say); None where this Ray keeps it elsewhere."""
    return getattr(getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None), "scheduler", None)


def tell_saved_trials(scheduler: Any, trials: list[Any], histories: dict[str, Any]) -> None:
    """Tell a resumed search's ``scheduler`` the saved ``trials``' epochs (``histories``, as
    :func:`cxr_tune.search.results.trial_histories` reads them) in the order they were reported (by Tune's ``timestamp``), as Tune told them:
    ``on_trial_add``, ``on_trial_result`` per epoch, then ``on_trial_complete`` (or ``on_trial_error``) for a trial that ended.

    Why: Tune restores the scheduler it pickled in ``tuner.pkl`` when the search started and never saves it again, so a
    resumed ASHA had empty rungs and judged the trials after a resume only against each other: a trial below a saved
    trial's value at a rung ran on where the uninterrupted search stopped it. Told again, the rungs hold the values they
    held (Ray's rule records every trial's value at each rung whatever it decides; Optuna's rule decides in the order
    told, so the order is the reports' own), and an unfinished trial is not judged again at a rung it had passed.
    """
    from cxr_tune.search.results import reported_epochs

    events = []
    for trial in trials:
        history = reported_epochs(histories.get(trial.trial_id, pd.DataFrame()))
        if history.empty:
            continue
        start = float(getattr(getattr(trial, "run_metadata", None), "start_time", None) or 0.0)
        # Seconds into the trial, each epoch no earlier than the one before (one read back from a checkpoint has no time).
        seconds = history["time_total_s"].astype(float).ffill().fillna(0.0).cummax() if "time_total_s" in history else pd.Series(0.0, index=history.index)
        trained = start + seconds  # training time only: a trial paused and restored in an earlier resume reads too early
        # Tune's wall clock at each report (whole seconds), where the result rows have it; the training-time key breaks ties.
        clock = history["timestamp"].astype(float).ffill().cummax().fillna(trained) if "timestamp" in history else trained
        for i, (epoch, objective, at, fine) in enumerate(zip(history["epoch"].astype(int), history["objective"].astype(float), clock, trained)):
            events.append((at, fine, epoch, trial, objective, i == len(history) - 1))
    added: set[str] = set()
    for _, _, epoch, trial, objective, last in sorted(events, key=lambda event: event[:3]):
        if trial.trial_id not in added:
            added.add(trial.trial_id)
            scheduler.on_trial_add(None, trial)
        result = {"epoch": epoch, "objective": objective}
        scheduler.on_trial_result(None, trial, result)
        if last and trial.status == "TERMINATED":
            scheduler.on_trial_complete(None, trial, result)
        elif last and trial.status == "ERROR":
            scheduler.on_trial_error(None, trial)


def run_options(options: SearchOptions) -> RunOptions:
    return RunOptions(options.precision, options.memory_format, options.deterministic, options.weights)


def describe_precision(options: SearchOptions, plan: Plan) -> str:
    """What ``--precision`` becomes where the trials run, and why (each worker decides for its own
    device and records it; this is the driver's reading of the same rule)."""
    from cxr_tune.train.precision import resolve_here

    here = resolve_here(options.precision, options.memory_format, use_gpu=plan.resources.use_gpu)
    if here is None:  # GPU workers, no GPU on this machine to ask
        return (f"{options.precision} on each GPU worker (bf16 where the GPU supports it, else fp16 with loss scaling; recorded per epoch)"
                if options.precision == "auto" else f"{options.precision} on each GPU worker")
    return here.describe()


def _trial_dirname(trial: Any) -> str:
    return trial.trial_id


def _outcome(experiment_dir: str, plan: Plan) -> str:
    """``time budget``, ``job budget``, ``complete`` or ``interrupted`` (Ctrl-C / SIGTERM: resume
    with --resume), from the trials as Tune saved them (see :func:`cxr_tune.search.results.trial_counts`)."""
    from cxr_tune.search import results
    from cxr_tune.search.budget import SessionBudget

    counts = results.trial_counts(experiment_dir)
    complete = counts.unfinished == 0 and counts.ended >= plan.trials
    # A budget that ran out as the last trial ended stopped nothing: every trial ran whole (none cut short, none never trained).
    if SessionBudget.ended and not (complete and counts.never_trained == 0 and not results.cut_short_trials(experiment_dir)):
        return SessionBudget.ended
    return "complete" if complete else "interrupted"
