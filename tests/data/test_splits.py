"""Validation carved from train by patient group: stratified, sized, and never leaking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_tune.data.sources import add_groups
from cxr_tune.data.splits import assign_roles, group_kfold, leakage
from cxr_tune.errors import UserError


def fake_manifest(n_patients: int = 300, seed: int = 0) -> pd.DataFrame:
    """Patients with 1-6 images, 74 % PNEUMONIA, a test folder and an official val folder."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        label = int(rng.random() < 0.74)
        split = rng.choice(["train", "test", "val"], p=[0.85, 0.13, 0.02])
        for k in range(int(rng.integers(1, 7))):
            rows.append({"path": f"/d/{split}/{p}_{k}.jpeg", "label": label, "patient_id": f"person{p}", "split": split,
                         "content_hash": f"h{p}_{k}", "width": 10, "height": 10, "mode": "L", "check": ""})
    return add_groups(pd.DataFrame(rows))


@pytest.mark.parametrize("seed", range(5))
def test_no_group_crosses_roles(seed):
    roles = assign_roles(fake_manifest(seed=seed), seed=seed)
    assert leakage(roles[roles["role"].isin(["train", "val", "test"])], "role").empty


@pytest.mark.parametrize("fraction", [0.1, 0.15, 0.3])
def test_validation_size_and_class_balance_follow_the_fraction(fraction):
    manifest = fake_manifest(n_patients=600)
    roles = assign_roles(manifest, val_fraction=fraction)
    train_folder = roles[roles["split"] == "train"]
    val = roles[roles["role"] == "val"]
    assert abs(len(val) / len(train_folder) - fraction) < 0.02
    assert abs(val["label"].mean() - train_folder["label"].mean()) < 0.03  # stratified


def test_official_val_is_set_aside_unless_asked():
    manifest = fake_manifest()
    default = assign_roles(manifest)
    assert set(default.loc[default["split"] == "val", "role"]) == {"unused"}
    asked = assign_roles(manifest, use_official_val=True)
    assert set(asked.loc[asked["split"] == "val", "role"]) == {"val"}


def test_split_seed_changes_the_split_and_is_repeatable():
    manifest = fake_manifest()
    a, b, c = (assign_roles(manifest, seed=s)["role"] for s in (1, 1, 2))
    assert a.equals(b) and not a.equals(c)


def test_leak_from_a_users_layout_is_reported_and_kept_out_of_training():
    manifest = fake_manifest()
    leaked = manifest[manifest["split"] == "test"].iloc[[0]].assign(split="train", path="/d/train/copy.jpeg")
    manifest = add_groups(pd.concat([manifest, leaked], ignore_index=True))
    crossing = leakage(manifest, "split")
    assert leaked["group_id"].iloc[0] in set(crossing["group_id"])
    roles = assign_roles(manifest)
    row = roles[roles["path"] == "/d/train/copy.jpeg"].iloc[0]
    assert row["role"] == "excluded" and "test" in row["role_note"]


def test_identical_file_under_both_classes_is_excluded():
    manifest = fake_manifest()
    first = manifest[manifest["split"] == "train"].iloc[0]
    twin = first.copy()
    twin["label"], twin["path"], twin["patient_id"] = 1 - first["label"], "/d/train/twin.jpeg", "person9999"
    manifest = add_groups(pd.concat([manifest, twin.to_frame().T], ignore_index=True).astype({"label": int}))
    roles = assign_roles(manifest)
    assert set(roles.loc[roles["content_hash"] == first["content_hash"], "role"]) == {"excluded"}


def test_bad_fraction_and_single_class_are_clear_errors():
    with pytest.raises(UserError, match="--val-fraction"):
        assign_roles(fake_manifest(), val_fraction=0.0)
    only_pneumonia = fake_manifest().assign(label=1)
    with pytest.raises(UserError, match="only PNEUMONIA"):
        assign_roles(only_pneumonia)


def test_group_kfold_keeps_patients_whole():
    train = fake_manifest()
    train = train[train["split"] == "train"].reset_index(drop=True)
    folds = group_kfold(train, k=5)
    assert len(folds) == 5
    seen = np.concatenate([val for _, val in folds])
    assert sorted(seen) == list(range(len(train)))
    for fit, val in folds:
        assert not set(train.loc[fit, "group_id"]) & set(train.loc[val, "group_id"])


@pytest.mark.parametrize("seed", range(4))
def test_big_patient_groups_do_not_make_validation_overshoot_its_fraction(seed):
    # Per class 240 training images: four patients with 50 images each and 40 with one. A 10 % share is
    # 24 images; a 50-image patient would overshoot it by more than half its size, so one-image patients fill it.
    rows = [{"path": f"/d/train/{label}_{p}_{k}.jpeg", "label": label, "patient_id": f"person{label}_{p}", "split": "train",
             "content_hash": f"h{label}_{p}_{k}", "width": 10, "height": 10, "mode": "L", "check": ""}
            for label in (0, 1) for p, size in enumerate([50] * 4 + [1] * 40) for k in range(size)]
    roles = assign_roles(add_groups(pd.DataFrame(rows)), val_fraction=0.1, seed=seed)
    assert (roles["role"] == "val").sum() == 48  # 24 per class
