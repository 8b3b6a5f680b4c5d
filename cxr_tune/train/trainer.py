"""Build the Ray Train trainer for one configuration; the same code runs alone or in Tune.

Several workers, or a GPU, get a ``TorchTrainer`` (its backend starts the process group DDP needs
and sets each worker's CUDA device). One CPU worker has nothing to synchronise, so it gets Train's
plain ``DataParallelTrainer`` with the same loop: then neither the trial's driver nor Train's
controller imports torch, which they did only to hand the Torch backend and the loop to Ray
(about 2.7 CPU-seconds each per trial of about 31, measured on a 4-trial smoke search, 2026-12-03).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from cxr_tune.errors import UserError
from cxr_tune.train.hparams import MEMORY_FORMATS, PRECISIONS, HParams

TRIAL_DRIVER_CPU = 0.01  # a Tune trial that runs a Train run (a search trial, a final-fit run, a fold) only waits on its workers


def check_gpus(workers: int, gpus: float, have: float) -> None:
    """One line when the Ray cluster (running, or the one this command would start) has too few GPUs for one run or trial."""
    if have < gpus * workers:
        raise UserError(f"{workers} worker(s) x {gpus:g} GPU but the Ray cluster has {have:g} GPU(s)")


def check_own_ray_gpus(address: str | None, workers: int, gpus: float) -> None:
    """:func:`check_gpus` at once, before the data scan and Ray's start (20-30 s), when the command starts its own Ray on
    this machine: that Ray sees the GPUs torch sees. A cluster it joins (``--address``, ``RAY_ADDRESS``) or a Ray already
    running in this process counts its own once joined."""
    if gpus <= 0 or address or os.environ.get("RAY_ADDRESS") or ("ray" in sys.modules and sys.modules["ray"].is_initialized()):
        return
    import torch

    check_gpus(workers, gpus, torch.cuda.device_count())


def ranks_share_a_gpu(workers: int, gpus_per_worker: float) -> bool:
    """Whether the workers of one DDP run would share GPUs, which NCCL refuses (two ranks on one device): packing
    fractions of a GPU is for one-worker runs."""
    return workers > 1 and 0 < gpus_per_worker < 1


@dataclass(frozen=True)
class Resources:
    """What one trial asks of the cluster: ``workers`` Ray Train workers, each with :meth:`bundle`."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # a fraction packs several trials onto one GPU

    @property
    def use_gpu(self) -> bool:
        return self.gpus_per_worker > 0

    @property
    def threads(self) -> int:
        """The torch threads each worker computes with: one per reserved CPU, so runs side by side do not fight over cores."""
        return max(1, round(self.cpus_per_worker))

    def bundle(self) -> dict[str, float]:
        """One worker's resource request, as Ray schedules it."""
        return {"CPU": self.cpus_per_worker, **({"GPU": self.gpus_per_worker} if self.use_gpu else {})}

    def runs_at_once(self, cluster: dict[str, float]) -> int:
        """How many runs asking for these resources ``cluster`` (``ray.cluster_resources()``) holds
        side by side; at least 1 (a run the cluster cannot hold yet waits for it)."""
        fits = [cluster.get(key, 0.0) / (need * self.workers) for key, need in self.bundle().items() if need > 0]
        return max(1, int(min(fits, default=1) + 1e-9))


@dataclass(frozen=True)
class RunOptions:
    """How a run computes, beside its hyperparameters (recorded with the experiment and each checkpoint).

    ``precision`` and ``memory_format``: :mod:`cxr_tune.train.precision`. ``deterministic``:
    bitwise-repeatable GPU kernels, so a run resumed on a GPU continues exactly (CPU runs are
    repeatable without it, on the same machine, image cache and thread count). ``weights``: local pretrained weights files by architecture
    (``{"resnet18": PATH}``); a run of another architecture starts from scratch (nothing is
    downloaded).
    """

    precision: str = "auto"
    memory_format: str = "auto"
    deterministic: bool = False
    weights: dict[str, str] | None = None

    def to_config(self) -> dict[str, Any]:
        return asdict(self)


def add_precision_arguments(parser: Any) -> None:
    """``--precision`` and ``--memory-format``, shared by train and search (here, beside what they fill: no torch for a parser)."""
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="training precision: auto (bf16 on CPUs with native bf16 and on bf16 GPUs, fp16 with loss scaling on older "
                             "GPUs, else fp32), fp32, bf16 or fp16; weights, optimizer state and every evaluation stay fp32 (default: auto)")
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, default="auto",
                        help="memory layout of the model and its batches: auto (channels_last: measured faster on a CPU, preferred by cuDNN on GPUs), "
                             "channels_last or contiguous (default: auto)")


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
    deciding: str,
    run: RunOptions = RunOptions(),
) -> Any:
    """A Ray Train trainer (which one: the module's note) that trains ``hp`` on ``datasets``
    (``train`` sharded; ``val`` and, when given, ``external`` whole). ``deciding`` (``external``
    or ``carved``) is the set the objective, the best epoch and the threshold follow: the recorded
    deciding set of the search or run (:meth:`cxr_tune.data.prepared.SplitData.deciding_set`,
    ``experiment.json``), passed to the loop and stored in every checkpoint, never inferred from
    its numbers.

    Checkpoints go to ``storage_path/name``; a trainer created again with the same name resumes
    from the latest one there. Worker failures (a lost node) restart from the last checkpoint up
    to ``max_failures`` times.
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig

    if resources.workers > 1 or resources.use_gpu:
        from ray.train.torch import TorchTrainer as Trainer
    else:  # TorchTrainer's base class (a DeveloperAPI of Ray 2.60's Train V2)
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer as Trainer

    if deciding not in ("external", "carved") or (deciding == "external" and "external" not in datasets):
        raise ValueError(f"deciding set {deciding!r} for datasets {sorted(datasets)}")
    if ranks_share_a_gpu(resources.workers, resources.gpus_per_worker):
        raise ValueError("the workers of one DDP run cannot share a GPU (NCCL refuses two ranks on one device); give each a whole GPU")
    return Trainer(
        train_loop_per_worker,
        train_loop_config={
            "hparams": hp.to_dict(),
            "class_counts": list(class_counts),
            "threads": resources.threads,
            "has_external": "external" in datasets,
            "deciding_set": deciding,
            "run": run.to_config(),
            **(loop_options or {}),
        },
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=resources.use_gpu, resources_per_worker=resources.bundle()),
        datasets={role: datasets[role] for role in ("train", "val", "external") if role in datasets},
        # One worker reads the whole train set: no split, so no split-coordinator actor per trial.
        dataset_config=DataConfig(datasets_to_split=["train"] if resources.workers > 1 else []),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="checkpoint_score", checkpoint_score_order="max"),
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=3),
            callbacks=callbacks or [],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )


def fit(trainer: Any) -> Any:
    """``trainer.fit()`` with Ctrl-C as ``KeyboardInterrupt``. On the main thread, ``fit()`` installs Ray Train's own SIGINT
    handler, which aborts the run gracefully (its checkpoints stay) and then raises ``SystemExit(1)`` out of ``fit()``:
    a command would end with status 1 and no word. Callers say what was kept; :func:`cxr_tune.errors.run_cli` ends with 130."""
    from cxr_tune.errors import ctrl_c_kept

    try:
        with ctrl_c_kept():
            return trainer.fit()
    except SystemExit:
        raise KeyboardInterrupt from None


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """What each Ray Train worker runs (:func:`cxr_tune.train.loop.train_loop_per_worker`).

    Ray pickles this function by reference, so whoever builds a trainer imports its module: this
    one is torch-free, and the loop (with torch and scikit-learn) loads in the worker only.
    """
    from cxr_tune.train.loop import train_loop_per_worker as loop

    loop(config)
