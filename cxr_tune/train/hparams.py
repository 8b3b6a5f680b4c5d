"""Every hyperparameter of one trial, in one typed place with defaults and checked ranges.

The model, augmentation, loss and optimizer are built from :class:`HParams`; nothing reads the Tune
``config`` dict anywhere else. Search spaces may give per-block widths as ``filters_0 ...
filters_{depth-1}`` (conditional on the sampled depth); :meth:`HParams.from_config` folds them
into ``block_filters`` and refuses one past the depth.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from cxr_tune.data.input_checks import MAX_SIZE, MIN_SIZE
from cxr_tune.errors import UserError
from cxr_tune.formatting import SHOWN_CHARS, printable, shown
from cxr_tune.selection import CRITERIA as SELECTION_CRITERIA
from cxr_tune.yamlfile import load_mapping

ARCHITECTURES = ("cnn", "resnet18", "densenet121")
#: what --precision and --memory-format accept (cxr_tune.train.precision resolves "auto"); here, not there, so a parser needs no torch
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "channels_last", "contiguous")
BLOCKS = ("plain", "residual")
CLASS_WEIGHTINGS = ("none", "balanced")
OPTIMIZERS = ("adamw", "sgd")
INTENSITY = ("none", "zscore", "equalize")
CRITERIA = tuple(SELECTION_CRITERIA)

#: The fewest images a last, partial training batch may hold. BatchNorm in train mode normalizes each channel over the
#: batch: one image gives a single value per channel where a map is 1x1 (torchvision's networks below 64 px), and torch
#: refuses it. The training step skips a last batch of fewer (:func:`cxr_tune.train.steps.train_one_epoch`); a
#: batch_size of 1 is refused for training only where it cannot work (:func:`cxr_tune.train.model.training_problem`).
MIN_BATCH = 2

# Inclusive ranges for numeric fields: a value outside is a configuration mistake.
MAX_WIDTH = 2048  # filters in any one block (a 3x3 convolution 2048 -> 2048 wide holds 38 M weights)
_RANGES: dict[str, tuple[float, float]] = {
    "depth": (1, 10),
    "filters": (1, 1024),
    "width_growth": (1.0, 4.0),
    "kernel_size": (1, 11),
    "convs_per_block": (1, 4),
    "dropout": (0.0, 0.95),
    "augment_strength": (0.0, 1.0),
    "aug_rotation": (0.0, 30.0),
    "aug_shift": (0.0, 0.25),
    "aug_scale": (0.0, 0.5),
    "aug_blur": (0.0, 3.0),
    "aug_brightness": (0.0, 0.5),
    "aug_contrast": (0.0, 0.8),
    "aug_gamma": (0.0, 1.0),
    "aug_noise": (0.0, 0.2),
    "lr": (1e-7, 10.0),
    "weight_decay": (0.0, 1.0),
    "batch_size": (1, 4096),  # a model saved with 1 still loads: see MIN_BATCH
    "epochs": (1, 1000),
    "warmup_epochs": (0, 100),
    "image_size": (MIN_SIZE, MAX_SIZE),
    "momentum": (0.0, 0.999),
    "label_smoothing": (0.0, 0.5),
    "mixup": (0.0, 10.0),
    "min_sensitivity": (0.0, 1.0),
    "threshold_tolerance": (0.0, 0.2),
    "seed": (0, 2**31 - 1),
    "se_ratio": (0.0, 1.0),
    "ema_decay": (0.0, 0.9999),
}


def value_range(name: str) -> tuple[float, float]:
    """The inclusive range of the numeric hyperparameter ``name``, for a flag or setting that becomes it
    (``search --max-epochs`` becomes every trial's ``epochs``) to be checked before anything starts.

    >>> value_range("epochs")
    (1, 1000)
    """
    return _RANGES[name]


_BLOCK_KEY = re.compile(r"^filters_(\d{1,9})$")  # a longer index is an unknown key, not a crash in int() (4300 digits at most)


class HParamsError(ValueError):
    """A config that cannot be a trial: unknown key, wrong type, value out of range. ``keys`` are the config keys it is
    about, so that :func:`read_params` blames the source that gave them (the params file or ``--set``)."""

    def __init__(self, message: str, *keys: str) -> None:
        super().__init__(message)
        self.keys = keys


@dataclass(frozen=True)
class HParams:
    """One trial's hyperparameters. Defaults are a sound small CNN for 128 px X-rays."""

    # Model (see train/model.py): ``arch`` "cnn" is this project's own CNN of ``depth`` conv
    # blocks, block i ``filters * width_growth**i`` wide unless ``block_filters`` gives every width;
    # each block "plain" (conv, BN, ReLU) or "residual" (with a skip connection), with
    # squeeze-and-excitation when ``se_ratio`` > 0 (its bottleneck is that share of the channels).
    # "resnet18" and "densenet121" are torchvision's networks with a grayscale stem, from scratch
    # (or from a local pretrained file: --weights), and ignore the CNN's shape fields.
    arch: str = "cnn"
    block: str = "plain"
    se_ratio: float = 0.0
    depth: int = 4
    filters: int = 32
    width_growth: float = 2.0
    block_filters: tuple[int, ...] = ()
    kernel_size: int = 3
    convs_per_block: int = 1
    dropout: float = 0.3
    # Input: side of the square image and per-image intensity normalization.
    image_size: int = 128
    intensity: str = "zscore"
    # Augmentation (see train/augment.py): ``augment_strength`` from 0 (identity) to 1 scales every
    # family's maximum below; flipping moves the heart, so off by default.
    augment_strength: float = 0.5
    hflip: bool = False
    aug_rotation: float = 10.0  # degrees
    aug_shift: float = 0.08  # share of the image side
    aug_scale: float = 0.12  # zoom within 1 ± this (zooming in is a random crop)
    aug_blur: float = 0.0  # Gaussian blur sigma in pixels of the network's input
    aug_brightness: float = 0.15
    aug_contrast: float = 0.3
    aug_gamma: float = 0.35  # log-gamma
    aug_noise: float = 0.03  # noise standard deviation (images in [0, 1])
    # Loss: class weighting through pos_weight ("none", "balanced" or an explicit weight).
    class_weighting: str | float = "balanced"
    label_smoothing: float = 0.0
    mixup: float = 0.0
    # Optimization.
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    batch_size: int = 32
    epochs: int = 10
    # Exponential moving average of the weights and BatchNorm statistics per step (0: off); when
    # on, evaluation, checkpoints and export use the average.
    ema_decay: float = 0.0
    warmup_epochs: int = 1
    seed: int = 0
    # Decision threshold: chosen on validation to maximize this balance of sensitivity and
    # specificity, subject to sensitivity >= min_sensitivity where any threshold reaches it.
    criterion: str = "balanced_accuracy"
    min_sensitivity: float = 0.0
    # Thresholds within this much of the best criterion value count as best; the middle of that
    # range (in logit space) is used, for a margin on both sides.
    threshold_tolerance: float = 0.005

    def __post_init__(self) -> None:
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise HParamsError(f"{name}={shown(value)} is out of range [{low}, {high}]", name)
        for name, allowed in (("optimizer", OPTIMIZERS), ("intensity", INTENSITY), ("criterion", CRITERIA), ("arch", ARCHITECTURES), ("block", BLOCKS)):
            if getattr(self, name) not in allowed:
                raise HParamsError(f"{name}={shown(getattr(self, name))} is not one of {', '.join(allowed)}", name)
        weighting = self.class_weighting
        if isinstance(weighting, str) and weighting not in CLASS_WEIGHTINGS:
            raise HParamsError(f"class_weighting={shown(weighting)} is not 'none', 'balanced' or a positive number", "class_weighting")
        if not isinstance(weighting, str) and not (weighting > 0 and math.isfinite(weighting)):
            raise HParamsError(f"class_weighting={shown(weighting)} must be a positive number", "class_weighting")
        if self.block_filters and len(self.block_filters) != self.depth:
            raise HParamsError(f"block_filters has {len(self.block_filters)} widths but depth={self.depth}", "block_filters", "depth")
        if any(w < 1 for w in self.block_filters):
            raise HParamsError(f"block_filters={list(self.block_filters)} must all be >= 1", "block_filters")
        if max(self.widths) > MAX_WIDTH:  # a network no machine here could allocate fails inside Ray, not here
            how = f"block_filters={list(self.block_filters)}" if self.block_filters else (
                f"filters={self.filters} x width_growth={self.width_growth:g} over depth={self.depth}")
            keys = ("block_filters",) if self.block_filters else ("filters", "width_growth", "depth")
            raise HParamsError(f"{how} makes a block {max(self.widths)} filters wide; keep every block <= {MAX_WIDTH}", *keys)
        if self.kernel_size % 2 == 0:
            raise HParamsError(f"kernel_size={self.kernel_size} must be odd so the map keeps its size", "kernel_size")

    @property
    def widths(self) -> tuple[int, ...]:
        """Output channels of each conv block."""
        if self.block_filters:
            return tuple(self.block_filters)
        return tuple(max(1, round(self.filters * self.width_growth**i)) for i in range(self.depth))

    def pos_weight(self, n_negative: int, n_positive: int) -> float:
        """The BCE ``pos_weight`` for the PNEUMONIA class."""
        if self.class_weighting == "none":
            return 1.0
        if self.class_weighting == "balanced":
            return n_negative / max(n_positive, 1)
        return float(self.class_weighting)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able values (what checkpoints and ``model.json`` store)."""
        out = asdict(self)
        out["block_filters"] = list(self.block_filters)
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> HParams:
        """Build from a Tune ``config`` (or a params file), checking every key and value.

        >>> HParams.from_config({"depth": 2, "filters_0": 8, "filters_1": 16}).widths
        (8, 16)
        """
        known = {f.name: f for f in fields(cls)}
        config = dict(config)
        if isinstance(config.get("noise"), bool):  # written by versions before aug_noise: on/off only
            noise = config.pop("noise")
            config.setdefault("aug_noise", cls.aug_noise if noise else 0.0)
        values: dict[str, Any] = {}
        blocks: dict[int, int] = {}
        for key, value in config.items():
            match = _BLOCK_KEY.match(key)
            if match:
                blocks[int(match.group(1))] = _coerce(key, "int", value)
            elif key in known:
                values[key] = _coerce(key, known[key].type, value)
            else:
                raise HParamsError(f"unknown hyperparameter {shown(key)}; known: {', '.join(sorted(known))}, filters_<i>", key)
        if blocks:
            depth = values.get("depth", cls.depth)
            beyond = [i for i in sorted(blocks) if i >= depth]
            if beyond:  # a search draws filters_0..filters_{depth-1} only: one past them is a mistake, not a width
                taken = "filters_0" if depth == 1 else f"filters_0..filters_{depth - 1}"
                raise HParamsError(f"filters_{beyond[0]} is beyond depth={depth} ({taken})", f"filters_{beyond[0]}", "depth")
            missing = [i for i in range(depth) if i not in blocks]
            if missing:
                raise HParamsError(f"filters_{missing[0]} is missing for depth={depth}", "depth", *(f"filters_{i}" for i in blocks))
            values["block_filters"] = tuple(blocks[i] for i in range(depth))
        return cls(**values)


def read_params(path: str | None, overrides: list[tuple[str, Any]], *, schedule: bool = True) -> HParams:
    """HParams from a YAML file (flat, or under a top-level ``hparams`` key, as in an export's
    ``model.json``) plus ``--set`` overrides; one reader for every command that takes ``--params``.

    A warm-up the file or ``--set`` gave that is not shorter than ``epochs`` is refused: the schedule cuts it to the run,
    which then warms up throughout and never decays (but an export's warm-up of 1 with ``--set epochs=1``, the quick check
    the default warm-up also makes, stays) (:func:`cxr_tune.train.steps.build_scheduler`). Not in
    :class:`HParams`, whose search trials may pair a space's warm-up with a short ``--max-epochs``; ``schedule=False``
    for a caller that trains its own number of epochs."""
    whole: dict[str, Any] = {}
    if path:
        whole = load_mapping(path, "params")
    values = whole["hparams"] if isinstance(whole.get("hparams"), dict) else whole
    given = dict(overrides)
    try:
        hp = HParams.from_config({**values, **given})
        if schedule and ("warmup_epochs" in values or "warmup_epochs" in given) and hp.warmup_epochs >= max(hp.epochs, 2):
            raise HParamsError(f"warmup_epochs={hp.warmup_epochs} is not below epochs={hp.epochs}: the whole run would be warm-up "
                               "and the learning rate would never decay", "warmup_epochs", "epochs")
    except HParamsError as exc:
        raise UserError(f"{_source(path, exc.keys, values, given)}: {exc}") from None
    if path and values is not whole:  # an export's model.json
        _note_first_member(path, whole)
    return hp


def _note_first_member(path: str, export: Mapping[str, Any]) -> None:
    """One line on stderr when the export ``model.json`` at ``path`` averages members of several configurations (seeds
    aside): its top-level ``hparams``, which are read, are only the first member's, and nothing else said so."""
    members = export.get("members")
    if not isinstance(members, list):
        return
    configurations = {json.dumps({k: v for k, v in m["hparams"].items() if k != "seed"}, sort_keys=True, default=str)
                      for m in members if isinstance(m, dict) and isinstance(m.get("hparams"), dict)}
    if len(configurations) < 2:
        return
    first = export.get("trial_id")
    final_fit = export.get("final_fit")
    runs = final_fit.get("runs") if isinstance(final_fit, dict) and isinstance(final_fit.get("runs"), list) else []
    # a final fit's member is a run of a trial ("5a4e909c-seed100000"): name the trial, as the search did
    trial = next((run.get("trial_id") for run in runs if isinstance(run, dict) and run.get("name") == first), first)
    which = f" (trial {printable(str(trial), SHOWN_CHARS)})" if trial is not None else ""
    print(f"Note: {path} averages {len(members)} runs of {len(configurations)} configurations; training the first member's{which}",
          file=sys.stderr, flush=True)


def _source(path: str | None, keys: tuple[str, ...], in_file: Mapping[str, Any], in_set: Mapping[str, Any]) -> str:
    """Which of the params file ``path`` and ``--set`` gave the keys an error is about (both: "FILE with --set"), for
    the start of its line: a bad --set value was blamed on the file beside it. The file, where neither gave them.
    ``filters_<i>`` keys give ``block_filters``."""
    def gave(source: Mapping[str, Any]) -> set[Any]:
        return {*source, *(["block_filters"] if any(isinstance(k, str) and _BLOCK_KEY.match(k) for k in source) else [])}

    from_set = gave(in_set)
    from_file = gave(in_file) - from_set  # --set replaced these
    by_set, by_file = any(key in from_set for key in keys), bool(path) and any(key in from_file for key in keys)
    if by_set and by_file:
        return f"{path} with --set"
    return "--set" if by_set or not path else path


def check_type(name: str, value: Any) -> None:
    """:class:`HParamsError` if ``value`` has the wrong type for the field ``name``; its range is checked
    with a whole config. For a caller that must order values before it builds one (a search space's corners).

    >>> check_type("depth", "3")
    Traceback (most recent call last):
    ...
    cxr_tune.train.hparams.HParamsError: depth='3' has the wrong type (expected int)
    """
    _coerce(name, next(f.type for f in fields(HParams) if f.name == name), value)


def _coerce(name: str, kind: str, value: Any) -> Any:
    """Accept what YAML and Optuna produce (ints for floats, numpy scalars) but not nonsense.

    ``kind`` is the field's annotation as a string (this module uses postponed annotations).
    """
    if hasattr(value, "item"):  # numpy scalar
        value = value.item()
    ok = True
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) or isinstance(value, float) and value.is_integer()
        value = int(value) if ok else value
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "str | float":
        ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        value = value if isinstance(value, str) or not ok else float(value)
    elif kind.startswith("tuple"):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        value = tuple(value) if ok else value
    if not ok:
        raise HParamsError(f"{printable(name, SHOWN_CHARS)}={shown(value)} has the wrong type (expected {kind})", name)
    return value
