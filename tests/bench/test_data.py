"""bench data: what it times and names, and that it leaves no scratch folder behind."""

from __future__ import annotations

import tempfile

import pytest

from cxr_tune.bench import data as bench_data
from cxr_tune.data.sources import build_manifest
from tests.conftest import kermany_folder

LAYOUT = {"train": {"NORMAL": ["a.jpeg", "b.jpeg"], "PNEUMONIA": ["c.jpeg"]},
          "val": {"NORMAL": ["d.jpeg"], "PNEUMONIA": ["e.jpeg"]},
          "test": {"NORMAL": ["f.jpeg"], "PNEUMONIA": ["g.jpeg"]}}


def test_only_the_training_split_is_timed_and_the_line_names_the_data(tmp_path):
    source = build_manifest(str(kermany_folder(tmp_path / "data", LAYOUT)), str(tmp_path / "cache"))
    train = bench_data.training_split(source)
    assert sorted(p.rsplit("/", 1)[1] for p in train["path"]) == ["a.jpeg", "b.jpeg", "c.jpeg"]  # never val/ (the external set) or test/
    line = bench_data.scope_line(source.description, len(train), 32, 2)
    assert line.startswith(f"Training split (train/) of the real data at {source.root}: 3 distinct images")
    assert "SYNTHETIC" in bench_data.scope_line("SYNTHETIC chest X-rays (generated, not real patients) at /x", 3, 32, 2)


def test_its_scratch_folder_is_removed_on_ctrl_c(tmp_path, monkeypatch):
    root = kermany_folder(tmp_path / "data", LAYOUT)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    seen = []

    def interrupted(paths, size):
        seen.extend(p.name for p in scratch.iterdir())  # the scan's cache is there by now
        raise KeyboardInterrupt

    monkeypatch.setattr(bench_data, "plain_loop", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_data.run(str(root), 32, out=str(tmp_path / "out"))
    assert seen and seen[0].startswith("cxr-bench-data-")
    assert list(scratch.iterdir()) == []
