"""Reading a checkpoint back: one cut short (a copy, or a kill while it was written) is one line naming its file. A checkpoint
staged by a worker killed before Ray Train took it is removed by the next worker on the machine."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cxr_tune.errors import UserError
from cxr_tune.train.checkpoints import PREDICTIONS, STATE, load_predictions, load_state, save_state, staging_folder
from tests.conftest import ROOT


def checkpoint(folder: Path) -> Path:
    folder.mkdir(parents=True)
    scored = {"val": (np.array([0, 1]), np.array([0.2, 0.9]), np.array(["h0", "h1"]))}
    save_state(str(folder), {"epoch": 0, "history": [{"epoch": 1, "objective": 0.5}]}, scored)
    return folder


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_checkpoint_reads_back(tmp_path):
    folder = checkpoint(tmp_path / "checkpoint_a")
    assert load_state(str(folder))["epoch"] == 0
    assert load_predictions(str(folder))["score"].tolist() == [0.2, 0.9]


@pytest.mark.parametrize(("name", "read"), [(STATE, load_state), (PREDICTIONS["val"], load_predictions)])
def test_a_file_cut_short_is_one_line_naming_it(tmp_path, name, read):
    folder = checkpoint(tmp_path / "checkpoint_a")
    cut_short(folder / name)
    with pytest.raises(UserError, match="damaged or half-written") as caught:
        read(str(folder))
    assert str(caught.value).startswith(f"'{folder / name}' could not be read (") and "\n" not in str(caught.value)
    # the reason in short: not the file's name again (Arrow), nor torch's paragraph of advice
    assert str(caught.value).count(name) == 1 and len(str(caught.value)) < len(str(folder)) + 200


@pytest.mark.parametrize("content", ["garbage", "pickle", "weights", "list"])
def test_a_state_file_that_is_not_a_checkpoint_is_one_line_naming_it(tmp_path, content):
    """Bytes no torch wrote, a plain pickle, or a torch file holding something else (a network's weights, no epoch): one
    line, as for a file cut short, not pickle's UnpicklingError, a bare KeyError or a caller's KeyError 'epoch'."""
    import pickle

    import torch

    folder = checkpoint(tmp_path / "checkpoint_a")
    path = folder / STATE
    if content == "garbage":
        path.write_bytes(b"hello, this is no checkpoint\n" * 8)
    elif content == "pickle":
        path.write_bytes(pickle.dumps({"epoch": 0}))
    else:
        torch.save({"conv.weight": torch.zeros(2)} if content == "weights" else [1, 2], path)
    with pytest.raises(UserError, match="damaged or half-written") as caught:
        load_state(str(folder))
    assert str(caught.value).startswith(f"'{path}' could not be read (") and "\n" not in str(caught.value)
    assert len(str(caught.value)) < len(str(path)) + 200


def test_an_error_reading_the_state_file_is_not_called_a_file_torch_did_not_save(tmp_path, monkeypatch):
    """Before: a ValueError from the read itself (pyarrow's ArrowInvalid, from the store, not the bytes) was said to be
    "not a file torch saved ... damaged or half-written": only what torch.load and the content checks raise is that."""
    import pyarrow as pa

    from cxr_tune.train import checkpoints

    folder = checkpoint(tmp_path / "checkpoint_a")

    def store_refuses(path: str) -> bytes:
        raise pa.ArrowInvalid("Cannot parse URI")

    monkeypatch.setattr(checkpoints.storage, "read_bytes", store_refuses)
    with pytest.raises(pa.ArrowInvalid, match="Cannot parse URI"):
        load_state(str(folder))


def test_a_checkpoint_staged_by_a_killed_worker_is_removed_by_the_next_one_and_a_living_worker_s_is_kept(tmp_path, monkeypatch):
    # Before: the loop staged each epoch in a plain TemporaryDirectory; Ray Train's report blocks, a stopped run's worker is
    # killed inside it, and the tmpXXXXXXXX folder with the full weights and optimizer state stayed in $TMPDIR for good.
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal\nfrom cxr_tune.train.checkpoints import staging_folder\n"
         "with staging_folder() as folder:\n    open(os.path.join(folder, 'state.pt'), 'wb').write(b'weights')\n"
         "    print(folder, flush=True)\n    os.kill(os.getpid(), signal.SIGKILL)"],
        cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)}, capture_output=True, text=True)
    left = Path(killed.stdout.strip())
    assert left.parent == tmp_path and (left / "state.pt").is_file(), killed.stderr  # what the kill leaves behind
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    not_ours = tmp_path / "tmpabcd1234"  # another program's, whatever became of it
    not_ours.mkdir()
    with staging_folder() as living, staging_folder():  # the next epoch's
        assert not left.exists()
        assert Path(living).is_dir() and not_ours.is_dir()
