"""The Tune trainable: a small driver per trial that runs one Ray Train trainer (:func:`cxr_tune.train.trainer.make_trainer`).

Train V2 is the default in Ray 2.60, so Tune does not wrap a trainer; each trial is this function,
which builds the trainer and fits it. Rank 0's per-epoch reports reach Tune from the trial's own thread
(:func:`cxr_tune.train.tune_relay.fit_reporting_to_tune`; ASHA reads ``objective`` from them). The Train run is named after the trial
and stored under the experiment, so a restored trial resumes from its own last checkpoint; one whose
run had already ended, or that ASHA had stopped, reports that end again (:func:`report_again_if_ended`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxr_tune import storage
from cxr_tune.search.results import asha_stopped_at
from cxr_tune.train.hparams import HParams
from cxr_tune.train.trainer import Resources, RunOptions, make_trainer


# A failed trial starts again up to this many times (Tune's FailureConfig, the search's and the final fit's): the one layer
# that retries. Tune's restart builds the trial's trainer again under its name, which resumes from the Train run's last
# checkpoint, so a lost node costs the epochs since then; with Train retrying too (TrialSettings.max_failures), an error
# that repeats (a config that runs out of memory) ran 3 x 3 times while the console counted 3.
TRIAL_RESTARTS = 2


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares, besides its sampled config."""

    max_epochs: int
    criterion: str
    min_sensitivity: float
    seed: int
    resources: Resources
    train_storage: str  # where each trial's Train run (and checkpoints) lives
    max_failures: int = 0  # Train's own retries of the run: none, Tune restarts the trial (TRIAL_RESTARTS)
    deciding: str = "carved"  # the search's recorded deciding set (external or carved): what the objective follows
    run: RunOptions = RunOptions()  # precision, memory format, determinism, pretrained weights
    experiment_dir: str | None = None  # a search's folder: its trial_events.jsonl says which trials ASHA stopped (none for a final fit)


def trial_hparams(config: dict[str, Any], settings: TrialSettings) -> HParams:
    """A sampled config plus what the search fixes for every trial."""
    return HParams.from_config({
        **config,
        "epochs": settings.max_epochs,
        "criterion": settings.criterion,
        "min_sensitivity": settings.min_sensitivity,
        "seed": config.get("seed", settings.seed),
    })


def run_trial(config: dict[str, Any], *, datasets: dict[int, dict[str, Any]], class_counts: tuple[int, int], settings: TrialSettings) -> None:
    """Tune function trainable (wrapped with ``tune.with_parameters``)."""
    from ray import tune

    from cxr_tune.train.tune_relay import fit_reporting_to_tune

    hp = trial_hparams(config, settings)
    name = tune.get_context().get_trial_id()
    stopped_at = asha_stopped_at(settings.experiment_dir, name) if settings.experiment_dir else None
    if report_again_if_ended(storage.join(settings.train_storage, name), hp.epochs, stopped_at=stopped_at):
        return
    fit_reporting_to_tune(lambda callbacks: make_trainer(
        hp,
        datasets[hp.image_size],
        class_counts,
        resources=settings.resources,
        storage_path=settings.train_storage,
        name=name,
        callbacks=callbacks,
        max_failures=settings.max_failures,
        deciding=settings.deciding,
        run=settings.run,
    ))


def report_again_if_ended(run: str, epochs: int, *, stopped_at: int | None = None) -> bool:
    """When the Train run ``run`` of ``epochs`` epochs has already ended (all trained, diverged, or ASHA stopped it after
    epoch ``stopped_at``), report its last epoch to Tune again from its checkpoint and return True; else (no checkpoint
    yet, or epochs left) False.

    Why: Tune saves its state every ~10 s. A driver killed after a trial's run ended but before that save leaves the trial
    RUNNING there, and ``--resume`` starts it again. Its Train run, restored at its last epoch, trains and reports nothing,
    and Tune then ends the trial on a result without ``objective``, which ASHA and the searcher refuse (a TuneError that
    ended every resume); a trial ASHA had stopped trained on past its stop, and its table counted the epochs ASHA had cut
    (and could pick one as its best). Reported again, the epoch ends the trial as it ended before, for Tune, ASHA, the searcher and the
    trial table (whose other epochs come from the same checkpoint). Tune did not time this report, so its time is NaN
    (unknown), as for every epoch read back from a checkpoint, not the seconds since the restart.
    """
    from ray import tune

    from cxr_tune.train.checkpoints import newest, run_ended

    found = newest(run)
    if found is None:
        return False
    folder, state = found
    history = state["history"]
    at_stop = None
    if stopped_at is not None and history and int(history[-1]["epoch"]) >= stopped_at:
        # The stop's epoch: a worker may have trained more before the stop reached it, epochs ASHA never saw.
        at_stop = folder if int(history[-1]["epoch"]) == stopped_at else _checkpoint_of(run, stopped_at)
    if at_stop is not None:
        last, folder = next(row for row in history if int(row["epoch"]) == stopped_at), at_stop
    elif stopped_at is not None and history and int(history[-1]["epoch"]) > stopped_at:
        # Train kept a later, better checkpoint and dropped the stop's: the weights there are the later epoch's, so the
        # trial ends on that epoch (its table counts epochs ASHA had cut) rather than on metrics no kept weights have.
        last = history[-1]
    elif run_ended(state, epochs):
        last = history[-1]
    else:
        return False
    tune.report({**last, "checkpoint_path": folder, "recovered_from_checkpoint": True, "time_this_iter_s": float("nan")})
    return True


def _checkpoint_of(run: str, epoch: int) -> str | None:
    """The run's checkpoint of ``epoch`` (counted from 1), None when it was not kept."""
    from cxr_tune.train.checkpoints import load_state, saved_checkpoints

    return next((folder for folder in saved_checkpoints(run) if load_state(folder)["epoch"] + 1 == epoch), None)
