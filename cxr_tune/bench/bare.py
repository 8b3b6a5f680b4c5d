"""The project's own training step on tensors already in memory, no Ray: the reference the Ray path is measured against.

Same model, augmentation, intensity normalization, loss, optimizer, scheduler, precision and
memory layout as a search trial (:mod:`cxr_tune.train.steps`), fed from in-memory uint8 tensors.
Imports torch and numpy only, so the GPU device check can run it where Ray is not installed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from cxr_tune.train.hparams import HParams
from cxr_tune.train.model import build_model
from cxr_tune.train.precision import Precision
from cxr_tune.train.steps import build_ema, build_optimizer, build_scheduler, score_batch_size, score_batches, seed_everything, train_one_epoch


@dataclass
class BareRun:
    """A model training on in-memory images, one epoch at a time."""

    hp: HParams
    precision: Precision
    device: torch.device
    images: torch.Tensor  # uint8 (N, S, S), on the device
    labels: torch.Tensor  # float (N,), on the device
    pos_weight: float = 1.0
    compile_mode: str | None = None  # torch.compile the network (only) with this mode; None: eager

    def __post_init__(self) -> None:
        seed_everything(self.hp.seed)
        self.net = build_model(self.hp).to(self.device, memory_format=self.precision.memory_format)
        self.ema = build_ema(self.hp, self.net)
        self.optimizer = build_optimizer(self.hp, self.net)
        self.scheduler = build_scheduler(self.hp, self.optimizer, math.ceil(len(self.images) / self.hp.batch_size))
        self.scaler = self.precision.grad_scaler()
        if self.compile_mode is not None:  # after the EMA copied it; the compiled module shares its parameters
            self.net = torch.compile(self.net, mode=self.compile_mode)
        self.epoch = 0

    def train_epoch(self) -> float:
        """One epoch over the images in a fresh order; returns training images per second."""
        generator = torch.Generator(device=self.device).manual_seed(self.hp.seed * 100_003 + self.epoch)
        order = torch.randperm(len(self.images), device=self.device, generator=generator)
        batches = ({"image": self.images[idx], "label": self.labels[idx]} for idx in order.split(self.hp.batch_size))
        synchronize(self.device)
        started = time.perf_counter()
        _, seen = train_one_epoch(self.net, batches, self.hp, self.optimizer, self.scheduler, torch.tensor(self.pos_weight, device=self.device),
                                  generator, self.precision, scaler=self.scaler, ema=self.ema)
        synchronize(self.device)
        self.epoch += 1
        return seen / (time.perf_counter() - started)

    def scores(self, images: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        """fp32 probabilities of ``images`` (uint8 (N, S, S)) with the weights a checkpoint would keep,
        in batches of ``batch_size`` (default: the training loop's for this device)."""
        model = self.ema.module if self.ema is not None else self.net
        batch_size = batch_size or score_batch_size(self.device)
        batches = ({"image": images[i : i + batch_size], "label": np.zeros(len(images[i : i + batch_size])),
                    "content_hash": np.zeros(len(images[i : i + batch_size]), dtype=str)} for i in range(0, len(images), batch_size))
        return score_batches(model, batches, self.hp, self.device, self.precision)[1]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
