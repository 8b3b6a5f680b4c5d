"""``python -m cxr_tune.train``: train one configuration end to end through Ray Train.

The same loop the search runs, for one set of hyperparameters: prints the validation metrics of
every epoch and of the best one, and where its checkpoint is. Without ``--data`` it trains on the
built-in SYNTHETIC set.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from cxr_tune import folder_lock, storage
from cxr_tune.cliargs import assignment, help_text, int_between, nonnegative_float, positive_float, positive_int, with_exit_statuses
from cxr_tune.data.prepared import DataOptions, SplitData, add_data_arguments, check_caches_buildable, datasets_by_size, split_data
from cxr_tune.errors import UserError, damaged, run_cli
from cxr_tune.experiment import Experiment, export_one_configuration
from cxr_tune.formatting import fmt, json_safe
from cxr_tune.provenance import provenance
from cxr_tune.ray_session import check_cluster_answers, check_own_ray
from cxr_tune.selection import add_select_on_argument, selection_label
from cxr_tune.train.checkpoints import RUN_FILE
from cxr_tune.train.hparams import HParams, HParamsError, read_params
from cxr_tune.train.trainer import (TRIAL_DRIVER_CPU, Resources, RunOptions, add_precision_arguments, check_gpus, check_own_ray_gpus, fit, make_trainer,
                                    ranks_share_a_gpu)

if TYPE_CHECKING:
    from ray.train import Result

LOG_FILE = "train.log"  # Ray's output for the run, beside its checkpoints
SHOWN = ["epoch", "train_loss", "val_loss", "val_auc", "val_threshold", "val_sensitivity", "val_specificity", "val_balanced_accuracy", "epoch_seconds"]
# ext_sensitivity and ext_specificity (each epoch's console line shows them) last: the earlier columns stay where epochs.csv had them.
EXTERNAL_SHOWN = ["ext_loss", "ext_auc", "ext_threshold", "ext_balanced_accuracy", "ext_sensitivity", "ext_specificity"]
# Under the epoch table: the two losses side by side are not one measure (on Kermany, pos_weight ~0.35, train_loss sits well below).
LOSSES_NOTE = ("train_loss: the loss training minimizes (BCE weighted by class_weighting on augmented batches, label-smoothed and mixed up "
               "when set, averaged over the epoch as the weights moved); val_loss and ext_loss: the plain log loss of the scores on unaltered "
               "images; not one scale, so train_loss below val_loss is not by itself overfitting.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.train", description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="data folder in the Kermany layout (default: the built-in SYNTHETIC set)")
    parser.add_argument("--params", default=None, help="YAML file of hyperparameters (any HParams field; a model.json from an export works too); default: the HParams defaults")
    parser.add_argument("--set", dest="overrides", action="append", default=[], type=assignment, metavar="KEY=VALUE", help="override one hyperparameter, e.g. --set epochs=3 (repeatable)")
    parser.add_argument("--workers", type=positive_int, default=1, help="Ray Train workers (DDP when > 1) (default: 1)")
    parser.add_argument("--cpus-per-worker", type=positive_float, default=None, help="CPUs reserved per worker; also its torch threads (default: the cluster's CPUs divided among the workers)")
    parser.add_argument("--use-gpu", action="store_true", help="train on GPUs: one GPU per worker unless --gpus-per-worker says otherwise (default: CPU)")
    parser.add_argument("--gpus-per-worker", type=nonnegative_float, default=None, help="GPUs per worker, a fraction to share one GPU (default: 1 with --use-gpu, else 0)")
    add_precision_arguments(parser)
    parser.add_argument("--deterministic", action="store_true", help="bitwise-repeatable GPU kernels (slower), so a run resumed on a GPU continues exactly; CPU runs are repeatable without it (on the same machine, image cache and thread count)")
    parser.add_argument("--weights", default=None, metavar="PATH", help="a local pretrained weights file (safetensors or a PyTorch state dict) to start from; nothing is downloaded (default: none)")
    parser.add_argument("--storage", default="results", help="folder or URI for runs (default: results)")
    parser.add_argument("--name", default=None, help="run name; the run folder is STORAGE/NAME (default: train-<timestamp>)")
    parser.add_argument("--cv", type=int_between(2, 20), default=None, metavar="K", help="instead of one run, K-fold cross-validation by patient group over the training folder (writes cv.md and cv.csv); K at most the patient groups that hold the rarer class, so every validation fold holds both; each fold chooses its best epoch and threshold on its own held-out fold, and an external set (--val-data) is not used")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto' for the running one; default: RAY_ADDRESS when set, else a Ray of its own on this machine, never one `ray start` left running)")
    parser.add_argument("--verbose", action="store_true", help=f"also show Ray's own output on the console (always in STORAGE/NAME/{LOG_FILE})")
    add_select_on_argument(parser, "the run's best epoch and its threshold (not with --cv, whose folds choose on their own held-out folds)")
    add_data_arguments(parser)
    return with_exit_statuses(parser)


def main(argv: Sequence[str] | None = None) -> int:
    with folder_lock.holding():  # one command at a time in a run folder (the resume command typed while the run goes on)
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    storage.check_writable(args.storage, "--storage")
    check_own_ray(args.address)  # a Ray that cannot start here: one line before the data scan
    check_cluster_answers(args.address)  # a cluster named that does not answer: one line too
    hp = read_params(args.params, args.overrides)
    from cxr_tune.train.model import build_model, check_weights_file, training_problem

    try:
        net = build_model(hp)  # refuse an impossible depth here, not inside a Ray worker
    except HParamsError as exc:
        raise UserError(f"{args.params or 'hyperparameters'}: {exc}") from None
    if problem := training_problem(hp):
        raise UserError(f"{args.params or 'hyperparameters'}: {problem}")
    weights = {hp.arch: storage.resolve(args.weights)} if args.weights else None
    if weights:
        check_weights_file(net, weights[hp.arch])
    if args.use_gpu and args.gpus_per_worker == 0:  # it trained on the CPU without a word
        raise UserError("--use-gpu with --gpus-per-worker 0 would train on the CPU; give --gpus-per-worker above 0, or leave out --use-gpu")
    gpus = args.gpus_per_worker if args.gpus_per_worker is not None else (1.0 if args.use_gpu else 0.0)
    if ranks_share_a_gpu(args.workers, gpus):
        raise UserError(f"--gpus-per-worker {gpus:g} with --workers {args.workers}: the workers of one DDP run cannot share a GPU; give each a whole one")
    check_own_ray_gpus(args.address, args.workers, gpus)  # at once, not after the data scan and Ray's start
    name = args.name if args.name is not None else time.strftime("train-%Y%m%d-%H%M%S")  # an empty --name is refused below
    storage_path = storage.resolve(args.storage)
    storage.check_folder_name(name, storage_path)
    if not name.isascii() and not args.cv:  # Ray Train's metrics tag a run with its name, as ASCII (--cv's runs are fold1, ...)
        raise UserError(f"--name {name!r}: Ray Train cannot name a run with non-ASCII characters; give an ASCII name")
    run_dir = storage.join(storage_path, name)
    if Experiment.exists(run_dir):  # --name resumes a run: never one inside a search's folder
        raise UserError(f"'{run_dir}' is a search experiment, not a train run; give the run another --name")
    # Before its record is read or written: a second command must leave the running one's alone. (A new run's folder
    # is made, and held, only once its data checked out, and removed when Ray refuses it: a refused command leaves nothing behind.)
    folder_lock.hold(run_dir, "train run folder")
    new_run = not storage.exists(run_dir)
    check_same_kind(run_dir, args.cv)
    if args.cv:
        from cxr_tune.train.crossval import fold_runs

        runs = fold_runs(run_dir)
    else:
        runs = [run_dir]
    latest = newest_states(runs)  # read once for both checks: each is a whole checkpoint (weights, optimizer), on object storage a download
    check_same_run(run_dir, hp, precision_flags(args), latest)
    note_precision_on_resume(latest, args.precision, args.memory_format, use_gpu=gpus > 0, epochs=hp.epochs)  # the same flags may resolve otherwise here
    options = DataOptions.from_args(args)
    split = split_data(options, selects=not args.cv)  # --cv's folds never read the external set: its size decides nothing
    check_caches_buildable(split, [hp.image_size])  # before run.json is written below: a refused command leaves nothing behind
    print(f"Data: {split.source.description}")
    if args.cv:  # the folds are judged on their own held-out folds, not by what selects a single run
        from cxr_tune.train.crossval import describe_folds

        print("\n".join([describe_folds(split, args.cv), *split.data_notes()]))
    else:
        print(split.describe_external(args.select_on))
    if skipped := split.describe_skipped():
        print(skipped)
    if not args.cv:  # (--cv keeps its own plan, which records its data)
        keep_same_data(run_dir, split, split.deciding_set(args.select_on))
    else:
        from cxr_tune.train.crossval import fold_roles

        fold_roles(split, args.cv, args.split_seed)  # refuses a K whose folds cannot each validate both classes, before Ray starts
    from cxr_tune.console import library_output_to
    from cxr_tune.ray_session import ray_session

    storage.makedirs(run_dir)
    folder_lock.hold(run_dir, "train run folder")
    log = storage.local_file_for(run_dir, LOG_FILE, "logs", options.resolved_cache_dir)
    print(f"Ray logs: {log}" + ("" if args.verbose else " (--verbose shows them here too)"), flush=True)
    discard, removed = new_run, False  # discard: until Ray has started or been joined and holds the run, nothing is trained
    try:
        with library_output_to(log, verbose=args.verbose) as stream, ray_session(args.address, log=stream, verbose=args.verbose):
            resources = run_resources(args, gpus)
            discard = False
            return train(args, hp, split, storage_path, name, resources, weights)
    except UserError:
        if discard:  # kept, it would hold the run.json and log of a run that never was (as search removes its experiment)
            storage.remove_tree(run_dir)
            removed = True
        raise
    finally:
        if not removed and storage.is_uri(run_dir) and os.path.exists(log):
            storage.copy(log, storage.join(run_dir, LOG_FILE))


def run_resources(args: argparse.Namespace, gpus: float) -> Resources:
    """Each worker's CPUs and GPUs on the running Ray, or one line when its cluster cannot hold them (Train would wait
    minutes for them, then fail)."""
    import ray

    cluster_cpus = ray.cluster_resources().get("CPU", 1)
    # One run takes every CPU; cross-validation shares them among the folds that run side by side, each of which
    # is a Tune trial holding a sliver of a CPU for its driver (so a worker takes its whole CPUs less that sliver).
    side_by_side = min(args.cv, max(1, int(cluster_cpus // args.workers))) if args.cv else 1
    cpus = args.cpus_per_worker or max(1.0, float(int(cluster_cpus // (args.workers * side_by_side)))) - (TRIAL_DRIVER_CPU if args.cv else 0.0)
    resources = Resources(args.workers, cpus, gpus)
    if args.workers * cpus + (TRIAL_DRIVER_CPU if args.cv else 0.0) > cluster_cpus + 1e-9:
        raise UserError(f"{args.workers} worker(s) x {cpus:g} CPU(s) but the Ray cluster has {cluster_cpus:g} CPU(s); lower --workers or --cpus-per-worker")
    if resources.use_gpu:
        check_gpus(args.workers, gpus, ray.cluster_resources().get("GPU", 0))
    return resources


def train(args: argparse.Namespace, hp: HParams, split: SplitData, storage_path: str, name: str, resources: Resources, weights: dict | None) -> int:
    """One run (or the folds of ``--cv``) on the running Ray, with :func:`run_resources`; prints its report."""
    run = RunOptions(args.precision, args.memory_format, args.deterministic, weights)
    if args.cv:
        add_to_run_record(storage.join(storage_path, name), {"precision_flags": precision_flags(args)})  # what a resume must give again
        return run_cv(args, hp, split, resources, storage_path, name, run)
    from ray.train import TrainingFailedError

    from cxr_tune.train.progress import epoch_lines  # Ray Train's callback API

    datasets = datasets_by_size(split, [hp.image_size])[hp.image_size]
    deciding = split.deciding_set(args.select_on)
    from cxr_tune.data.cache import find_cache, parquet_files

    cache = find_cache(split.cache_dir, split.source.manifest, hp.image_size)  # the one datasets_by_size just built or reused
    setup = {"threads": resources.threads, "cache_files": parquet_files(cache) if cache else None, "provenance": provenance(),
             "precision_flags": precision_flags(args)}  # what a resume must give again (check_same_run)
    warn_if_resumed_elsewhere(storage.join(storage_path, name), setup)
    add_to_run_record(storage.join(storage_path, name), setup)
    with epoch_lines(hp.epochs, deciding) as callbacks_for:
        trainer = make_trainer(hp, datasets, split.class_counts(), resources=resources, storage_path=storage_path, name=name, deciding=deciding,
                               run=run, callbacks=callbacks_for(name, hp.epochs))
        try:
            result = fit(trainer)
        except KeyboardInterrupt:
            print(stopped_line(storage.join(storage_path, name), name), flush=True)
            raise
        except TrainingFailedError as exc:  # the worker's traceback is in train.log: here the cause and how to go on
            print(f"error: {failed_line(exc, trainer, storage.join(storage_path, name), name)}", file=sys.stderr, flush=True)
            return 1
    return report(result, hp, split, storage.join(storage_path, name), deciding)


def stopped_line(run_dir: str, name: str, folds: tuple[int, int] | None = None) -> str:
    """What Ctrl-C leaves: the checkpoints the same command resumes from, or, stopped before the first one, none (the
    same command, finding no checkpoint, trains from the first epoch; :func:`check_same_run` has nothing to compare).
    ``folds``: a --cv run's (folds done, K), whose checkpoints are its folds'."""
    if kept := kept_line(run_dir, name, cv=folds is not None):
        return f"Stopped; {kept}" if folds is None else f"Stopped with {folds[0]} of {folds[1]} folds done; {kept}"
    what = "the run again from its" if folds is None else "its folds again from their"
    return (f"Stopped before its first checkpoint: nothing trained yet, and {run_dir} holds none; the same command with "
            f"--name {shlex.quote(name)} starts {what} first epoch")


def kept_line(run_dir: str, name: str, *, cv: bool = False) -> str | None:
    """Where the run's checkpoints are and the command that resumes from them (None before its first checkpoint);
    ``cv``: a --cv run, whose folds hold them (the same command keeps the finished folds)."""
    from cxr_tune.train.checkpoints import saved_checkpoints

    if cv:
        from cxr_tune.train.crossval import fold_runs

        if not any(saved_checkpoints(fold) for fold in fold_runs(run_dir)):
            return None
        return (f"their checkpoints are in {run_dir}: the same command with --name {shlex.quote(name)} keeps the finished folds "
                "and resumes the others from their last checkpoints")
    if not saved_checkpoints(run_dir):
        return None
    return f"its checkpoints are in {run_dir}: the same command with --name {shlex.quote(name)} resumes the run from the last one"


def failed_line(exc: Exception, trainer: Any, run_dir: str, name: str) -> str:
    """What Ray Train's ``TrainingFailedError`` from ``fit()`` says, in one line: the cause (the lowest failing rank's exception,
    its first line), how often it was tried (a worker group's failure ends the run once ``max_failures`` retries failed too), where
    the full traceback is, and the command that resumes from the checkpoints there are."""
    from ray.train import ControllerError, WorkerGroupError

    cause: BaseException = exc
    if isinstance(exc, WorkerGroupError) and exc.worker_failures:
        cause = exc.worker_failures[min(exc.worker_failures)]
    elif isinstance(exc, ControllerError):
        cause = exc.controller_failure
    said = next((line.strip() for line in str(cause).splitlines() if line.strip()), "")
    retries = trainer.run_config.failure_config.max_failures if isinstance(exc, WorkerGroupError) else -1
    attempts = f"attempts: {retries + 1}; " if retries >= 0 else ""
    line = f"training failed: {type(cause).__name__}{': ' + said if said else ''} ({attempts}full traceback: {storage.join(run_dir, LOG_FILE)})"
    return f"{line}; {kept}" if (kept := kept_line(run_dir, name)) else line


def precision_flags(args: argparse.Namespace) -> dict[str, str]:
    """The --precision and --memory-format a run was given (run.json's ``precision_flags``; "auto" as given, not as resolved)."""
    return {"precision": args.precision, "memory_format": args.memory_format}


def newest_states(runs: list[str]) -> list[dict[str, Any]]:
    """The state of each run's newest checkpoint, for the runs that have one (``runs``: ``[run_dir]``, or a --cv run's folds)."""
    from cxr_tune.train.checkpoints import newest

    return [found[1] for found in map(newest, runs) if found is not None]


def run_record(run_dir: str) -> dict[str, Any]:
    """The run's run.json ({} before it is written): every reader goes through here, so a copy cut short is one line
    naming it (:func:`cxr_tune.storage.read_json`), not a traceback."""
    path = storage.join(run_dir, RUN_FILE)
    record = storage.read_json(path) if storage.exists(path) else {}
    if not isinstance(record, dict):
        raise damaged(path, ValueError("it holds no JSON object"))
    return record


def check_same_run(run_dir: str, hp: HParams, flags: dict[str, str] | None, latest: list[dict[str, Any]]) -> None:
    """A run resumed under its --name continues from its checkpoint, so it must have the settings it
    was started with: other ones would be recorded for epochs trained under the old. ``flags``: its
    :func:`precision_flags`, compared with run.json's (a run from before that record is taken at its word).
    ``latest``: :func:`newest_states` of the Train runs that hold its checkpoints (``run_dir`` itself, or a --cv run's folds)."""
    if not latest:
        return
    saved, given = json.loads(json.dumps(latest[-1]["hparams"])), json.loads(json.dumps(hp.to_dict()))
    differ = [f"{key}={saved.get(key)} there, {value} here" for key, value in given.items() if saved.get(key) != value]
    recorded = (run_record(run_dir).get("precision_flags") or {}) if flags else {}
    differ += [f"--{key.replace('_', '-')} {recorded[key]} there, {value} here" for key, value in (flags or {}).items()
               if key in recorded and recorded[key] != value]
    if differ:
        raise UserError(f"'{run_dir}' holds a run with other settings ({'; '.join(differ)}); give the same settings to resume it, "
                        "or another --name")


METRICS_FILE = "metrics.json"  # a single run's best epoch
EPOCHS_FILE = "epochs.csv"  # a single run's every epoch, as its table on the console: its learning curve without loading a checkpoint
CV_FILE = "cv.md"  # a cross-validation's report


def check_same_kind(run_dir: str, cv: int | None) -> None:
    """Refuse a single run in a cross-validation's folder, and ``--cv`` in a single run's: resumed under its --name, a
    run must be of the same kind, or the two runs' records (run.json, train.log, checkpoints) mix in one folder and no
    reader can tell which belongs to which. A single run is known by its checkpoints, metrics.json, or the data its
    run.json records before its first epoch; a cross-validation by its ``folds/`` or cv.md."""
    from cxr_tune.train.checkpoints import saved_checkpoints
    from cxr_tune.train.crossval import FOLDS_DIR, PLAN_FILE

    if cv:
        if saved_checkpoints(run_dir) or storage.exists(storage.join(run_dir, METRICS_FILE)) or "data" in run_record(run_dir):
            raise UserError(f"'{run_dir}' holds a single train run, not a cross-validation; give --cv {cv} another --name, "
                            "or leave out --cv to resume that run")
    elif storage.exists(storage.join(run_dir, FOLDS_DIR)) or storage.exists(storage.join(run_dir, CV_FILE)):
        plan = storage.join(run_dir, FOLDS_DIR, PLAN_FILE)
        k = storage.read_json(plan).get("k", "K") if storage.exists(plan) else "K"
        raise UserError(f"'{run_dir}' holds a cross-validation (--cv {k}), not a single run; give the run another --name, "
                        f"or --cv {k} to resume that one")


def keep_same_data(run_dir: str, split: SplitData, deciding: str) -> None:
    """Record the images and roles a run uses; refuse to resume one that has checkpoints on other ones (other data,
    another --val-fraction or --split-seed, another --val-data or --select-on): its later epochs would be scored on
    another validation set than its first, and its best epoch chosen across the two. A run from before this record is
    taken at its word."""
    from cxr_tune.train.checkpoints import saved_checkpoints

    record = {"data": split.fingerprint(), "deciding_set": deciding}
    saved = run_record(run_dir) if saved_checkpoints(run_dir) else {}
    if saved:
        differ = [f"{key}: {saved.get(key)} there, {value} here" for key, value in record.items() if saved.get(key) != value]
        if differ:
            raise UserError(f"'{run_dir}' holds a run on other data or another split ({'; '.join(differ)}); give the same data and "
                            "split flags to resume it, or another --name")
    storage.write_text_atomic(storage.join(run_dir, RUN_FILE), json.dumps({**saved, **record}, indent=2))  # a resumed run's other facts kept (add_to_run_record)


def note_precision_on_resume(latest: list[dict[str, Any]], requested: str, memory_format: str, *, use_gpu: bool, epochs: int) -> None:
    """One line when a resumed run (or a fold of a --cv run) with epochs left, as its newest checkpoint records it
    (``latest``: :func:`newest_states`), trained its last epoch in another precision than ``--precision`` resolves to
    here (``auto`` resolves per machine): :func:`cxr_tune.train.precision.resumed_note`. A note, not a refusal: moving
    a run to another machine is legitimate. A finished run (``epochs`` done) or a diverged one trains no epoch more:
    nothing to say of it."""
    from cxr_tune.train.checkpoints import diverged_at_last
    from cxr_tune.train.precision import resumed_note

    last = []
    for state in latest:
        if int(state["epoch"]) + 1 >= epochs or diverged_at_last(state):
            continue
        last += [row["precision"] for row in (state.get("history") or [])[-1:] if row.get("precision")]
    if note := resumed_note(last, requested, memory_format, use_gpu=use_gpu):
        print(note, file=sys.stderr, flush=True)


def warn_if_resumed_elsewhere(run_dir: str, setup: dict[str, Any]) -> None:
    """One line when a run resumes with other torch threads or on an image cache of another block layout
    (built with another CPU count) than run.json recorded: its sums, or the order of its training images,
    differ from there on. A warning, not a refusal: the run is still sound, only not bit for bit."""
    from cxr_tune.train.checkpoints import saved_checkpoints

    saved = run_record(run_dir) if saved_checkpoints(run_dir) else {}
    what = {"threads": "torch thread(s) per worker", "cache_files": "Parquet file(s) in the image cache"}
    differ = [f"{setup[key]} {name} ({saved[key]} before)" for key, name in what.items()
              if setup[key] is not None and saved.get(key, setup[key]) != setup[key]]  # a run.json from before the record: nothing to compare
    if differ:
        print(f"Warning: resumed on {' and '.join(differ)}: epochs from here will not be bit-identical to an uninterrupted run",
              file=sys.stderr, flush=True)


def add_to_run_record(run_dir: str, facts: dict[str, Any]) -> None:
    """Add ``facts`` to the run's run.json: how it computed (torch threads, precision) and with which code
    (:func:`cxr_tune.provenance.provenance`), to run it again."""
    storage.write_text_atomic(storage.join(run_dir, RUN_FILE), json.dumps({**run_record(run_dir), **facts}, indent=2))


def run_cv(args: argparse.Namespace, hp: HParams, split: SplitData, resources: Resources, storage_path: str, name: str, run: RunOptions) -> int:
    import sys

    from cxr_tune.train.crossval import cross_validate, diverged_line, markdown, setup_lines

    folds = cross_validate(hp, split, args.cv, resources=resources, storage_path=storage_path, name=name, seed=args.split_seed, run=run)
    run_dir = storage.join(storage_path, name)
    if len(folds) < args.cv:  # Ctrl-C: Tune stopped the folds gracefully
        print(stopped_line(run_dir, name, (len(folds), args.cv)), flush=True)
        raise KeyboardInterrupt
    command = shlex.join(["python", "-m", "cxr_tune.train", *sys.argv[1:]])  # as typed: pasted, it runs again
    text = markdown(folds, hp, command, split.source.description) + setup_lines(run_dir, resources.threads, provenance())
    storage.write_text_atomic(storage.join(run_dir, CV_FILE), text)
    storage.write_bytes_atomic(storage.join(run_dir, "cv.csv"), folds.to_csv(index=False).encode())
    print(text)
    print(f"Written: {storage.join(run_dir, CV_FILE)}")
    if warning := diverged_line(folds):  # as a single run that diverged: status 1
        print(f"error: {warning}", file=sys.stderr)
        return 1
    return 0


def report(result: Result, hp: HParams, split: SplitData, run_dir: str, deciding: str) -> int:
    import pandas as pd

    from cxr_tune.selection import best_epoch
    from cxr_tune.train.checkpoints import load_state
    from cxr_tune.train.precision import epochs_trained_in

    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as folder:
        rows = load_state(folder)["history"]
    history = pd.DataFrame(rows)
    shown = [c for c in SHOWN if c in history] + [c for c in EXTERNAL_SHOWN if c in history]
    print(history[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(LOSSES_NOTE)
    best = best_epoch(history, deciding)  # the search's own rule
    checkpoint = next((c for c, m in result.best_checkpoints if m.get("epoch") == best["epoch"]), None)
    summary = {
        "data": split.source.description,
        "synthetic": split.source.synthetic,
        "hparams": hp.to_dict(),
        "deciding_set": deciding,
        "precision": epochs_trained_in(rows, int(best["epoch"])),  # what the best epoch's weights trained in: every precision, after a resume elsewhere
        "best_epoch": int(best["epoch"]),
        "best_checkpoint": storage.full_path(checkpoint.path, run_dir) if checkpoint else "(not kept: only the best checkpoint by objective and the latest are)",
        "val_metrics": {k: v for k, v in best.items() if k.startswith("val_")},
        "ext_metrics": {k: v for k, v in best.items() if k.startswith("ext_")},
    }
    # JSON's own types: the history row is of object dtype, so its numbers and flags are numpy scalars (str() made them "11", "False").
    storage.write_text_atomic(storage.join(run_dir, METRICS_FILE), json.dumps(json_safe(summary), indent=2))
    storage.write_csv(storage.join(run_dir, EPOCHS_FILE), history[shown])
    add_to_run_record(run_dir, {"precision": json_safe(epochs_trained_in(rows))})  # what every epoch trained in, as the run's own checkpoint records them
    tag = " [SYNTHETIC DATA]" if split.source.synthetic else ""
    print(f"\nBest epoch {summary['best_epoch']}{tag}, chosen on {summary['deciding_set']} validation:")
    external = selection_label("external validation") if deciding == "external" else "external validation (scored for comparison; it chose nothing)"
    for prefix, name in (("val", "carved validation"), ("ext", external)):
        if f"{prefix}_auc" in best:
            print(f"  {name}: AUC {fmt(best[f'{prefix}_auc'])}, sensitivity {fmt(best[f'{prefix}_sensitivity'])}, "
                  f"specificity {fmt(best[f'{prefix}_specificity'])}, balanced accuracy {fmt(best[f'{prefix}_balanced_accuracy'])} "
                  f"at threshold {fmt(best[f'{prefix}_threshold'])}")
    print(f"Checkpoint: {summary['best_checkpoint']}\nMetrics:    {storage.join(run_dir, METRICS_FILE)} (best epoch), "
          f"{storage.join(run_dir, EPOCHS_FILE)} (every epoch)")
    print(f"Export:     export takes a search's experiment, not a train run; {export_one_configuration(hp.epochs)}")
    if "diverged" in history and bool(history["diverged"].fillna(False).astype(bool).iloc[-1]):
        print(f"error: training diverged at epoch {int(history['epoch'].iloc[-1])} of {hp.epochs}: the network's scores were not finite "
              f"(its weights overflowed), so the run stopped there; train again under another --name with a lower learning rate "
              f"(lr={hp.lr:g} now) or weight decay", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    run_cli(main)
