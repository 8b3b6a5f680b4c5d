"""``python -m cxr_tune.search``: hyperparameter search with Ray Tune + Optuna (TPE) + ASHA.

Runs on this machine (local Ray) or joins a cluster (``--address auto``), picks the trial with the
best sensitivity/specificity balance on the external validation set when there is one (else on
validation carved from train by patient), writes the trial table and a report with plots, and
exports the selected model to ``STORAGE/NAME/best``. With no ``--data`` it runs on the built-in
SYNTHETIC set. Interrupted? ``--name NAME --resume`` continues it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxr_tune import folder_lock, storage
from cxr_tune.cliargs import fraction, help_text, int_between, nonnegative_float, nonnegative_int, positive_float, positive_int, with_exit_statuses
from cxr_tune.data.prepared import DataOptions, add_data_arguments
from cxr_tune.errors import EXIT_INTERRUPTED, RunFailure, UserError, out_of_room, run_cli
from cxr_tune.search.options import SearchOptions
from cxr_tune.search.space import SPACES_DIR, Space, load_space
from cxr_tune.selection import CRITERIA_MEANING, add_select_on_argument
from cxr_tune.train.hparams import CRITERIA, value_range
from cxr_tune.train.trainer import add_precision_arguments

if TYPE_CHECKING:
    from cxr_tune.experiment import Experiment


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.search", description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="wide", help="search space: a name in search_spaces/ (wide, narrow, smoke, ...; "
                        "that space even where a file of that name is here) or a .yaml path (default: wide)")
    parser.add_argument("--data", default=None, help="data folder or URI in the Kermany layout (default: the built-in SYNTHETIC set)")
    parser.add_argument("--name", default=None, help="experiment name; results go to STORAGE/NAME (default: <space>-<timestamp>)")
    parser.add_argument("--storage", default="results", help="folder or URI (s3://...) for experiments (default: results)")
    parser.add_argument("--resume", action="store_true", help="continue the interrupted experiment STORAGE/NAME (needs --name; a finished one: runs nothing, status 0, "
                        "and writes its table, report and best/ where a stop left them unwritten)")
    parser.add_argument("--trials", type=positive_int, default=None, help="number of trials (default: the space's search.trials)")
    least, most = (int(v) for v in value_range("epochs"))  # what a trial's epochs may be, or every trial fails inside Ray
    parser.add_argument("--max-epochs", type=int_between(least, most), default=None,
                        help=f"epochs of a trial ASHA never stops, {least} to {most} (default: the space's search.max_epochs)")
    parser.add_argument("--time-budget", type=positive_float, default=None, metavar="MINUTES", help="stop starting/running trials after this many minutes; with --resume, minutes for this run (default: no limit)")
    parser.add_argument("--job-budget", type=positive_float, default=None, metavar="MINUTES",
                        help="minutes for the whole command: the search ends when what is left would not hold the final fit "
                             "(estimated from the leading trials' own epochs) and the export; with --resume, minutes for this run "
                             "(default: no limit)")
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the TPE sampler and of every trial's initialization (default: 0)")
    parser.add_argument("--select", choices=sorted(CRITERIA), default="balanced_accuracy", help=(
        "balance of sensitivity and specificity that picks the threshold and the best trial: "
        + "; ".join(f"{name}: {meaning}" for name, meaning in CRITERIA_MEANING.items()) + " (default: balanced_accuracy)"))
    add_select_on_argument(parser)
    parser.add_argument("--min-sensitivity", type=fraction, default=0.0, help="only thresholds with validation sensitivity >= this compete, e.g. 0.95 for screening (default: 0, no floor)")
    parser.add_argument("--address", default=None, help="Ray cluster to join ('auto' for the running one; default: RAY_ADDRESS when set, else a Ray of its own on this machine, never one `ray start` left running)")
    parser.add_argument("--workers-per-trial", type=positive_int, default=None, help="Ray Train workers per trial, DDP when > 1 (default: 1)")
    parser.add_argument("--cpus-per-worker", type=positive_float, default=None, help="CPUs per worker (default: an equal share of the cluster's CPUs per running trial)")
    parser.add_argument("--gpus-per-worker", type=nonnegative_float, default=None,
                        help="GPUs per worker; a fraction packs several trials onto one GPU, e.g. 0.25 runs 4 per GPU (default on a cluster "
                             "with GPUs: 0.25 for spaces up to 256 px, 0.5 above, twice that for torchvision "
                             "architectures; 0 without GPUs)")
    parser.add_argument("--concurrency", type=positive_int, default=None, help="trials running at once (default: as many as the GPUs hold at --gpus-per-worker, or #CPUs up to 8)")
    add_precision_arguments(parser)
    parser.add_argument("--deterministic", action="store_true", help="bitwise-repeatable GPU kernels (cuDNN autotuning off; slower), so a trial resumed on a GPU continues exactly; CPU runs are repeatable without it (on the same machine, image cache and thread count)")
    parser.add_argument("--weights", action="append", default=[], metavar="ARCH=PATH",
                        help="a local pretrained weights file (safetensors or a PyTorch state dict) for trials of one torchvision "
                             "architecture, e.g. resnet18=~/weights/resnet18.pth (repeatable; nothing is downloaded; default: from scratch)")
    parser.add_argument("--no-final-fit", action="store_true", help="skip the space's final-fit stage (refitting the best configurations with new seeds) after the search")
    parser.add_argument("--sampler", choices=["tpe", "random"], default="tpe", help="Optuna sampler: seeded multivariate TPE, or random search as a baseline (default: tpe)")
    parser.add_argument("--no-early-stopping", action="store_true", help="run every trial to --max-epochs instead of letting ASHA stop poor ones")
    parser.add_argument("--report-only", action="store_true", help="with --name: rewrite the trial table, report and best/ of an existing experiment; run nothing (with --cache-dir: the cache's new place, where the export reads its images, recorded for later exports)")
    parser.add_argument("--no-export", action="store_true", help="skip exporting the selected trial to NAME/best (a --resume of the search skips it too)")
    parser.add_argument("--verbose", action="store_true", help="also show Ray's and Optuna's own output (always in NAME/search.log) and a line per trial epoch")
    add_data_arguments(parser)
    return with_exit_statuses(parser)


def options_from_args(args: argparse.Namespace) -> SearchOptions:
    space = load_space(args.space)  # a bad file stops here, before Ray starts
    if args.max_epochs is not None and args.max_epochs < space.settings.grace_period:
        raise UserError(f"--max-epochs {args.max_epochs} is less than the space's ASHA grace_period {space.settings.grace_period}")
    name = args.name if args.name is not None else time.strftime(f"{space.name}-%Y%m%d-%H%M%S")
    storage.check_folder_name(name, args.storage)
    data = DataOptions.from_args(args)
    # Saved absolute, so that experiment.json means the same from any working directory.
    named = Path(space.path) == SPACES_DIR / f"{args.space}.yaml"
    return SearchOptions(
        space=str(args.space) if named else str(Path(space.path).resolve()), name=name, storage=storage.resolve(args.storage),
        trials=args.trials, max_epochs=args.max_epochs,
        time_budget_min=args.time_budget, job_budget_min=args.job_budget, seed=args.seed, select=args.select, select_on=args.select_on,
        min_sensitivity=args.min_sensitivity,
        address=args.address, workers_per_trial=args.workers_per_trial, cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker, concurrency=args.concurrency, sampler=args.sampler,
        early_stopping=not args.no_early_stopping, precision=args.precision, memory_format=args.memory_format,
        deterministic=args.deterministic, weights=weights_by_architecture(args.weights, space) or None, final_fit=not args.no_final_fit,
        export=not args.no_export, data=data,
    )


def weights_by_architecture(given: list[str], space: Space) -> dict[str, str]:
    """``--weights ARCH=PATH`` flags as ``{arch: absolute path}``, each checked before Ray starts:
    an architecture the space searches, a file there, and one that fits that network."""
    from cxr_tune.search.packing import space_values
    from cxr_tune.train.hparams import HParams
    from cxr_tune.train.model import build_model, check_weights_file

    archs = [a for a in space_values(space, "arch") if a != "cnn"]
    out = {}
    for item in given:
        arch, sep, path = item.partition("=")
        if not sep or arch not in archs:
            raise UserError(f"--weights {item!r} must be ARCH=PATH with ARCH one of the space's torchvision architectures ({', '.join(archs) or 'none'})")
        out[arch] = storage.resolve(path)
        check_weights_file(build_model(HParams(arch=arch)), out[arch], flag=f"--weights {arch}")
    return out


#: What --resume may be given besides the experiment's name and storage: this run's budgets, the cluster and resources it
#: runs on, and where its cached files live (images are found by content hash, rebuilt where missing; the search itself is
#: fixed by experiment.json).
RESUME_FLAGS = ("--time-budget", "--job-budget", "--address", "--workers-per-trial", "--cpus-per-worker", "--gpus-per-worker", "--no-export", "--verbose",
                "--no-final-fit", "--cache-dir")
REPORT_FLAGS = ("--no-export", "--verbose", "--cache-dir")  # the export reads the images it scores from the cache


def given_flags(args: argparse.Namespace, argv: Sequence[str] | None) -> list[str]:
    """The flags typed on the command line (``--trials``, ...), whatever their values."""
    untyped = object()  # argparse fills in a default only where the namespace has no value yet
    typed = build_parser().parse_args(argv, namespace=argparse.Namespace(**dict.fromkeys(vars(args), untyped)))
    return ["--" + dest.replace("_", "-") for dest, value in vars(typed).items() if value is not untyped]


def refuse_flags(args: argparse.Namespace, argv: Sequence[str] | None, mode: str, allowed: tuple[str, ...], why: str, other: str = "") -> None:
    """One line naming every flag that cannot apply with ``mode`` (``--resume``, ``--report-only``)."""
    bad = [flag for flag in given_flags(args, argv) if flag not in (mode, "--name", "--storage", *allowed)]
    if bad:
        raise UserError(f"{mode} {why}; {', '.join(bad)} cannot apply (drop {'them' if len(bad) > 1 else 'it'}{other})")


def main(argv: Sequence[str] | None = None) -> int:
    with folder_lock.holding():  # the search, its final fit and its export: one command in the experiment at a time
        return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    from cxr_tune.experiment import Experiment
    from cxr_tune.search.finish import NothingToSelect, finish_experiment, unfinished, unwritten
    from cxr_tune.search.runner import can_resume, report_only_command, resume_command, run_search, search_command_line

    started = time.time()  # a --job-budget counts from here
    args = build_parser().parse_args(argv)
    storage.check_writable(args.storage, "--storage")
    if args.report_only:
        refuse_flags(args, argv, "--report-only", REPORT_FLAGS, "rewrites the table, report and best/ of an existing experiment and runs nothing")
        if not args.name:
            raise UserError("--report-only needs --name of the experiment")
        folder = storage.join(storage.resolve(args.storage), args.name)
        folder_lock.hold(folder)
        existing = Experiment(folder)  # one-line error when it is not one
        cache_dir = DataOptions.from_args(args).cache_dir if "--cache-dir" in given_flags(args, argv) else None
        finished = _report_only(existing, export=not args.no_export, cache_dir=cache_dir)
        if finished["unfinished"]:
            print(f"\nThe search is unfinished ({finished['unfinished']}); continue it with:\n  {resume_command(existing.options)}", file=sys.stderr)
        return 0
    if args.resume:
        refuse_flags(args, argv, "--resume", RESUME_FLAGS, "continues an experiment with the space, data and settings it was started with",
                     ", or start a new search under another --name")
        if not args.name:
            raise UserError("--resume needs --name of the experiment to continue")
        experiment = storage.join(storage.resolve(args.storage), args.name)
        given = given_flags(args, argv)
        overrides = {field: getattr(args, field) for field in ("address", "workers_per_trial", "cpus_per_worker", "gpus_per_worker")
                     if "--" + field.replace("_", "-") in given}
        # Found here, wherever it was started from; the budgets are minutes for this run (none: no limit).
        if args.no_final_fit:
            overrides["final_fit"] = False
        if args.no_export:
            overrides["export"] = False
        folder_lock.hold(experiment)
        existing = Experiment(experiment)
        recorded = existing.options
        if "--cache-dir" in given:  # checked as a new search's is; run_search records it once its caches are known buildable
            overrides["data"] = dataclasses.replace(recorded.data, cache_dir=DataOptions.from_args(args).cache_dir)
        if not storage.same_folder(recorded.experiment_dir, experiment):  # Tune's state and the searcher's study name the folder it ran in
            readable = ("--report-only and export read a copy" if existing.has_tune_state()
                        else "this copy has no Tune state or checkpoints, so --report-only and export cannot read it either")
            raise UserError(f"'{experiment}' is a copy of the experiment run in '{recorded.experiment_dir}': Ray Tune's saved state names "
                            f"that folder, so only it can be resumed ({readable})")
        options = dataclasses.replace(recorded, storage=storage.resolve(args.storage), time_budget_min=args.time_budget,
                                      job_budget_min=args.job_budget, **overrides)
        if existing.has_tune_state() and not unfinished(existing, final_fit=options.final_fit):  # refused before Ray starts (half a minute) only to find nothing to run
            if missing := unwritten(existing, export=options.export):
                files = " and ".join([", ".join(missing[:-1]), missing[-1]] if len(missing) > 1 else missing)
                print(f"experiment '{experiment}' is finished, but its {files} were not written (a stop while it wrote them): "
                      "writing them now, as --report-only does", file=sys.stderr)
                try:
                    _report_only(existing, export=options.export, cache_dir=options.data.cache_dir if "--cache-dir" in given else None)
                except NothingToSelect as exc:  # every trial failed or diverged: as the search itself ended, it made no model (1)
                    print(f"error: {exc}", file=sys.stderr)
                    return 1
                return 0
            ended = "every trial and its final fit" if options.final_fit and existing.space().settings.final_fit_top > 0 else "every trial"
            rewrites = "trial table, report and best/ are" if options.export else "trial table and report are"
            # Nothing to do, not bad input: a scheduler's retry of a search that finished ends with status 0, not 2
            print(f"experiment '{experiment}' is finished: {ended} ended, so --resume has nothing to run; its {rewrites} "
                  f"written again with: {report_only_command(options, export=options.export)}", file=sys.stderr)
            return 0
    else:
        options = options_from_args(args)
    try:
        command = search_command_line(sys.argv[1:] if argv is None else argv)
        experiment, outcome = run_search(options, command=command, resume=args.resume, verbose=args.verbose, started=started)
    except KeyboardInterrupt:
        if not can_resume(options.experiment_dir):
            raise
        _say_interrupted(options)  # before Tune took over Ctrl-C (say, in the first image-cache build): the experiment exists
        return EXIT_INTERRUPTED
    except storage.StoreError as exc:
        raise _store_gone(exc, options, args.resume) from None
    except Exception as exc:
        if (full := _out_of_room(exc, options, args.resume)) is None:
            raise
        raise full from None
    if outcome != "interrupted" and options.final_fit:
        from cxr_tune.search.finalfit import run_final_fit

        try:
            runs = run_final_fit(experiment, options, verbose=args.verbose)
        except storage.StoreError as exc:
            raise _store_gone(exc, options, True) from None
        except Exception as exc:
            if (full := _out_of_room(exc, options, True)) is None:
                raise
            raise full from None
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM, before Tune took over Ctrl-C (say, while the image caches load) or in its fit
            outcome = "interrupted"
        else:
            if runs and not Experiment(experiment).final_fit_complete():
                outcome = "interrupted"  # runs that failed: --resume trains what is missing
    untrained = False  # the stop came before any trial trained an epoch
    try:
        finish_experiment(experiment, export=options.export, interrupted=outcome == "interrupted")
    except NothingToSelect as exc:
        if outcome not in ("interrupted", "time budget", "job budget"):  # every trial failed or diverged: the search ran and
            print(f"error: {exc}", file=sys.stderr)  # made no model, a failure at run time (1), not a bad flag or file (2)
            return 1
        print(f"Nothing to select yet: {exc}", file=sys.stderr)  # no trial had trained an epoch: not the user's mistake, --resume goes on
        untrained = exc.untrained
        if outcome != "interrupted":  # a budget ended it: no model, so not status 0; --resume replaces the trials that never trained
            minutes = options.time_budget_min if outcome == "time budget" else options.job_budget_min
            print(f"\nThe {outcome} of {minutes:g} min ended the search before any trial trained an epoch; continue it with:\n  {resume_command(options)}",
                  file=sys.stderr)
            return 1
    except UserError as exc:  # the table, export or report of an interrupted search failed: say why, and how it goes on
        if outcome != "interrupted":
            raise
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C in the table, export or report: its trials are kept, the files it was writing are not all there
        if outcome == "interrupted":
            _say_interrupted(options)
        else:
            print(f"\nThe search ended, but writing its trial table, report and export was interrupted; write them with:\n  "
                  f"{report_only_command(options, export=options.export)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    if outcome == "interrupted":
        _say_interrupted(options, untrained=untrained)
        return EXIT_INTERRUPTED
    if outcome == "time budget":
        print(f"\nThe time budget of {options.time_budget_min:g} min ended the search before every trial ran.")
    if outcome == "job budget":
        print(f"\nThe job budget of {options.job_budget_min:g} min ended the search before every trial ran, to leave the final fit "
              f"and the export their time; the command took {(time.time() - started) / 60:.1f} min.")
    elif options.job_budget_min:
        print(f"\nThe command took {(time.time() - started) / 60:.1f} min of its {options.job_budget_min:g}-min job budget.")
    return 0


def _report_only(existing: Experiment, *, export: bool, cache_dir: str | None) -> dict[str, Any]:
    """What ``--report-only`` writes (the table, report and best/ of an experiment, running nothing), for it and for a
    ``--resume`` of a finished search a stop left them unwritten in; ``cache_dir``: a ``--cache-dir`` given, recorded as a
    ``--resume`` records it, since the export reads its images there (and later ones too)."""
    from cxr_tune.search.finish import finish_experiment
    from cxr_tune.search.runner import keep_cache_dir

    if cache_dir is not None and cache_dir != existing.options.data.cache_dir:
        keep_cache_dir(existing.path, cache_dir)
    return finish_experiment(existing.path, export=export, interrupted=None)


def _say_interrupted(options: SearchOptions, *, untrained: bool = False) -> None:
    """The line a stopped search ends with, on stderr wherever the stop landed, as its other next-step lines: a pipeline
    that reads stdout gets the search's results alone (it went to stdout once trials ran, to stderr before). ``untrained``:
    no trial had trained an epoch (a failure's wording, "every trial and its error", said so before)."""
    from cxr_tune.search.runner import resume_command

    before = " before any trial trained an epoch" if untrained else ""
    print(f"\nThe search was interrupted{before}; continue it with:\n  {resume_command(options)}", file=sys.stderr)


def _store_gone(exc: storage.StoreError, options: SearchOptions, resume: bool) -> storage.StoreError:
    """An object store that stopped answering mid-search or mid-final-fit: its one line, and the command that goes on
    once it answers (Tune's state and the checkpoints uploaded until then are kept, as after Ctrl-C); the line alone
    for a store gone before the experiment was written (its data's, say): then nothing is there to continue."""
    from cxr_tune.search.runner import can_resume, resume_command

    try:
        started = resume or can_resume(options.experiment_dir)
    except storage.StoreError:  # the experiment's own store, which answered as the command began (check_writable)
        started = True
    return storage.StoreError(f"{exc}; once the store answers again, continue the search with: {resume_command(options)}") if started else exc


def _out_of_room(exc: Exception, options: SearchOptions, resume: bool) -> RunFailure | None:
    """A disk (or quota, or memory) that ran out mid-search or mid-final-fit: :func:`cxr_tune.errors.out_of_room`'s line and
    the command that goes on once there is room, status 1 (the trials and checkpoints written until then are kept, as after
    Ctrl-C, unless the disk filled as Tune wrote its own state file: --resume then says so); None for any other error."""
    from cxr_tune.search.runner import can_resume, resume_command

    line = out_of_room(exc)
    if line is None:
        return None
    try:
        started = resume or can_resume(options.experiment_dir)
    except OSError:
        started = True
    return RunFailure(f"{line}; free space, then continue the search with: {resume_command(options)}" if started else line)


if __name__ == "__main__":
    run_cli(main)
