"""Leak-free splits: validation carved from train by patient group, stratified by class, and an
external validation set when there is one.

Carved validation (role ``val``) comes out of the *training* folder, so it shares the training
population and saturates. An external set (role ``external``: a labelled sample from the site the
model will meet, ``--val-data``) is what selection trusts when it exists. The test folder is only
ever scored. The official 16-image ``val`` folder is too small to select on: it is set aside
(role ``unused``) unless asked for.

Roles: ``train``, ``val``, ``external``, ``test``, ``unused`` and ``excluded`` (an image that would
leak: its patient also sits in test or in the external set, or the identical file is filed under
both classes). ``role_note`` says why a row was excluded or set aside.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from cxr_tune.errors import UserError

MAX_NAMED = 3


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
    external_splits: tuple[str, ...] = (),
    unused_note: str = "",
) -> pd.DataFrame:
    """A copy of ``manifest`` with ``role`` and ``role_note`` columns; no group spans two roles.

    ``val_fraction`` of the training folder's images (rounded to whole patient groups, stratified
    by class) become validation; with ``use_official_val`` the official ``val`` folder joins it.
    Rows whose ``split`` is in ``external_splits`` become the external validation set: a file
    that is also in the training folder or the test folder is an error; the training folder's
    images of a patient in the external set are excluded, so the external set stays unseen.
    ``unused_note``: why the official ``val`` folder, when set aside, is (its rows' ``role_note``).
    """
    if not 0.0 < val_fraction < 0.9:
        raise UserError(f"--val-fraction {val_fraction} must be between 0 and 0.9 (0.15 is usual)")
    frame = manifest.copy()
    frame["role"] = frame["split"].map({"train": "train", "test": "test", "val": "val" if use_official_val else "unused"})
    frame.loc[frame["split"].isin(external_splits), "role"] = "external"
    frame["role"] = frame["role"].fillna("unused")
    frame["role_note"] = frame["role"].map({"unused": unused_note}).fillna("")
    if external_splits:
        external = frame[frame["role"] == "external"]
        refuse_shared_files(external, frame[frame["split"] == "train"], "training-folder")
        refuse_shared_files(external, frame[frame["split"] == "test"], "test")

    conflicting = filed_under_both(frame)
    frame.loc[conflicting, ["role", "role_note"]] = ["excluded", "identical file filed under NORMAL and PNEUMONIA"]

    for role, note in (("test", "same patient or identical file is in the test folder"),
                       ("external", "same patient is in the external validation set")):
        groups = set(frame.loc[frame["role"] == role, "group_id"])
        leaks = frame["role"].isin(["train", "val", "unused"]) & frame["group_id"].isin(groups)
        frame.loc[leaks, ["role", "role_note"]] = ["excluded", note]
    in_test = frame["role"].eq("external") & frame["group_id"].isin(set(frame.loc[frame["role"] == "test", "group_id"]))
    frame.loc[in_test, ["role", "role_note"]] = ["excluded", "same patient is in the test folder"]

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
    if external_splits and set(frame.loc[frame["role"] == "external", "label"]) != {0, 1}:
        raise UserError("the external validation set would hold only one class once patients shared with the test folder are left out")
    return frame


def refuse_shared_files(external: pd.DataFrame, other: pd.DataFrame, what: str) -> None:
    """An external image byte-identical to one of ``other``'s images is an error naming both files."""
    shared = external[["content_hash", "path"]].merge(other[["content_hash", "path"]], on="content_hash", suffixes=("", "_other"))
    _refuse(shared, lambda row: f"{row.path} = {row.path_other}", f"are byte-identical to {what} images",
            "the external set must be images the model never trains on or is tested on")


def refuse_shared_patients(external: pd.DataFrame, other: pd.DataFrame, what: str) -> None:
    """An external image of a patient group that also has an image in ``other`` is an error naming
    both files: the same patient-group rule as :func:`assign_roles` (same patient id, or joined by
    a byte-identical file), for a model already trained on ``other`` (``export --val-data``)."""
    from cxr_tune.data.sources import group_ids

    columns = ["path", "patient_id", "content_hash"]
    both = pd.concat([external[columns].assign(side="external"), other[columns].assign(side="other")], ignore_index=True)
    both["group"] = group_ids(both)
    mine, theirs = both[both["side"] == "external"], both[both["side"] == "other"]
    shared = mine.merge(theirs[["group", "path"]], on="group", suffixes=("", "_other")).drop_duplicates("path")
    _refuse(shared, lambda row: f"{row.path} ~ {row.path_other} (patient {row.group})", f"belong to patients with {what} images",
            "the external set must be patients the model never trained on or is tested on")


def _refuse(shared: pd.DataFrame, pair: Any, what: str, why: str) -> None:
    """One line naming the first few offending external images (``pair(row)`` each) and how many more."""
    if shared.empty:
        return
    pairs = "; ".join(pair(row) for row in shared.head(MAX_NAMED).itertuples())
    more = f" and {len(shared) - MAX_NAMED} more" if len(shared) > MAX_NAMED else ""
    raise UserError(f"{len(shared)} external validation image(s) {what} ({pairs}{more}); {why}")


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


def filed_under_both(frame: pd.DataFrame) -> pd.Series:
    """Per row (``content_hash``, ``label``), whether an identical file is filed under the other class too: its label is
    unknown, so it is excluded from every set (and from ``predict``'s metrics)."""
    return frame.groupby("content_hash")["label"].transform("nunique") > 1
