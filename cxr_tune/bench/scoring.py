"""Each epoch's scoring of the validation sets: batch size, and read from Ray Data every epoch or kept.

A run scores carved validation and the external set after every epoch (:mod:`cxr_tune.train.loop`).
The same Ray Train run on the real data (real.yaml's fixed hyperparameters, the given image size)
is trained four ways: scoring in batches of 256 or of the CPU's :data:`~cxr_tune.train.steps.SCORE_BATCH`,
each with the sets read from Ray Data every epoch (the loop before :mod:`cxr_tune.train.scoring_sets`)
or kept in the worker after the first pass; in the order A B C D D C B A so that a machine that slows
or speeds up during the run weighs on all alike. Training images are a fixed sample (training speed
is not what is measured); scoring covers the full sets. The first epoch of every run (which reads
the sets either way) is left out of the medians. CPU runs repeat exactly, so all four must give the
same AUCs (to 6 decimals: another batch size may round a score's last bits differently).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace

import numpy as np
import pandas as pd

from cxr_tune.bench.common import data_named, other_data, real_data, results_folder, sample_training, write_result
from cxr_tune.data.prepared import DataOptions, datasets_by_size, split_data
from cxr_tune.search.space import load_space
from cxr_tune.train.checkpoints import load_state
from cxr_tune.train.hparams import HParams
from cxr_tune.train.steps import SCORE_BATCH
from cxr_tune.train.trainer import Resources, fit, make_trainer

BEFORE_BATCH = 256  # the loop's scoring batch before this benchmark


def ways() -> dict[str, dict]:
    """Name → the loop options of each way (``scoring_keep_limit_bytes`` 0 reads Ray Data every epoch)."""
    small = SCORE_BATCH["cpu"]
    return {f"batch {BEFORE_BATCH}, streamed": {"score_batch": BEFORE_BATCH, "scoring_keep_limit_bytes": 0},
            f"batch {BEFORE_BATCH}, kept": {"score_batch": BEFORE_BATCH},
            f"batch {small}, streamed": {"score_batch": small, "scoring_keep_limit_bytes": 0},
            f"batch {small}, kept": {"score_batch": small}}


def run(data: str | None, size: int, epochs: int, images: int, out: str | None = None) -> None:
    folder = results_folder("scoring", out, other_data(data))
    from cxr_tune.ray_session import ray_session

    split = split_data(DataOptions(data=real_data(data)))
    split = replace(split, roles=sample_training(split.roles, images))
    hp = HParams.from_config({**load_space("real").fixed, "image_size": size, "epochs": epochs})
    rows = []
    with ray_session(), tempfile.TemporaryDirectory() as scratch:
        cpus = 1.0  # as each trial of a search on a 2-core machine runs
        datasets = datasets_by_size(split, [size])[size]
        options = ways()
        for index, way in enumerate([*options, *reversed(options)]):
            trainer = make_trainer(hp, datasets, split.class_counts(), resources=Resources(1, cpus), storage_path=scratch, name=f"scoring-{index}",
                                   deciding=split.deciding_set("external"), loop_options=options[way])
            with fit(trainer).checkpoint.as_directory() as folder:
                history = load_state(folder)["history"]
            later = history[1:]
            rows.append({"run": index + 1, "way": way, "score_s": float(np.median([h["score_seconds"] for h in later])),
                         "epoch_s": float(np.median([h["epoch_seconds"] for h in later])),
                         "aucs": [round(h[f"{prefix}_auc"], 6) for h in history for prefix in ("val", "ext") if f"{prefix}_auc" in h],
                         "scored": int(history[0]["val_n"] + history[0].get("ext_n", 0))})
            print(f"run {index + 1} ({way}): scoring {rows[-1]['score_s']:.3f} s, epoch {rows[-1]['epoch_s']:.2f} s (medians of epochs 2-{epochs})", flush=True)
    frame = pd.DataFrame(rows)
    write_result("scoring", "Scoring the validation sets each epoch: batch size, and read from Ray Data every epoch or kept",
                 summary(frame, hp, min(images, len(train)), epochs, cpus, data_named(split.source.description, split.external)), {"rows": rows, "hparams": hp.to_dict(), "cpus": cpus}, folder)


def summary(frame: pd.DataFrame, hp: HParams, images: int, epochs: int, cpus: float, data: str) -> list[str]:
    """``data``: :func:`cxr_tune.bench.common.data_named`'s line, so a run on other data never reads as the committed one."""
    names = list(ways())
    by_way = frame.groupby("way")[["score_s", "epoch_s"]].median().loc[names]
    before, now = by_way.iloc[0], by_way.iloc[-1]
    same = all(aucs == frame["aucs"].iloc[0] for aucs in frame["aucs"])
    by_way = by_way.assign(score_over_before=by_way["score_s"] / before["score_s"], epoch_over_before=by_way["epoch_s"] / before["epoch_s"])
    return [
        f"Data: {data}. Ray Train run, 1 worker with {cpus:g} CPU (as a search's trial here), {hp.image_size} px, real.yaml's fixed hyperparameters, {images} training images, "
        f"{epochs} epochs; {int(frame['scored'].iloc[0])} images scored every epoch (carved validation and the external set). "
        "Seconds are medians over epochs 2 on (the first reads the sets either way); runs in the order they ran.",
        "",
        frame[["run", "way", "score_s", "epoch_s"]].to_markdown(index=False, floatfmt=".3f"),
        "",
        "Medians of each way's two runs, and their ratio to the loop before (the first way):",
        "",
        by_way.reset_index().to_markdown(index=False, floatfmt=".3f"),
        "",
        f"- The loop now ({names[-1]}) ÷ before ({names[0]}): scoring **{now['score_s'] / before['score_s']:.2f}**, "
        f"epoch **{now['epoch_s'] / before['epoch_s']:.2f}** ({before['epoch_s'] - now['epoch_s']:.3f} s saved per epoch).",
        f"- The same AUCs on both sets at every epoch in all {len(frame)} runs: {'yes' if same else 'NO'}.",
    ]
