"""The built-in SYNTHETIC set: deterministic, Kermany-shaped, labelled SYNTHETIC everywhere."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from cxr_tune.data.sources import build_manifest
from cxr_tune.data.synthetic import synthesize
from cxr_tune.errors import UserError


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.jpeg")):
        digest.update(path.relative_to(root).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    a = synthesize(str(tmp_path / "a"), n=40, seed=1)
    b = synthesize(str(tmp_path / "b"), n=40, seed=1)
    c = synthesize(str(tmp_path / "c"), n=40, seed=2)
    assert _digest(Path(a)) == _digest(Path(b)) != _digest(Path(c))


def test_layout_prevalence_patients_and_label(synthetic_root):
    source = build_manifest(str(synthetic_root))
    manifest = source.manifest
    assert source.synthetic and "SYNTHETIC" in source.description
    assert set(manifest["split"]) == {"train", "test"}
    assert 0.64 <= manifest["label"].mean() <= 0.84  # ~74 % PNEUMONIA like the real set
    per_patient = manifest.groupby("patient_id").size()
    assert per_patient.max() > 1 and per_patient.mean() > 1.5  # several images per patient
    assert not manifest["patient_id"].str.startswith("image:").any()  # Kermany-style names parse


def test_refuses_to_overwrite_a_folder(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        synthesize(str(tmp_path / "out"), n=40)


def test_two_seeds_share_no_patient_so_one_can_be_the_others_site_sample(tmp_path):
    a = build_manifest(synthesize(str(tmp_path / "a"), n=80, seed=1)).manifest
    b = build_manifest(synthesize(str(tmp_path / "b"), n=80, seed=2)).manifest
    assert not set(a["patient_id"]) & set(b["patient_id"]) and not a["patient_id"].str.startswith("image:").any()


def test_the_smallest_sets_it_writes_can_be_split(tmp_path):
    # Before: --n 20 with seed 0 drew no test pneumonia, and the tool refused the set it had written.
    from cxr_tune.data.prepared import DataOptions, split_data

    for seed in range(4):
        root = synthesize(str(tmp_path / f"n20-{seed}"), n=20, seed=seed)
        split = split_data(DataOptions(data=root, cache_dir=str(tmp_path / "cache")), progress=False)
        assert {role: set(split.roles.loc[split.roles["role"] == role, "label"]) for role in ("train", "val", "test")} == \
            {"train": {0, 1}, "val": {0, 1}, "test": {0, 1}}, seed


def test_a_draw_another_process_committed_first_is_used_or_refused_in_one_line(tmp_path, monkeypatch):
    """Two commands on a new cache draw the same set at once: the one that renames second used to end
    in a traceback (rename onto a non-empty folder)."""
    from cxr_tune.data import synthetic

    draw = synthetic._write_all
    target = tmp_path / "cache" / "set"

    def racing(folder, *, n, seed):  # the other process commits the same set while this one draws
        draw(folder, n=n, seed=seed)
        monkeypatch.setattr(synthetic, "_write_all", draw)
        synthesize(str(target), n=n, seed=seed)
        monkeypatch.setattr(synthetic, "_write_all", racing)

    monkeypatch.setattr(synthetic, "_write_all", racing)
    assert synthesize(str(target), n=20, seed=0, replace_partial=True) == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["set"]  # nothing of this draw left behind
    target = tmp_path / "out" / "set"  # `data synthesize OUT` twice at once: the second says so
    with pytest.raises(UserError, match="written by another process while this one drew the set"):
        synthesize(str(target), n=20, seed=0)


def test_a_cache_that_cannot_be_written_and_holds_no_draw_is_one_line_naming_it_and_a_drawn_one_is_reused(tmp_path, monkeypatch):
    """The default job draws the SYNTHETIC set into the cache; a read-only cache without it gave a 40-line
    PermissionError traceback after "Drawing the built-in SYNTHETIC set", while real data got one line."""
    import os

    from cxr_tune import storage
    from tests.conftest import call_cli

    cache = tmp_path / "cache"
    cache.mkdir()
    args = ("cxr_tune.data", "inspect", "--synthetic-n", "20", "--cache-dir", str(cache))
    with monkeypatch.context() as read_only:
        read_only.setattr(storage.os, "access", lambda path, mode: False)  # a read-only mount (root passes any chmod)
        refused = call_cli(*args)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines() == [
        f"error: the SYNTHETIC set's folder '{cache}/synthetic/v3-n20-seed0' cannot be written: no permission to write in '{cache}', "
        f"and the image cache '{cache}' holds no draw of 20 images (seed 0) to reuse; pass --cache-dir with a folder that can be written"]
    assert os.listdir(cache) == []
    drawn = call_cli(*args)
    assert drawn.returncode == 0 and "Drawing the built-in SYNTHETIC set: 20 images" in drawn.stdout
    with monkeypatch.context() as read_only:
        read_only.setattr(storage.os, "access", lambda path, mode: False)
        reused = call_cli(*args)
    assert reused.returncode == 0, reused.stderr
    assert "Drawing" not in reused.stdout and "SYNTHETIC" in reused.stdout



def test_a_draw_for_object_storage_killed_midway_leaves_a_scratch_copy_the_next_draw_removes(tmp_path, s3_dir, monkeypatch):
    # Before: the set was drawn in a plain TemporaryDirectory before its upload, and a kill -9 meanwhile left
    # $TMPDIR/tmpXXXXXXXX/set with its images for good.
    import tempfile

    from cxr_tune.data.synthetic import ensure_synthetic

    ended = subprocess.Popen([sys.executable, "-S", "-c", ""])
    ended.wait()
    left = tmp_path / f"cxr_tune-synthetic-{ended.pid}-abcd1234" / "set"  # what a draw killed midway leaves
    left.mkdir(parents=True)
    (left / "IM-0001-0001.jpeg").write_bytes(b"jpeg")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ensure_synthetic(s3_dir, n=20)
    assert list(tmp_path.iterdir()) == []
