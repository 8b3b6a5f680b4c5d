"""The per-worker Ray Train loop: one trial's training, evaluation, checkpoint and report per epoch.

Reads ``train`` from its Ray Data shard and ``val`` (and ``external``, when there is an external
validation set) whole: each worker scores every ``world_size``-th batch and the scores are
gathered, so every worker computes the same metrics on the full sets. Wraps the model in DDP when
there are several workers. Each epoch rank 0 writes a checkpoint (model, optimizer, scheduler,
epoch, threshold, hyperparameters, history and the scores of every validation set) and every
rank calls ``ray.train.report``. A restarted run resumes at the
epoch after its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_tune.selection import checkpoint_score
from cxr_tune.train import checkpoints
from cxr_tune.train.augment import augment_for
from cxr_tune.train.hparams import HParams
from cxr_tune.train.intensity import normalize_intensity
from cxr_tune.train.metrics import evaluate_scores
from cxr_tune.train.model import build_model

SHUFFLE_BUFFER = 2048


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(hp: HParams, model: nn.Module) -> torch.optim.Optimizer:
    # No weight decay on batch-norm and bias parameters (standard practice; decaying them hurts).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=hp.lr)


def build_scheduler(hp: HParams, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """Linear warm-up for ``warmup_epochs``, then cosine decay to zero at ``epochs``."""
    total = max(1, hp.epochs * steps_per_epoch)
    warmup = min(hp.warmup_epochs * steps_per_epoch, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Class-weighted BCE with label smoothing toward 0.5."""
    targets = targets * (1.0 - smoothing) + 0.5 * smoothing
    return nn.functional.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos_weight)


def to_inputs(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, H, W)`` from the data set → float ``(B, 1, H, W)`` in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def train_one_epoch(
    model: nn.Module,
    batches: Any,
    hp: HParams,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    pos_weight: torch.Tensor,
    generator: torch.Generator,
) -> tuple[float, int]:
    """One pass over this worker's shard; returns (mean loss, images seen)."""
    augment = augment_for(hp)
    model.train()
    total_loss, seen = 0.0, 0
    for batch in batches:
        x = normalize_intensity(augment(to_inputs(batch["image"]), generator), hp.intensity)
        y = batch["label"].float()
        if hp.mixup > 0:
            lam = float(np.random.beta(hp.mixup, hp.mixup))
            order = torch.randperm(x.shape[0], generator=generator, device=x.device)
            x, y = lam * x + (1 - lam) * x[order], lam * y + (1 - lam) * y[order]
        loss = bce_loss(model(x), y, pos_weight, hp.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += float(loss.detach()) * x.shape[0]
        seen += x.shape[0]
    return total_loss / max(seen, 1), seen


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Any, hp: HParams, device: torch.device, rank: int = 0, world: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores of every ``world``-th batch starting at ``rank``: (labels, probabilities, content hashes)."""
    model.eval()
    labels, scores, hashes = [], [], []
    for index, batch in enumerate(batches):
        if index % world != rank:
            continue
        images = torch.as_tensor(batch["image"]).to(device)
        x = normalize_intensity(to_inputs(images), hp.intensity)
        scores.append(torch.sigmoid(model(x)).float().cpu().numpy())
        labels.append(np.asarray(batch["label"]))
        hashes.append(np.asarray(batch["content_hash"]).astype(str))
    if not scores:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=str)
    return np.concatenate(labels), np.concatenate(scores), np.concatenate(hashes)


def _all_gather(value: Any, world: int) -> list[Any]:
    """``value`` from every rank, in rank order (a list of one without DDP)."""
    if world == 1:
        return [value]
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def _gather_scores(parts: tuple[np.ndarray, ...], world: int) -> tuple[np.ndarray, ...]:
    gathered = _all_gather(parts, world)
    return tuple(np.concatenate([g[i] for g in gathered]) for i in range(len(parts)))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point.

    ``config``: ``hparams`` (dict), ``class_counts`` ([n_normal, n_pneumonia]), ``threads`` (torch
    threads), ``has_external`` (an ``external`` dataset is there to score), ``select_on``
    (``external`` or ``carved``: which set the objective and threshold follow when both are there),
    and for fault-tolerance tests ``fail_at_epoch`` (raise once, in a run started fresh).
    """
    import ray
    import ray.train
    import ray.train.torch

    # Ray Train logs every report at INFO (the whole metrics dict) through a logger named after its
    # file, i.e. the root logger; the driver prints its own summary, so workers log warnings only.
    logging.getLogger().setLevel(logging.WARNING)
    hp = HParams.from_config(config["hparams"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    seed_everything(hp.seed * 1000 + rank)
    # One torch thread per reserved CPU, so concurrent trials do not fight over cores.
    torch.set_num_threads(max(1, int(config.get("threads") or os.environ.get("OMP_NUM_THREADS") or 1)))

    net = build_model(hp)
    model = ray.train.torch.prepare_model(net)  # moves to device; DDP when world > 1
    optimizer = build_optimizer(hp, model)
    train_shard = ray.train.get_dataset_shard("train")
    # Every epoch is scored on carved validation and, when there is one, on the external set;
    # the deciding set (external unless told otherwise) is what the objective and threshold follow.
    sets = {"val": ray.train.get_dataset_shard("val")}
    if config.get("has_external"):
        sets["ext"] = ray.train.get_dataset_shard("external")
    deciding = "ext" if "ext" in sets and config.get("select_on", "external") == "external" else "val"
    n_normal, n_pneumonia = config["class_counts"]
    steps_per_epoch = math.ceil((n_normal + n_pneumonia) // world / hp.batch_size)
    scheduler = build_scheduler(hp, optimizer, steps_per_epoch)
    pos_weight = torch.tensor(hp.pos_weight(n_normal, n_pneumonia), device=device)

    start_epoch, history = 0, []
    restored = ray.train.get_checkpoint()
    if restored:
        with restored.as_directory() as folder:
            state = checkpoints.load_state(folder)
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"] + 1, state["history"]

    fail_at = config.get("fail_at_epoch")  # fault injection for tests: crash once, before this epoch
    for epoch in range(start_epoch, hp.epochs):
        if fail_at is not None and epoch + 1 == fail_at and start_epoch == 0:
            raise RuntimeError(f"injected failure before epoch {fail_at}")
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
        )
        train_loss, seen = train_one_epoch(model, batches, hp, optimizer, scheduler, pos_weight, generator)
        train_seconds = time.perf_counter() - started
        scored = {prefix: _gather_scores(predict_batches(net, sets[prefix].iter_batches(batch_size=256, batch_format="numpy"), hp, device, rank, world), world)
                  for prefix in sets}
        workers = _all_gather((ray.get_runtime_context().get_node_id()[:12], seen), world)
        metrics = {}
        for prefix, (labels, scores, _) in scored.items():
            metrics.update({f"{prefix}_{k}": v for k, v in evaluate_scores(labels, scores, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance).items()})
        metrics.update({
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_images_per_s": sum(n for _, n in workers) / max(train_seconds, 1e-9),
            "epoch_seconds": time.perf_counter() - started,
            "lr": optimizer.param_groups[0]["lr"],
            # What ASHA, Optuna and the selection read: the deciding set's balance and its interval.
            "objective": metrics[f"{deciding}_objective"],
            "objective_low": metrics[f"{deciding}_objective_low"],
            "objective_high": metrics[f"{deciding}_objective_high"],
            "world_size": world,
            "start_epoch": start_epoch,  # > 0 when this run resumed from a checkpoint
            # Where each rank ran and how many training images its shard gave it this epoch.
            "worker_nodes": ",".join(node for node, _ in workers),
            "worker_images": ",".join(str(n) for _, n in workers),
        })
        history.append({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        metrics["checkpoint_score"] = checkpoint_score(history)  # Train keeps the best epoch's checkpoint by it
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = None
            if rank == 0:
                checkpoints.save_state(folder, {
                    "model": net.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch,
                    "threshold": metrics[f"{deciding}_threshold"],
                    "deciding_set": deciding,
                    "hparams": hp.to_dict(),
                    "history": history,
                }, scored)
                checkpoint = ray.train.Checkpoint.from_directory(folder)
            ray.train.report(metrics, checkpoint=checkpoint)
