"""Measure training throughput through Ray Data + Ray Train against a bare PyTorch loop, same model and steps.

Both paths run the same :func:`cxr_tune.train.loop.train_one_epoch` (augmentation, intensity
normalization, forward, backward, optimizer and scheduler step) on the same cached 128 px images
with the same number of torch threads and the same batches per epoch. The Ray path reads its
shard with ``iter_torch_batches`` inside a Ray Train worker; the bare loop slices tensors already
in memory. Throughput counts training only (validation and start-up are reported apart).
"""

from __future__ import annotations

import math
import tempfile
import time

import numpy as np
import torch

from cxr_tune.bench.common import real_data, write_result
from cxr_tune.data.prepared import DataOptions, datasets_by_size, split_data
from cxr_tune.train.checkpoints import load_state
from cxr_tune.train.hparams import HParams
from cxr_tune.train.loop import build_optimizer, build_scheduler, seed_everything, train_one_epoch
from cxr_tune.train.model import build_model
from cxr_tune.train.trainer import Resources, make_trainer


def bare_loop(images: np.ndarray, labels: np.ndarray, hp: HParams, pos_weight: float, threads: int) -> list[float]:
    """Training images/s per epoch with tensors already in memory (no Ray)."""
    torch.set_num_threads(threads)
    seed_everything(hp.seed)
    model = build_model(hp)
    optimizer = build_optimizer(hp, model)
    steps = math.ceil(len(images) / hp.batch_size)
    scheduler = build_scheduler(hp, optimizer, steps)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels.astype(np.float32))
    rates = []
    for epoch in range(hp.epochs):
        generator = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(x_all), generator=generator)
        batches = ({"image": x_all[idx], "label": y_all[idx]} for idx in order.split(hp.batch_size))
        started = time.perf_counter()
        _, seen = train_one_epoch(model, batches, hp, optimizer, scheduler, torch.tensor(pos_weight), generator)
        rates.append(seen / (time.perf_counter() - started))
    return rates


def run(data: str | None, size: int, epochs: int) -> None:
    import ray

    from cxr_tune.ray_session import ray_session

    split = split_data(DataOptions(data=real_data(data)))
    hp = HParams(image_size=size, depth=4, filters=16, batch_size=32, epochs=epochs, augment_strength=0.5)
    counts = split.class_counts("train")
    with ray_session():
        threads = int(ray.cluster_resources()["CPU"])
        datasets = datasets_by_size(split, [size])[size]
        train = datasets["train"].take_all()
        images = np.stack([row["image"] for row in train])
        labels = np.array([row["label"] for row in train])
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as storage:
            result = make_trainer(hp, datasets, counts, resources=Resources(1, float(threads)), storage_path=storage, name="bench").fit()
            wall = time.perf_counter() - started
            with result.checkpoint.as_directory() as folder:
                history = load_state(folder)["history"]
        bare = bare_loop(images, labels, hp, hp.pos_weight(*counts), threads)
    ray_rates = [h["train_images_per_s"] for h in history]
    train_seconds = sum(len(images) / r for r in ray_rates)
    ratio_all = (len(ray_rates) / sum(1 / r for r in ray_rates)) / (len(bare) / sum(1 / r for r in bare))
    warm = slice(1, None) if epochs > 1 else slice(None)
    ratio_warm = float(np.mean(ray_rates[warm]) / np.mean(bare[warm]))
    summary = [
        f"Same model ({hp.depth} blocks, widths {list(hp.widths)}), {size} px real training images ({len(images)}), batch {hp.batch_size}, "
        f"{math.ceil(len(images) / hp.batch_size)} steps per epoch x {epochs} epochs per path, {threads} torch threads.",
        "",
        "| epoch | Ray Data + Ray Train (images/s) | bare PyTorch, in-memory tensors (images/s) | ratio |",
        "|---:|---:|---:|---:|",
        *[f"| {i + 1} | {r:.1f} | {b:.1f} | {r / b:.3f} |" for i, (r, b) in enumerate(zip(ray_rates, bare, strict=True))],
        "",
        f"**Ratio Ray / bare, all epochs: {ratio_all:.3f}; epochs after the first: {ratio_warm:.3f}** (goal: >= 0.90).",
        f"Outside the training time: the Ray run took {wall:.1f} s wall in all, of which {train_seconds:.1f} s training; "
        "the rest is worker start-up, validation each epoch and checkpoints.",
    ]
    write_result("train_throughput", "Training throughput: Ray Data + Ray Train vs a bare PyTorch loop", summary, {
        "image_size": size, "epochs": epochs, "threads": threads, "images": len(images), "hparams": hp.to_dict(),
        "ray_images_per_s": ray_rates, "bare_images_per_s": bare, "ratio_all_epochs": ratio_all, "ratio_after_first": ratio_warm,
        "ray_wall_s": wall,
    })
