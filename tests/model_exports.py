"""Real export folders of a hand-set network whose score follows image brightness, on Kermany-named
images where PNEUMONIA films are brighter (overlapping): scores that rank well and are badly
calibrated, with no training. For the calibration, operating-point, subgroup and model-card tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxr_tune.export import Scored, write_export
from cxr_tune.modelfile import Members
from cxr_tune.train.hparams import HParams
from cxr_tune.train.model import build_model

SIZE = 16
INFO = {"data_description": "real data at /data/chest_xray", "synthetic": False, "data_root": "/data/chest_xray", "class_counts_train": [100, 300],
        "command": "python -m cxr_tune.search --space smoke --data ../data/chest_xray", "command_cwd": "/home/reader/runs 2024.06",
        "space_path": "/spaces/smoke.yaml",
        "options": {"trials": 4, "sampler": "tpe", "early_stopping": True, "max_epochs": 3, "select": "balanced_accuracy", "min_sensitivity": 0.0,
                    "data": {"val_fraction": 0.15, "split_seed": 0}}}


def brightness_members(gain: float = 60.0) -> Members:
    """One CNN whose logit is ``gain * (mean brightness in [0, 1] - 0.5)``: a 3x3 mean filter, a
    BatchNorm that undoes the ``none`` intensity map's shift (so the ReLU keeps every pixel), and
    the head's weight and bias. With PNEUMONIA films 0.12 brighter (sd 0.06), a gain of about 33
    would be calibrated; 60 is overconfident."""
    hp = HParams(image_size=SIZE, depth=1, filters=1, intensity="none", dropout=0.0)
    net = build_model(hp)
    with torch.no_grad():
        conv, norm, head = net.features[0], net.features[1], net.head[-1]
        conv.weight.fill_(1 / 9)
        norm.weight.fill_(1.0)
        norm.bias.fill_(2.0)  # (x - 0.5) / 0.25 + 2 = 4x
        norm.running_mean.fill_(0.0)
        norm.running_var.fill_(1.0 - norm.eps)
        head.weight.fill_(gain / 4)
        head.bias.fill_(-gain / 2)
    return Members([net.eval()], [hp])


def kermany_set(n: int, seed: int, *, pneumonia_share: float = 0.6, kermany_names: bool = True) -> Scored:
    """``n`` images, PNEUMONIA ones brighter on average, named as Kermany names them (bacterial and
    viral pneumonia, IM- and NORMAL2-IM- normals) unless ``kermany_names`` is False."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < pneumonia_share).astype(int)
    brightness = np.where(labels == 1, rng.normal(0.56, 0.06, n), rng.normal(0.44, 0.06, n))
    images = np.clip(brightness[:, None, None] * 255 + rng.normal(0, 8, (n, SIZE, SIZE)), 0, 255).astype(np.uint8)
    names = []
    for i, label in enumerate(labels):
        if not kermany_names:
            names.append(f"{'PNEUMONIA' if label else 'NORMAL'}/scan{seed}_{i:04d}.png")
        elif label:
            names.append(f"PNEUMONIA/person{seed}{i:03d}_{'virus' if i % 3 == 0 else 'bacteria'}_{i}.jpeg")
        else:
            names.append(f"NORMAL/{'NORMAL2-' if i % 4 == 0 else ''}IM-{seed}{i:03d}-0001.jpeg")
    rows = pd.DataFrame({"content_hash": [f"h{seed}-{i}" for i in range(n)], "path": names, "label": labels})
    return Scored(rows, images)


def export_folder(folder: Path, *, calibrate: str = "none", external: bool = True, kermany_names: bool = True, epochs_on: str | None = None,
                  gain: float = 60.0, **info: Any) -> dict[str, Any]:
    """A carved validation set, an external set (the deciding one, unless ``external`` is False) and
    a test set, exported by :func:`cxr_tune.export.write_export`; returns ``model.json``'s content.
    ``epochs_on``: the set that chose the epochs, when not the deciding one (``val``: a carved search exported with --val-data).
    ``gain``: :func:`brightness_members`' (0: a network that scores every image 0.5, as one whose learning rate blew it up)."""
    sets = {"val": kermany_set(120, 1, kermany_names=kermany_names), "test": kermany_set(150, 3, kermany_names=kermany_names)}
    if external:
        sets["ext"] = kermany_set(160, 2, pneumonia_share=0.5, kermany_names=kermany_names)
    return write_export(brightness_members(gain), str(folder), ["trial_a"], [{"epoch": 2}], sets, "ext" if external else "val", {},
                        {**INFO, **info}, "/data/site" if external else None, calibrate=calibrate, epochs_on=epochs_on)


def save_images(scored: Scored, root: Path) -> Path:
    """The set's images as PNG files under ``root`` at their (Kermany-layout) paths, for predict."""
    for path, pixels in zip(scored.rows["path"], scored.images, strict=True):
        target = root / Path(path).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(target)
    return root
