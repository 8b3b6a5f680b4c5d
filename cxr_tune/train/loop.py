"""The per-worker Ray Train loop: one trial's training, evaluation, checkpoint and report per epoch.

Reads ``train`` from its Ray Data shard and ``val`` (and ``external``, when there is an external
validation set) whole: each worker scores every ``world_size``-th batch and the scores are
gathered in the set's order, so every worker computes the same metrics on the full sets; those batches are read from
Ray Data once and kept (:mod:`cxr_tune.train.scoring_sets`). Wraps the model in DDP when
there are several workers. The step itself (precision, memory layout, EMA) is
:mod:`cxr_tune.train.steps`. Each epoch rank 0 writes a checkpoint (the scored weights, the raw
ones when they differ (EMA), optimizer, scheduler, epoch, threshold, deciding set,
hyperparameters, precision, history and the scores of every validation set) and every rank
calls ``ray.train.report``. A restarted run resumes at the epoch after its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np
import torch

from cxr_tune.selection import checkpoint_score, prefix_of
from cxr_tune.train import checkpoints
from cxr_tune.train.hparams import HParams
from cxr_tune.train.metrics import evaluate_scores
from cxr_tune.train.model import build_model, load_weights
from cxr_tune.train.precision import configure_device, epochs_trained_in, resolve
from cxr_tune.train.scoring_sets import KEEP_LIMIT_BYTES, ScoringSet, in_set_order
from cxr_tune.train.steps import (build_ema, build_optimizer, build_scheduler, resume_scheduler, score_batch_size, score_batches, seed_everything,
                                  steps_per_epoch as count_steps, train_one_epoch)

SHUFFLE_BUFFER = 2048


def _all_gather(value: Any, world: int) -> list[Any]:
    """``value`` from every rank, in rank order (a list of one without DDP)."""
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def _gather_scores(parts: tuple[np.ndarray, ...], world: int, batch_size: int) -> tuple[np.ndarray, ...]:
    gathered = _all_gather(parts, world)
    return tuple(in_set_order([g[i] for g in gathered], batch_size) for i in range(len(parts)))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point.

    ``config``: ``hparams`` (dict), ``class_counts`` ([n_normal, n_pneumonia]), ``threads`` (torch
    threads), ``has_external`` (an ``external`` dataset is there to score), ``deciding_set``
    (``external`` or ``carved``: the set the objective, the best epoch and the threshold follow,
    decided by the trainer and recorded in every checkpoint), ``run`` (precision, memory format,
    deterministic, pretrained weights: :class:`cxr_tune.train.trainer.RunOptions`), ``keep``
    (``last``: keep the newest checkpoint, not the best epoch's), ``score_batch`` and
    ``scoring_keep_limit_bytes`` (images per scoring batch, and 0: read the validation sets from Ray Data
    every epoch; both for ``python -m cxr_tune.bench scoring``) and for
    fault-tolerance tests ``fail_at_epoch`` (raise once, in a run started fresh) and ``nan_at_epoch`` (weights NaN: a diverged run).
    """
    import ray
    import ray.train
    import ray.train.torch

    # Ray Train logs every report at INFO (the whole metrics dict) through a logger named after its
    # file, i.e. the root logger; the driver prints its own summary, so workers log warnings only.
    logging.getLogger().setLevel(logging.WARNING)
    hp = HParams.from_config(config["hparams"])
    run = config.get("run") or {}
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    configure_device(device, deterministic=bool(run.get("deterministic")))
    precision = resolve(run.get("precision", "auto"), device.type, run.get("memory_format", "auto"), device=device)
    seed_everything(hp.seed * 1000 + rank)
    # One torch thread per reserved CPU, so concurrent trials do not fight over cores.
    torch.set_num_threads(max(1, int(config.get("threads") or os.environ.get("OMP_NUM_THREADS") or 1)))

    net = build_model(hp).to(memory_format=precision.memory_format)
    model = ray.train.torch.prepare_model(net)  # moves to device; DDP when world > 1
    ema = build_ema(hp, net)
    scored_net = ema.module if ema is not None else net  # what is evaluated, checkpointed and exported
    optimizer = build_optimizer(hp, model)
    scaler = precision.grad_scaler()
    train_shard = ray.train.get_dataset_shard("train")
    # Every epoch is scored on carved validation and, when there is one, on the external set;
    # the deciding set (external unless told otherwise) is what the objective and threshold follow.
    # Each worker scores its share of every batch; the batches are read from Ray Data once (:mod:`cxr_tune.train.scoring_sets`).
    shards = {"val": "val", **({"ext": "external"} if config.get("has_external") else {})}
    score_batch = int(config.get("score_batch") or score_batch_size(device))
    sets = {prefix: ScoringSet(ray.train.get_dataset_shard(role), score_batch, rank, world,
                               keep_limit_bytes=int(config.get("scoring_keep_limit_bytes", KEEP_LIMIT_BYTES)))
            for prefix, role in shards.items()}
    deciding_set = config["deciding_set"]  # recorded by whoever started the run, never guessed here
    deciding = prefix_of(deciding_set)
    n_normal, n_pneumonia = config["class_counts"]
    steps_per_epoch = count_steps((n_normal + n_pneumonia) // world, hp.batch_size)  # Train splits the images equally
    scheduler = build_scheduler(hp, optimizer, steps_per_epoch)
    pos_weight = torch.tensor(hp.pos_weight(n_normal, n_pneumonia), device=device)
    cuda = device.type == "cuda"

    start_epoch, history = 0, []
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as folder:
            state = checkpoints.load_state(folder)
        net.load_state_dict(state.get("train_model", state["model"]))
        if ema is not None:
            ema.module.load_state_dict(state["model"])
            ema.n_averaged.fill_(int(state.get("ema_n_averaged", 1)))
        optimizer.load_state_dict(state["optimizer"])
        resume_scheduler(scheduler, state["scheduler"], (state["epoch"] + 1) * steps_per_epoch)  # a resume may have another worker count
        if scaler is not None and state.get("grad_scaler"):
            scaler.load_state_dict(state["grad_scaler"])
        start_epoch, history = state["epoch"] + 1, state["history"]
    elif (run.get("weights") or {}).get(hp.arch):
        load_weights(net, run["weights"][hp.arch])

    fail_at = config.get("fail_at_epoch")  # fault injection for tests: crash once, before this epoch
    poison_at = config.get("nan_at_epoch")  # and divergence: every weight NaN before this epoch
    for epoch in range(start_epoch, hp.epochs):
        if fail_at is not None and epoch + 1 == fail_at and start_epoch == 0:
            raise RuntimeError(f"injected failure before epoch {fail_at}")
        if poison_at is not None and epoch + 1 == poison_at:
            with torch.no_grad():
                for parameter in net.parameters():
                    parameter.fill_(math.nan)
        started = time.perf_counter()
        # Reseed every epoch so that a run resumed at this epoch continues exactly as an
        # uninterrupted one would (dropout draws from the global generator).
        seed_everything(hp.seed * 1000 + epoch * 10 + rank)
        generator = torch.Generator(device=device).manual_seed(hp.seed * 100_003 + epoch * 101 + rank)
        batches = train_shard.iter_torch_batches(
            batch_size=hp.batch_size,
            dtypes={"image": torch.uint8, "label": torch.float32},
            device=device,
            local_shuffle_buffer_size=SHUFFLE_BUFFER,
            local_shuffle_seed=hp.seed * 1000 + epoch * 10 + rank,
            # A GPU eats batches faster than one prefetched batch refills: keep a few in flight,
            # in pinned memory so the host-to-device copy runs asynchronously.
            prefetch_batches=4 if cuda else 1,
            pin_memory=cuda,
        )
        train_loss, seen = train_one_epoch(model, batches, hp, optimizer, scheduler, pos_weight, generator, precision, scaler=scaler, ema=ema)
        train_seconds = time.perf_counter() - started
        if world > 1:  # each rank's BatchNorm statistics (and their average) moved on its own shard: score rank 0's everywhere
            for buffer in scored_net.buffers():
                torch.distributed.broadcast(buffer, 0)
        scoring_started = time.perf_counter()
        scored = {prefix: _gather_scores(score_batches(scored_net, sets[prefix].batches(), hp, device, precision), world, score_batch) for prefix in sets}
        score_seconds = time.perf_counter() - scoring_started
        workers = _all_gather((ray.get_runtime_context().get_node_id()[:12], seen), world)
        metrics = {}
        for prefix, (labels, scores, _) in scored.items():
            metrics.update({f"{prefix}_{k}": v for k, v in evaluate_scores(labels, scores, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance).items()})
        # Non-finite scores: the weights are lost, and more epochs (or Train's retries) cannot bring them back. Every rank
        # holds the same gathered scores, so all stop together (a loss alone can be one rank's, or a skipped fp16 step's).
        diverged = any(metrics[f"{prefix}_non_finite"] for prefix in scored)
        metrics.update({
            "epoch": epoch + 1,
            "diverged": diverged,
            "train_loss": train_loss,
            "train_images_per_s": sum(n for _, n in workers) / max(train_seconds, 1e-9),
            "epoch_seconds": time.perf_counter() - started,
            "train_seconds": train_seconds,  # the training part of epoch_seconds
            "score_seconds": score_seconds,  # scoring the validation sets, within epoch_seconds
            "lr": optimizer.param_groups[0]["lr"],
            # What ASHA, Optuna and the selection read: the deciding set's balance and its interval.
            "objective": metrics[f"{deciding}_objective"],
            "objective_low": metrics[f"{deciding}_objective_low"],
            "objective_high": metrics[f"{deciding}_objective_high"],
            "deciding_set": deciding_set,
            "world_size": world,
            "start_epoch": start_epoch,  # > 0 when this run resumed from a checkpoint
            "precision": precision.name,
            "channels_last": precision.channels_last,
            # Where each rank ran and how many training images its shard gave it this epoch.
            "worker_nodes": ",".join(node for node, _ in workers),
            "worker_images": ",".join(str(n) for _, n in workers),
        })
        history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        # Train keeps the checkpoint of the epoch the selection rule names, or the newest when told
        # to keep the last (a final-fit run: no epoch is picked on the deciding set).
        metrics["checkpoint_score"] = float(epoch + 1) if config.get("keep") == "last" else checkpoint_score(history, deciding_set)
        with checkpoints.staging_folder() as folder:
            checkpoint = None
            if rank == 0:
                state = {
                    "model": scored_net.state_dict(),  # the weights every score above came from
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "threshold": metrics[f"{deciding}_threshold"],
                    "deciding_set": deciding_set,
                    "hparams": hp.to_dict(),
                    "history": history,
                    # what this process resolved, and what every epoch so far trained in (a run resumed elsewhere may mix precisions)
                    "run": {**run, **precision.record(), **epochs_trained_in(history)},
                }
                if ema is not None:  # the raw weights keep training after a resume; the average is what was scored
                    state.update({"train_model": net.state_dict(), "ema_n_averaged": int(ema.n_averaged)})
                if scaler is not None:
                    state["grad_scaler"] = scaler.state_dict()
                checkpoints.save_state(folder, state, scored)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)
        if diverged:
            break
