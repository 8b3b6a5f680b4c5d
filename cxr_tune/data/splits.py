"""Leak-free splits: validation carved from train by patient group, stratified by class.

Every decision the project makes (model, threshold, hyperparameters) is taken on the ``val`` role,
which is carved out of the *training* folder. The test folder is only ever scored, and the official
16-image ``val`` folder is set aside (role ``unused``) unless asked for.

Roles: ``train``, ``val``, ``test``, ``unused`` (official val folder, not asked for) and
``excluded`` (an image that would leak: its group also sits in test, or the identical file is filed
under both classes). ``role_note`` says why a row was excluded.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from cxr_tune.errors import UserError

ROLES = ("train", "val", "test", "unused", "excluded")


def leakage(manifest: pd.DataFrame, column: str = "split") -> pd.DataFrame:
    """Groups (patients or identical files) that appear in more than one value of ``column``.

    Returns one row per crossing group: ``group_id``, the values it spans, and its image count.
    An empty frame means nothing leaks.
    """
    spans = manifest.groupby("group_id")[column].agg(lambda s: tuple(sorted(set(s))))
    crossing = spans[spans.map(len) > 1]
    counts = manifest.groupby("group_id").size()
    return pd.DataFrame({
        "group_id": crossing.index,
        column: crossing.to_numpy(),
        "images": counts.loc[crossing.index].to_numpy(),
    }).reset_index(drop=True)


def assign_roles(
    manifest: pd.DataFrame,
    *,
    val_fraction: float = 0.15,
    seed: int = 0,
    use_official_val: bool = False,
) -> pd.DataFrame:
    """A copy of ``manifest`` with ``role`` and ``role_note`` columns; no group spans two roles.

    ``val_fraction`` of the training folder's images (rounded to whole patient groups, stratified
    by class) become validation; with ``use_official_val`` the official ``val`` folder joins it.
    """
    if not 0.0 < val_fraction < 0.9:
        raise UserError(f"--val-fraction {val_fraction} must be between 0 and 0.9 (0.15 is usual)")
    frame = manifest.copy()
    frame["role"] = frame["split"].map({"train": "train", "test": "test", "val": "val" if use_official_val else "unused"})
    frame["role_note"] = ""

    conflicting = frame.groupby("content_hash")["label"].transform("nunique") > 1
    frame.loc[conflicting, ["role", "role_note"]] = ["excluded", "identical file filed under NORMAL and PNEUMONIA"]

    test_groups = set(frame.loc[frame["role"] == "test", "group_id"])
    leaks = frame["role"].isin(["train", "val", "unused"]) & frame["group_id"].isin(test_groups)
    frame.loc[leaks, ["role", "role_note"]] = ["excluded", "same patient or identical file is in the test folder"]

    forced = set(frame.loc[frame["role"] == "val", "group_id"])
    trainable = frame["role"] == "train"
    val_groups = _carve(frame.loc[trainable], val_fraction, seed, forced)
    frame.loc[trainable & frame["group_id"].isin(val_groups), "role"] = "val"

    for role in ("train", "val"):
        labels = set(frame.loc[frame["role"] == role, "label"])
        if labels != {0, 1}:
            raise UserError(
                f"the {role} split would hold only {'PNEUMONIA' if labels == {1} else 'NORMAL' if labels == {0} else 'no'} "
                f"images; add images of both classes or change --val-fraction ({val_fraction})"
            )
    return frame


def group_kfold(frame: pd.DataFrame, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, val) index pairs over ``frame`` rows, stratified by label, grouped by patient."""
    from sklearn.model_selection import StratifiedGroupKFold  # heavy import; only k-fold needs it

    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(len(frame)), frame["label"].to_numpy(), frame["group_id"].to_numpy()))


def _carve(frame: pd.DataFrame, fraction: float, seed: int, forced: set[str]) -> set[str]:
    """Whole groups for validation: per class stratum, shuffled, until ``fraction`` of its images."""
    groups = frame.groupby("group_id")["label"].agg(["size", "mean"])
    strata = (groups["mean"] >= 0.5).astype(int)
    rng = np.random.default_rng(seed)
    chosen = set(forced)
    for stratum in (0, 1):
        sizes = groups.loc[strata == stratum, "size"]
        target = fraction * sizes.sum()
        taken = sizes[sizes.index.isin(chosen)].sum()
        order = rng.permutation(sizes.index.to_numpy())
        for group in order:
            if taken >= target:
                break
            if group in chosen or taken + sizes[group] - target > sizes[group] / 2:
                continue  # would overshoot by more than half this group; a smaller one fits better
            chosen.add(group)
            taken += sizes[group]
        if taken == 0 and len(order) > 1:  # only big groups: take one rather than none
            chosen.add(order[0])
    return chosen
