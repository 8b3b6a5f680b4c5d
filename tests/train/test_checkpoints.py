"""Reading a checkpoint back: one cut short (a copy, or a kill while it was written) is one line naming its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxr_tune.errors import UserError
from cxr_tune.train.checkpoints import PREDICTIONS, STATE, load_predictions, load_state, save_state


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
