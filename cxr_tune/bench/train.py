"""Training throughput by precision and memory layout, through Ray Data + Ray Train and in a bare loop, side by side.

For each image size and each (precision, layout) the same training step
(:func:`cxr_tune.train.steps.train_one_epoch`: augmentation, intensity normalization, forward,
backward, optimizer and scheduler step) runs on the same training images with the same
number of torch threads, twice: in a bare loop over tensors already in memory, and in a Ray
Train worker reading its Ray Data shard (the search's own path). Throughput counts training only
(validation and start-up are apart); the first epoch of each path is a warm-up and only later
epochs count. All measurements of one size run back to back in one process, so ratios compare
like with like on a noisy machine.
"""

from __future__ import annotations

import tempfile
from dataclasses import replace

import numpy as np
import pandas as pd
import torch

from cxr_tune.bench.bare import BareRun
from cxr_tune.bench.common import other_data, real_data, results_folder, sample_training, write_result
from cxr_tune.data.prepared import DataOptions, split_data
from cxr_tune.train.checkpoints import load_state
from cxr_tune.train.hparams import HParams
from cxr_tune.train.precision import resolve
from cxr_tune.train.trainer import Resources, RunOptions, fit, make_trainer

#: The model the issue's probe timed: PneumoniaCNN, depth 5, 24 filters growing x2 (16 at 224 px), batch 32, AdamW.
MODEL = {"depth": 5, "filters": 24, "width_growth": 2.0, "batch_size": 32, "optimizer": "adamw", "augment_strength": 0.5}
WIDE_IMAGE = 224


def variants(precisions: list[str]) -> list[tuple[str, str]]:
    """(precision, memory format) pairs: each asked precision (``auto`` resolved on this CPU) with and without channels_last."""
    names = []
    for name in precisions:
        resolved = resolve(name, "cpu").name
        if resolved not in names:
            names.append(resolved)
    return [(name, layout) for name in names for layout in ("contiguous", "channels_last")]


def run(data: str | None, sizes: list[int], precisions: list[str], epochs: int, images: int, out: str | None = None) -> None:
    folder = results_folder("train", out, other_data(data))
    import ray

    from cxr_tune.data.cache import prepare_cache, role_datasets
    from cxr_tune.ray_session import ray_session

    split = split_data(DataOptions(data=real_data(data)))
    subset = sample_training(split.roles, images)
    val_rows = subset[subset["role"] == "val"].drop_duplicates("content_hash").head(64)["content_hash"]
    subset.loc[(subset["role"] == "val") & ~subset["content_hash"].isin(val_rows), "role"] = "unused"  # validation is not timed; keep it short
    counts = replace(split, roles=subset).class_counts("train")
    rows = []
    with ray_session(), tempfile.TemporaryDirectory() as scratch:
        threads = int(ray.cluster_resources()["CPU"])
        torch.set_num_threads(threads)
        for size in sizes:
            cache = prepare_cache(split.source.manifest, size, split.cache_dir)
            datasets = role_datasets(cache, subset, ("train", "val"))
            train = datasets["train"].take_all()
            pixels = torch.from_numpy(np.stack([row["image"] for row in train]))
            labels = torch.tensor([row["label"] for row in train], dtype=torch.float32)
            hp = HParams(image_size=size, epochs=epochs, **{**MODEL, "filters": 16 if size >= WIDE_IMAGE else 24})
            for precision_name, layout in variants(precisions):
                precision = resolve(precision_name, "cpu", layout)
                bare = BareRun(hp, precision, torch.device("cpu"), pixels, labels, hp.pos_weight(*counts))
                bare_rates = [bare.train_epoch() for _ in range(epochs)]
                result = fit(make_trainer(hp, datasets, counts, resources=Resources(1, float(threads)), storage_path=scratch, deciding="carved",
                                          name=f"bench-{size}-{precision_name}-{layout}", run=RunOptions(precision_name, layout)))
                with result.checkpoint.as_directory() as folder:
                    history = load_state(folder)["history"]
                ray_rates = [h["train_images_per_s"] for h in history]
                rows.append({"image_size": size, "precision": precision_name, "layout": layout,
                             "bare_img_s": float(np.mean(bare_rates[1:] or bare_rates)), "ray_img_s": float(np.mean(ray_rates[1:] or ray_rates)),
                             "bare_epochs": bare_rates, "ray_epochs": ray_rates})
                print(f"{size} px {precision_name} {layout}: bare {rows[-1]['bare_img_s']:.1f} img/s, Ray {rows[-1]['ray_img_s']:.1f} img/s", flush=True)
    frame = pd.DataFrame(rows)
    write_result("train_throughput", "Training throughput by precision and layout: Ray Data + Ray Train vs a bare loop",
                 summary(frame, hp, threads, len(pixels), epochs, split.source.description), {"rows": rows, "threads": threads, "images": int(len(pixels)), "epochs": epochs,
                                                                    "model": MODEL, "auto_on_this_cpu": resolve("auto", "cpu").describe()}, folder)


def summary(frame: pd.DataFrame, hp: HParams, threads: int, images: int, epochs: int, data: str) -> list[str]:
    """The side-by-side table and the two ratios the acceptance asks about; ``data``: the source's description (SYNTHETIC says so)."""
    base = frame[(frame["precision"] == "fp32") & (frame["layout"] == "contiguous")].set_index("image_size")
    frame = frame.assign(
        ray_over_bare=frame["ray_img_s"] / frame["bare_img_s"],
        bare_over_fp32=frame["bare_img_s"] / frame["image_size"].map(base["bare_img_s"]),
        ray_over_fp32=frame["ray_img_s"] / frame["image_size"].map(base["ray_img_s"]),
    )
    chosen = resolve("auto", "cpu")
    pick = frame[(frame["precision"] == chosen.name) & (frame["layout"] == ("channels_last" if chosen.channels_last else "contiguous"))]
    shown = frame[["image_size", "precision", "layout", "bare_img_s", "ray_img_s", "ray_over_bare", "bare_over_fp32", "ray_over_fp32"]]
    lines = [
        f"Model: PneumoniaCNN, {MODEL['depth']} blocks, {MODEL['filters']} filters growing x{MODEL['width_growth']:g} "
        f"(16 at {WIDE_IMAGE} px), batch {MODEL['batch_size']}, AdamW, augmentation strength {MODEL['augment_strength']}; {images} training "
        f"images of the {data} per epoch, {epochs} epochs per path (the first a warm-up), {threads} torch threads.",
        f"`--precision auto` on this CPU: {chosen.describe()}.",
        "",
        "Images per second of training (`ray_over_bare`: the search's path over the bare loop; `*_over_fp32`: over fp32 contiguous, same path):",
        "",
        shown.to_markdown(index=False, floatfmt=".2f"),
        "",
    ]
    for size in sorted(pick["image_size"]):
        row = pick[pick["image_size"] == size].iloc[0]
        lines.append(f"- {size} px: the chosen precision ({chosen.name}, {'channels_last' if chosen.channels_last else 'contiguous'}) is "
                     f"**{row['ray_over_fp32']:.2f}x fp32 in the Ray path** ({row['bare_over_fp32']:.2f}x in the bare loop).")
    worst = frame.loc[frame["ray_over_bare"].idxmin()]
    per_precision = frame.groupby("precision")["ray_over_bare"].min()
    lines.append(f"- Ray ÷ bare, lowest per precision: {', '.join(f'{p} {v:.2f}' for p, v in per_precision.items())} "
                 f"(lowest overall at {int(worst['image_size'])} px {worst['precision']} {worst['layout']}).")
    return lines
