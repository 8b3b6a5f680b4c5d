"""``python -m cxr_tune.search``: hyperparameter search with Ray Tune + Optuna (TPE) + ASHA.

Runs on this machine (local Ray) or joins a cluster (``--address auto``), picks the trial with the
best sensitivity/specificity balance on validation (carved from train by patient), writes the trial
table and a report with plots, and exports the selected model to ``STORAGE/NAME/best``. With no
``--data`` it runs on the built-in SYNTHETIC set. Interrupted? Run the same command with
``--resume``.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence

from cxr_tune import storage
from cxr_tune.data.__main__ import add_data_arguments
from cxr_tune.data.prepared import DataOptions
from cxr_tune.errors import UserError, run_cli
from cxr_tune.search.space import load_space
from cxr_tune.train.hparams import CRITERIA


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.search", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="wide", help="search space: a name in search_spaces/ (wide, narrow, smoke, ...) or a .yaml path (default: wide)")
    parser.add_argument("--data", default=None, help="data folder or URI in the Kermany layout (default: the built-in SYNTHETIC set)")
    parser.add_argument("--name", default=None, help="experiment name; results go to STORAGE/NAME (default: <space>-<timestamp>)")
    parser.add_argument("--storage", default="results", help="folder or URI (s3://...) for experiments (default: results)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted experiment STORAGE/NAME (needs --name)")
    parser.add_argument("--trials", type=int, default=None, help="number of trials (default: the space's search.trials)")
    parser.add_argument("--max-epochs", type=int, default=None, help="epochs of a trial ASHA never stops (default: the space's search.max_epochs)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="MINUTES", help="stop starting/running trials after this many minutes; with --resume, minutes for this run (default: no limit)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler and of every trial's initialization (default: 0)")
    parser.add_argument("--select", choices=sorted(CRITERIA), default="balanced_accuracy", help="balance of sensitivity and specificity that picks the threshold and the best trial (default: balanced_accuracy)")
    parser.add_argument("--select-tolerance", type=float, default=0.005, help="trials within this much of the best --select value count as tied and go by lowest validation log loss (default: 0.005)")
    parser.add_argument("--min-sensitivity", type=float, default=0.0, help="only thresholds with validation sensitivity >= this compete, e.g. 0.95 for screening (default: 0, no floor)")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto' for the running one; default: start Ray on this machine)")
    parser.add_argument("--workers-per-trial", type=int, default=None, help="Ray Train workers per trial, DDP when > 1 (default: 1)")
    parser.add_argument("--cpus-per-worker", type=float, default=None, help="CPUs per worker (default: an equal share of the cluster's CPUs per running trial)")
    parser.add_argument("--gpus-per-worker", type=float, default=None, help="GPUs per worker (default: 1 when the cluster has GPUs, else 0)")
    parser.add_argument("--concurrency", type=int, default=None, help="trials running at once (default: #GPUs, or #CPUs up to 8)")
    parser.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="Optuna sampler: seeded multivariate TPE, or random search as a baseline (default: tpe)")
    parser.add_argument("--no-early-stopping", action="store_true", help="run every trial to --max-epochs instead of letting ASHA stop poor ones")
    parser.add_argument("--report-only", action="store_true", help="with --name: rewrite the trial table, report and best/ of an existing experiment; run nothing")
    parser.add_argument("--no-export", action="store_true", help="skip exporting the selected trial to NAME/best")
    add_data_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace) -> "SearchOptions":  # noqa: F821
    from cxr_tune.search.runner import SearchOptions

    for flag, value, low in (("--trials", args.trials, 1), ("--max-epochs", args.max_epochs, 1), ("--workers-per-trial", args.workers_per_trial, 1), ("--concurrency", args.concurrency, 1)):
        if value is not None and value < low:
            raise UserError(f"{flag} {value} must be at least {low}")
    if args.cpus_per_worker is not None and args.cpus_per_worker <= 0:
        raise UserError(f"--cpus-per-worker {args.cpus_per_worker} must be positive")
    if args.gpus_per_worker is not None and args.gpus_per_worker < 0:
        raise UserError(f"--gpus-per-worker {args.gpus_per_worker} must not be negative")
    if not 0.0 <= args.select_tolerance <= 0.2:
        raise UserError(f"--select-tolerance {args.select_tolerance} must be between 0 and 0.2")
    if not 0.0 <= args.min_sensitivity <= 1.0:
        raise UserError(f"--min-sensitivity {args.min_sensitivity} must be between 0 and 1")
    space = load_space(args.space)  # a bad file stops here, before Ray starts
    if args.max_epochs is not None and args.max_epochs < space.settings.grace_period:
        raise UserError(f"--max-epochs {args.max_epochs} is less than the space's ASHA grace_period {space.settings.grace_period}")
    name = args.name or time.strftime(f"{space.name}-%Y%m%d-%H%M%S")
    if "/" in name or name.startswith("."):
        raise UserError(f"--name {name!r} must be a plain folder name")
    data = DataOptions(args.data, args.cache_dir, args.val_fraction, args.split_seed, args.use_official_val, args.synthetic_n)
    return SearchOptions(
        space=str(args.space), name=name, storage=args.storage, trials=args.trials, max_epochs=args.max_epochs,
        time_budget_min=args.time_budget, seed=args.seed, select=args.select, select_tolerance=args.select_tolerance,
        min_sensitivity=args.min_sensitivity,
        address=args.address, workers_per_trial=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, concurrency=args.concurrency, sampler=args.sampler,
        early_stopping=not args.no_early_stopping, data=data,
    )


def main(argv: Sequence[str] | None = None) -> int:
    from cxr_tune.search.finish import finish_experiment
    from cxr_tune.search.runner import can_resume, load_options, run_search

    args = build_parser().parse_args(argv)
    if args.time_budget is not None and args.time_budget <= 0:
        raise UserError(f"--time-budget {args.time_budget} must be positive")
    if args.report_only:
        if not args.name:
            raise UserError("--report-only needs --name of the experiment")
        experiment = storage.join(storage.resolve(args.storage), args.name)
        load_options(experiment)  # one-line error when it is not an experiment
        finish_experiment(experiment, export=not args.no_export)
        return 0
    if args.resume:
        if not args.name:
            raise UserError("--resume needs --name of the experiment to continue")
        experiment = storage.join(storage.resolve(args.storage), args.name)
        options = load_options(experiment)
        if args.time_budget is not None:  # "continue for N more minutes"
            options = dataclasses.replace(options, time_budget_min=args.time_budget)
        if not can_resume(experiment):
            raise UserError(f"experiment '{experiment}' has no Tune state to resume from")
    else:
        options = options_from_args(args)
    experiment, outcome = run_search(options, resume=args.resume)
    finish_experiment(experiment, export=not args.no_export)
    if outcome == "interrupted":
        print(f"\nThe search was interrupted; continue it with:\n  python -m cxr_tune.search --name {options.name} --storage {options.storage} --resume")
        return 130
    if outcome == "time budget":
        print(f"\nThe time budget of {options.time_budget_min:g} min ended the search before every trial ran.")
    return 0


if __name__ == "__main__":
    run_cli(main)
