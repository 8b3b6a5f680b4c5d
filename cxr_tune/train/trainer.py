"""Build the Ray Train ``TorchTrainer`` for one configuration; the same code runs alone or in Tune."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cxr_tune.train.hparams import HParams
from cxr_tune.train.loop import train_loop_per_worker


@dataclass(frozen=True)
class Resources:
    """What one trial asks of the cluster."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0


def make_trainer(
    hp: HParams,
    datasets: dict[str, Any],
    class_counts: tuple[int, int],
    *,
    resources: Resources,
    storage_path: str,
    name: str,
    callbacks: list[Any] | None = None,
    max_failures: int = 2,
    loop_options: dict[str, Any] | None = None,
    select_on: str = "external",
) -> Any:
    """A ``TorchTrainer`` that trains ``hp`` on ``datasets`` (``train`` sharded; ``val`` and, when
    given, ``external`` whole). ``select_on`` (``external`` or ``carved``) is the set the objective
    and threshold follow when there is an external set.

    Checkpoints go to ``storage_path/name``; a trainer created again with the same name resumes
    from the latest one there. Worker failures (a lost node) restart from the last checkpoint up
    to ``max_failures`` times.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    per_worker = {"CPU": resources.cpus_per_worker}
    if resources.use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "hparams": hp.to_dict(),
            "class_counts": list(class_counts),
            "threads": max(1, round(resources.cpus_per_worker)),
            "has_external": "external" in datasets,
            "select_on": select_on,
            **(loop_options or {}),
        },
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=resources.use_gpu, resources_per_worker=per_worker),
        datasets={role: datasets[role] for role in ("train", "val", "external") if role in datasets},
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="checkpoint_score", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=3),
            callbacks=callbacks or [],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
