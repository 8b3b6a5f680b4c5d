"""The Tune trainable: a small driver per trial that runs one Ray Train trainer (:func:`cxr_tune.train.trainer.make_trainer`).

Train V2 is the default in Ray 2.60, so Tune does not wrap a trainer; each trial is this function,
which builds the trainer and calls ``fit()``. Rank 0's per-epoch reports reach Tune through
``TuneReportCallback`` (ASHA reads ``objective`` from them). The Train run is named after the trial
and stored under the experiment, so a restored trial resumes from its own last checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxr_tune.train.hparams import HParams
from cxr_tune.train.trainer import Resources, RunOptions, make_trainer


@dataclass(frozen=True)
class TrialSettings:
    """What every trial of one search shares, besides its sampled config."""

    max_epochs: int
    criterion: str
    min_sensitivity: float
    seed: int
    resources: Resources
    train_storage: str  # where each trial's Train run (and checkpoints) lives
    max_failures: int = 2
    deciding: str = "carved"  # the search's recorded deciding set (external or carved): what the objective follows
    run: RunOptions = RunOptions()  # precision, memory format, determinism, pretrained weights


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
    from ray.tune.integration.ray_train import TuneReportCallback

    hp = trial_hparams(config, settings)
    trainer = make_trainer(
        hp,
        datasets[hp.image_size],
        class_counts,
        resources=settings.resources,
        storage_path=settings.train_storage,
        name=tune.get_context().get_trial_id(),
        callbacks=[TuneReportCallback()],
        max_failures=settings.max_failures,
        deciding=settings.deciding,
        run=settings.run,
    )
    trainer.fit()
