"""Does training in bf16 cost anything measurable? The same configurations trained fp32 and bf16, several seeds each.

Each run is the project's own training step (:class:`cxr_tune.bench.bare.BareRun`: same model,
augmentation, loss, schedule; weights and scoring fp32) over the whole training role of the data
(the real data by default) for a fixed number of epochs, scored after its last epoch (no epoch is
picked, so no winner's curse) on the data's external set (on the real data, half A of the official
test split: a **selection set**, its numbers are optimistic) and on carved validation. bf16 is
adopted as ``auto``'s choice only where its mean external AUC and balanced accuracy are not below
fp32's seeds' spread.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import torch

from cxr_tune.bench.bare import BareRun
from cxr_tune.bench.common import PROJECT, data_named, other_data, real_data, results_folder, write_result
from cxr_tune.data.cache import load_images
from cxr_tune.data.prepared import DataOptions, split_data
from cxr_tune.errors import UserError
from cxr_tune.formatting import code_span
from cxr_tune.serving import META_FILE
from cxr_tune.train.hparams import HParams, read_params
from cxr_tune.train.metrics import evaluate_scores
from cxr_tune.train.precision import resolve

DEFAULT_PARAMS = PROJECT / "results" / "real" / "best" / META_FILE


def configurations(params: str | None, sizes: list[int]) -> list[HParams]:
    """The hyperparameters of ``params`` (a model.json or YAML of HParams fields; default: the
    committed real-data model's selected member), once per image size asked for."""
    base = read_params(params or str(DEFAULT_PARAMS), [], schedule=False)  # trained for --epochs, not the file's
    return [HParams.from_config({**base.to_dict(), "image_size": size}) for size in (sizes or [base.image_size])]


def trained(bases: list[HParams], epochs: int) -> list[dict]:
    """What the runs trained, for the record: each size's configuration with the epochs it ran (its own schedule is
    not what trained), without a seed (each row's seed is its run's)."""
    return [{k: v for k, v in {**base.to_dict(), "epochs": epochs}.items() if k != "seed"} for base in bases]


def configuration_line(params: str, configs: list[dict], seeds: int) -> str:
    """The configuration the summary's runs trained: where it came from and what differs from the defaults."""
    default = HParams().to_dict()
    shown = {k: v for k, v in configs[0].items() if k not in ("image_size", "epochs") and v != default[k]}
    sizes = " and ".join(str(c["image_size"]) for c in configs)
    return (f"Configuration: {code_span(params)} (what differs from the defaults: {code_span(json.dumps(shown))}), at {sizes} px, "
            f"{configs[0]['epochs']} epochs; seeds 0-{seeds - 1}.")


def run(data: str | None, params: str | None, sizes: list[int], seeds: int, epochs: int, precisions: list[str], out: str | None = None) -> None:
    folder = results_folder("precision", out, other_data(data))
    split = split_data(DataOptions(data=real_data(data)))
    if not split.has_external:
        raise UserError("the data has no external validation sample (val/ with >= 20 images per class); bench precision scores on it")
    rows = []
    bases = configurations(params, sizes)
    for base in bases:
        train, val, ext = (load_images(split.roles[split.roles["role"] == role], base.image_size, split.cache_dir, split.source.manifest)
                           for role in ("train", "val", "external"))
        pixels, labels = torch.from_numpy(train[0].copy()), torch.from_numpy(train[1]["label"].to_numpy().astype(np.float32))
        counts = split.class_counts("train")
        for seed in range(seeds):
            for name in precisions:
                hp = HParams.from_config({**base.to_dict(), "seed": seed, "epochs": epochs})
                precision = resolve(name, "cpu")
                started = time.perf_counter()
                bare = BareRun(hp, precision, torch.device("cpu"), pixels, labels, hp.pos_weight(*counts))
                rates = [bare.train_epoch() for _ in range(epochs)]
                seconds = time.perf_counter() - started
                row = {"image_size": hp.image_size, "seed": seed, "precision": precision.name, "train_seconds": seconds,
                       "img_per_s": float(np.mean(rates))}
                for prefix, (images, kept) in (("ext", ext), ("val", val)):
                    metrics = evaluate_scores(kept["label"].to_numpy(), bare.scores(images), hp.criterion, hp.min_sensitivity, hp.threshold_tolerance)
                    row.update({f"{prefix}_auc": metrics["auc"], f"{prefix}_balanced_accuracy": metrics["balanced_accuracy"]})
                rows.append(row)
                print(f"{hp.image_size} px seed {seed} {precision.name}: external AUC {row['ext_auc']:.4f}, BA {row['ext_balanced_accuracy']:.4f} "
                      f"({seconds:.0f} s)", flush=True)
    frame = pd.DataFrame(rows)
    configs = trained(bases, epochs)
    write_result("precision_quality", "Precision and model quality: fp32 vs bf16, several seeds",
                 [*summary(frame, epochs, data_named(split.source.description, split.external)), "", configuration_line(params or str(DEFAULT_PARAMS.relative_to(PROJECT)), configs, seeds)],
                 {"rows": rows, "epochs": epochs, "seeds": seeds, "hparams": configs}, folder)


def summary(frame: pd.DataFrame, epochs: int, data: str) -> list[str]:
    """``data``: :func:`cxr_tune.bench.common.data_named` of the data the runs trained and were scored on."""
    lines = [
        f"Data: {data}. Each run: the configuration below trained {epochs} epochs on the whole training role, scored after its last epoch. "
        "`ext_*`: the external set, **selection-set numbers** (balanced accuracy at the threshold chosen on "
        "the external set itself); `val_*`: carved validation.",
        "",
        frame.to_markdown(index=False, floatfmt=".4f"),
        "",
        "bf16 costs nothing measurable where its mean is not below fp32's lowest seed or is within one fp32 standard deviation of fp32's mean.",
        "",
        "| image size | metric | fp32 mean ± sd | bf16 mean ± sd | bf16 − fp32 | fp32 seeds' range | bf16 not measurably worse |",
        "|---:|---|---|---|---:|---|---|",
    ]
    for size, group in frame.groupby("image_size"):
        by = {name: g for name, g in group.groupby("precision")}
        if not {"fp32", "bf16"} <= set(by):
            continue
        for metric in ("ext_auc", "ext_balanced_accuracy", "val_auc"):
            fp32, bf16 = by["fp32"][metric], by["bf16"][metric]
            within = bf16.mean() >= fp32.min() or abs(bf16.mean() - fp32.mean()) <= fp32.std(ddof=1)
            lines.append(f"| {size} | {metric} | {fp32.mean():.4f} ± {fp32.std(ddof=1):.4f} | {bf16.mean():.4f} ± {bf16.std(ddof=1):.4f} | "
                         f"{bf16.mean() - fp32.mean():+.4f} | [{fp32.min():.4f}, {fp32.max():.4f}] | {'yes' if within else 'no'} |")
    speed = frame.groupby(["image_size", "precision"])["img_per_s"].mean().unstack()
    if {"fp32", "bf16"} <= set(speed.columns):
        lines += ["", "Training speed (mean images/s over the seeds, bare loop, "
                  "all CPU threads): " + "; ".join(f"{size} px bf16 {row['bf16']:.0f} vs fp32 {row['fp32']:.0f} ({row['bf16'] / row['fp32']:.2f}x)"
                                                   for size, row in speed.iterrows()) + "."]
    return lines
