"""The training step and the scoring step, in plain PyTorch (no Ray): what every path trains with.

The Ray Train loop (:mod:`cxr_tune.train.loop`), the throughput benchmarks and the GPU device
check all call :func:`train_one_epoch` and :func:`score_batches`, so a speed measured on a bare
loop is the speed of the search's own step. The step states its precision and memory layout
(:class:`~cxr_tune.train.precision.Precision`): the forward and backward pass run under autocast,
weights and optimizer state stay fp32, fp16 gradients are loss-scaled, and the loss is summed on
the device (one host sync per epoch, not one per step). Scoring is always fp32.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from cxr_tune.train.augment import augment_for
from cxr_tune.train.hparams import MIN_BATCH, HParams
from cxr_tune.train.intensity import normalize_intensity
from cxr_tune.train.precision import Precision, fp32_scoring


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
        # Nesterov needs momentum: momentum 0 (in range, so a space may sample it) is plain SGD, not a crash inside Ray.
        return torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, nesterov=hp.momentum > 0)
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


def resume_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, saved: dict[str, Any], step: int) -> None:
    """Restore a checkpoint's scheduler state at ``step`` (the completed epochs times *this* run's steps per epoch) and put
    the optimizer's rate there. The saved step count holds only for the worker count that saved it: each worker's shard,
    so its steps per epoch, follows the worker count (1 then 2 workers ran 142 steps of a 108-step schedule)."""
    rates = [base * factor(step) for base, factor in zip(saved["base_lrs"], scheduler.lr_lambdas, strict=True)]
    scheduler.load_state_dict({**saved, "last_epoch": step, "_last_lr": rates})
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate


def build_ema(hp: HParams, net: nn.Module) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights *and* BatchNorm statistics (``ema_decay`` per
    step), or None when ``ema_decay`` is 0. Evaluation, checkpoints and export use the average:
    it smooths the epoch-to-epoch swings that make the best of noisy epochs a draw."""
    if hp.ema_decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(net, multi_avg_fn=ema_with_warmup(hp.ema_decay), use_buffers=True)


def ema_with_warmup(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor | int], None]:
    """torch's EMA update (``get_ema_multi_avg_fn``) with the usual warm-up: at step t the decay is
    ``min(decay, (1 + t) / (10 + t))``. Without it the average of a 0.998 EMA still holds half of
    the random initialization after 350 steps, and ASHA judges trials after two epochs."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor | int) -> None:
        steps = float(num_averaged)
        weight = 1.0 - min(decay, (1.0 + steps) / (10.0 + steps))
        floats = [(a, c) for a, c in zip(averaged, current, strict=True) if a.is_floating_point()]
        if floats:
            torch._foreach_lerp_([a for a, _ in floats], [c for _, c in floats], weight)
        for a, c in zip(averaged, current, strict=True):
            if not a.is_floating_point():
                a.copy_(c)  # counters (BatchNorm's num_batches_tracked): the model's own

    return update


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Class-weighted BCE with label smoothing toward 0.5, computed in fp32 whatever the autocast."""
    targets = targets * (1.0 - smoothing) + 0.5 * smoothing
    return nn.functional.binary_cross_entropy_with_logits(logits.float(), targets, pos_weight=pos_weight)


def to_inputs(images: torch.Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """uint8 ``(B, H, W)`` from the data set → float ``(B, 1, H, W)`` in [0, 1] in ``memory_format``."""
    return images.unsqueeze(1).float().div_(255.0).contiguous(memory_format=memory_format)


def steps_per_epoch(images: int, batch_size: int) -> int:
    """Optimizer steps in an epoch of ``images`` in batches of ``batch_size``: a last batch of fewer than
    :data:`~cxr_tune.train.hparams.MIN_BATCH` images is skipped (:func:`train_one_epoch`), so it takes no step of the schedule."""
    full, rest = divmod(images, batch_size)
    return full + int(rest >= min(MIN_BATCH, batch_size))


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    hp: HParams,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    pos_weight: torch.Tensor,
    generator: torch.Generator,
    precision: Precision,
    *,
    scaler: torch.amp.GradScaler | None = None,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> tuple[float, int]:
    """One pass over this worker's batches; returns (mean loss, images seen).

    Batches hold uint8 ``image`` ``(B, H, W)`` and float ``label`` tensors, already on the device. A last batch of fewer
    than :data:`~cxr_tune.train.hparams.MIN_BATCH` images (one image left over, where ``batch_size`` is larger) is skipped, not
    trained on: a network whose BatchNorm sees a 1x1 map would crash on it in train mode. Under DDP every worker's shard holds as many images (Ray
    Train splits the training set equally), so every worker skips it and all take the same steps.
    """
    augment = augment_for(hp)
    model.train()
    total_loss, seen = None, 0
    for batch in batches:
        if len(batch["label"]) < min(MIN_BATCH, hp.batch_size):  # a last, partial batch (batch_size 1 trains on every one)
            continue
        x = to_inputs(batch["image"], precision.memory_format)
        x = normalize_intensity(augment(x, generator), hp.intensity)
        y = batch["label"].float()
        if hp.mixup > 0:
            lam = float(np.random.beta(hp.mixup, hp.mixup))
            order = torch.randperm(x.shape[0], generator=generator, device=x.device)
            x, y = lam * x + (1 - lam) * x[order], lam * y + (1 - lam) * y[order]
        with precision.autocast():
            logits = model(x)
        loss = bce_loss(logits, y, pos_weight, hp.label_smoothing)
        optimizer_step(loss, optimizer, scaler)
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model.module if hasattr(model, "module") else model)
        step_loss = loss.detach() * x.shape[0]
        total_loss = step_loss if total_loss is None else total_loss + step_loss  # stays on the device
        seen += x.shape[0]
    return (float(total_loss) / seen if seen else 0.0), seen


def optimizer_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None) -> None:
    """Backward and step; fp16 losses are scaled so small gradients do not underflow."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


#: Images per scoring batch by device type. On this 2-core CPU, a Ray Train run of the real data at
#: 64 px (one thread, as a search's trial) scored its 1,089 validation images each epoch in 0.69 of
#: the time in batches of 32 as in batches of 256 (0.53 with the sets kept, :mod:`cxr_tune.train.scoring_sets`;
#: results/benchmarks/scoring.md): a big batch's activations spill out of the CPU's caches. A GPU
#: keeps big batches (not measured there).
SCORE_BATCH = {"cpu": 32, "cuda": 256}


def score_batch_size(device: torch.device) -> int:
    return SCORE_BATCH.get(device.type, SCORE_BATCH["cuda"])


@torch.no_grad()
def score_batches(model: nn.Module, batches: Iterable[dict[str, Any]], hp: HParams, device: torch.device,
                  precision: Precision | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """fp32 scores of ``batches``: (labels, probabilities, content hashes)."""
    model.eval()
    memory_format = precision.memory_format if precision else torch.contiguous_format
    labels, scores, hashes = [], [], []
    with fp32_scoring():
        for batch in batches:
            images = torch.as_tensor(batch["image"]).to(device, non_blocking=True)
            x = normalize_intensity(to_inputs(images, memory_format), hp.intensity)
            scores.append(torch.sigmoid(model(x)).float().cpu().numpy())
            labels.append(np.asarray(batch["label"]))
            hashes.append(np.asarray(batch["content_hash"]).astype(str))
    if not scores:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=str)
    return np.concatenate(labels), np.concatenate(scores), np.concatenate(hashes)
