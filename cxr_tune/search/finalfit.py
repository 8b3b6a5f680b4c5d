"""The final-fit stage: refit the search's best configurations with new seeds for the full schedule, and ensemble them.

The search stops most trials early (ASHA) and judges each by its best epoch on a few hundred
validation images, where the best of noisy epochs is partly a draw. The standard AutoML finish
trains the top configurations again, each with several new seeds, for a fixed schedule, and
averages their *last* epochs: no epoch is picked on the deciding set, so only the threshold is
chosen there. Which configurations (the first ``final_fit_top`` of the selection's ranking at the
selected image size, :func:`cxr_tune.selection.ensemble_members`), how many seeds and epochs: the
space's ``search:`` section (``final_fit_top``, ``final_fit_seeds``, ``final_fit_epochs``), which may
also set hyperparameters in every run (``final_fit_changes``: a costlier network than the search
could afford to judge, say ``{convs_per_block: 2}``).

Runs are Ray Tune trials of their own (``EXPERIMENT/finalfit``, checkpoints under
``EXPERIMENT/finalfit/train/<run>``), so they run side by side like search trials, and
``--resume`` continues an interrupted final fit. ``members.json`` lists the runs before any starts;
:class:`cxr_tune.experiment.Experiment` reads them back. Export then keeps their average only
where it scores no lower on the deciding set than the search's own ensemble
(:func:`cxr_tune.selection.final_fit_kept`): longer training can fit the training population
and lose the new patients.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from typing import Any

from cxr_tune import storage
from cxr_tune.cliargs import assignments_text
from cxr_tune.errors import ctrl_c_kept
from cxr_tune.experiment import FINAL_FIT_DIR, FINAL_FIT_MEMBERS, LOG_FILE, TRAIN_DIR, Experiment, FinalRun, tune_state_saved
from cxr_tune.search.pace import final_fit_epochs
from cxr_tune.selection import ensemble_members, ranked_trials
from cxr_tune.train.checkpoints import load_state

SEED_OFFSET = 100_000  # final-fit seeds never coincide with a search trial's


def plan_final_fit(experiment: Experiment) -> list[FinalRun]:
    """The runs the space asks for (none when it has no final fit or no trial reported)."""
    settings = experiment.space().settings
    if settings.final_fit_top <= 0:
        return []
    table = experiment.trials(ranked=False)
    try:
        top = ensemble_members(ranked_trials(table, experiment.deciding_set), settings.final_fit_top)
    except ValueError:
        return []
    epochs = final_fit_epochs(settings, experiment.max_epochs)
    base = experiment.options.seed * 1000 + SEED_OFFSET
    return [FinalRun(f"{row['trial_id']}-seed{base + k}", str(row["trial_id"]), base + k, epochs)
            for _, row in top.iterrows() for k in range(settings.final_fit_seeds)]


def runs_to_train(experiment: Experiment) -> list[FinalRun]:
    """The runs of the final fit planned now; an interrupted final fit's own list while the search's
    ranking still gives it. A resumed search that ran more trials can change its best configurations:
    then the final fit is planned again, Tune's record of the old runs is dropped (it would restore
    them), and each run's checkpoints under ``train/`` stay, so a run still planned resumes from them."""
    stored, planned = experiment.final_fit_runs(), plan_final_fit(experiment)
    if not stored or not planned or [run.name for run in stored] == [run.name for run in planned]:
        return planned or stored
    kept = [run.name for run in planned if run.name in {old.name for old in stored}]
    print(f"\nFinal fit: the search's best configurations changed since its final fit was planned (the resumed search ran more "
          f"trials); planned again, {len(kept)} of its {len(planned)} run(s) already started", flush=True)
    folder = experiment.file(FINAL_FIT_DIR)
    for path in storage.glob(folder, "*"):
        if storage.name(path) != TRAIN_DIR:
            storage.remove(path)
    return planned


def describe_changes(changes: dict[str, Any]) -> str:
    """", with convs_per_block=2 set in each" for the space's ``final_fit_changes`` ("" for none): how the console and the report say it."""
    return f", with {assignments_text(changes)} set in each" if changes else ""


def run_final_fit(experiment_dir: str, options: Any = None, *, verbose: bool = False) -> list[FinalRun]:
    """Train the final-fit runs (resuming an interrupted final fit); returns them ([] when the space has none).
    A stop (Ctrl-C, SIGTERM) during it raises KeyboardInterrupt once Tune has stopped, whether or not the runs completed.

    ``options``: this command's search options (a resumed search may run on another cluster, with
    other resources); default: the experiment's own.
    """
    from cxr_tune.console import library_output_to, unreported_trials_unwarned
    from cxr_tune.ray_session import cluster_held, ray_session
    from cxr_tune.search.runner import log_path_of

    experiment = Experiment(experiment_dir)
    folder = experiment.file(FINAL_FIT_DIR)
    runs = runs_to_train(experiment)
    if not runs:
        return []
    storage.write_text_atomic(storage.join(folder, FINAL_FIT_MEMBERS), json.dumps([run.__dict__ for run in runs], indent=2))
    options = options or experiment.options
    configs = sorted({run.trial_id for run in runs})
    changes = experiment.space().settings.final_fit_changes
    print(f"\nFinal fit: {len(configs)} best configuration(s) ({', '.join(configs)}) x {len(runs) // len(configs)} new seed(s), "
          f"{runs[0].epochs} epochs each{describe_changes(changes)}; their last epochs averaged are exported if they score no lower "
          "than the search's own ensemble", flush=True)
    started = time.time()
    log = log_path_of(options)
    with library_output_to(log, verbose=verbose) as stream, ray_session(options.address, log=stream, verbose=verbose):
        # no run writes a result.json
        with unreported_trials_unwarned(), ctrl_c_kept() as stops, experiment.compute_logged("final fit", cluster_held):
            _tuner(experiment, runs, options, verbose=verbose).fit()
    if storage.is_uri(experiment.path) and os.path.exists(log):
        storage.copy(log, experiment.file(LOG_FILE))
    ends = experiment.final_fit_ends()
    lost = sum(gone for _, _, gone in ends)
    print(f"Final fit: {len(ends) - lost} of {len(runs)} run(s) completed in {(time.time() - started) / 60:.1f} min"
          + (f"; {lost} diverged (scores not finite) and are left out" if lost else ""), flush=True)
    if stops.arrived:  # Tune took it and returned: the command stops, even where every run completed as Tune shut down
        raise KeyboardInterrupt
    return runs


def _run_one(config: dict[str, Any], *, experiment_dir: str, runs: dict[str, dict], datasets: dict, class_counts: tuple[int, int], settings: Any) -> None:
    """Tune trainable of one final-fit run: the trial's hyperparameters, a new seed, the full schedule."""
    from cxr_tune.search.trial import report_again_if_ended
    from cxr_tune.train.hparams import HParams
    from cxr_tune.train.trainer import make_trainer
    from cxr_tune.train.tune_relay import fit_reporting_to_tune

    config = runs[config["run"]]
    hp = HParams.from_config({**config["hparams"], "seed": config["seed"], "epochs": config["epochs"]})
    if report_again_if_ended(storage.join(experiment_dir, FINAL_FIT_DIR, TRAIN_DIR, config["name"]), hp.epochs):
        return  # a run that ended after Tune's last save of its state
    fit_reporting_to_tune(lambda callbacks: make_trainer(
        hp, datasets[hp.image_size], class_counts, resources=settings.resources,
        storage_path=storage.join(experiment_dir, FINAL_FIT_DIR, TRAIN_DIR), name=config["name"],
        callbacks=callbacks, max_failures=settings.max_failures, deciding=settings.deciding, run=settings.run,
        loop_options={"keep": "last"}))


def _run_dirname(trial: Any) -> str:
    return trial.config["run"]


def _tuner(experiment: Experiment, runs: list[FinalRun], options: Any, *, verbose: bool) -> Any:
    import ray
    from ray import tune

    from cxr_tune.data.prepared import datasets_by_size
    from cxr_tune.search.budget import FinalFitRuns
    from cxr_tune.search.progress import ProgressPrinter
    from cxr_tune.search.runner import plan_search, run_options
    from cxr_tune.search.trial import TRIAL_RESTARTS, TrialSettings
    from cxr_tune.train.trainer import TRIAL_DRIVER_CPU

    folder = experiment.file(FINAL_FIT_DIR)
    table = experiment.trials(ranked=False)
    rows = {trial_id: table[table["trial_id"] == trial_id].iloc[0] for trial_id in {run.trial_id for run in runs}}
    space = experiment.space()
    changes = space.settings.final_fit_changes
    hparams = {trial_id: {**load_state(experiment.checkpoint_for(row))["hparams"], **changes} for trial_id, row in rows.items()}
    plan = plan_search(replace(options, trials=len(runs)), space, ray.cluster_resources())
    split = experiment.split()
    sizes = sorted({int(h["image_size"]) for h in hparams.values()})
    datasets = datasets_by_size(split, sizes)
    settings = TrialSettings(max_epochs=runs[0].epochs, criterion=options.select, min_sensitivity=options.min_sensitivity, seed=options.seed,
                             resources=plan.resources, train_storage=storage.join(folder, TRAIN_DIR), deciding=experiment.deciding_set, run=run_options(options))
    configs = {run.name: {"name": run.name, "trial_id": run.trial_id, "seed": run.seed, "epochs": run.epochs, "hparams": hparams[run.trial_id]} for run in runs}
    trainable = tune.with_resources(
        tune.with_parameters(_run_one, experiment_dir=experiment.path, runs=configs, datasets=datasets, class_counts=split.class_counts(), settings=settings),
        {"cpu": TRIAL_DRIVER_CPU},
    )
    ProgressPrinter.verbose = verbose
    ProgressPrinter.errors_in = folder  # its runs' folders, each failed one's error.txt
    ProgressPrinter.best_before = None  # its runs' own bests, not the search's
    FinalFitRuns.concurrency = plan.concurrency  # this command's cluster and flags, also for a restored final fit
    if tune_state_saved(folder):  # else Tune never saved a step: start it afresh
        return tune.Tuner.restore(folder, trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search([run.name for run in runs])},
        tune_config=tune.TuneConfig(search_alg=FinalFitRuns(max_concurrent=plan.concurrency), trial_dirname_creator=_run_dirname),
        run_config=tune.RunConfig(
            name=FINAL_FIT_DIR, storage_path=experiment.path, verbose=0,
            callbacks=[ProgressPrinter(len(runs), runs[0].epochs, options.select, experiment.deciding_set, label="final-fit run", budgeted=False)],
            failure_config=tune.FailureConfig(max_failures=TRIAL_RESTARTS),
        ),
    )
