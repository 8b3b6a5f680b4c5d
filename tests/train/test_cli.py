"""``python -m cxr_tune.train``: a run a person watches, epoch by epoch, with Ray's own output kept out of the way."""

from __future__ import annotations

import re

import pytest

from tests.conftest import call_cli

pytestmark = pytest.mark.slow  # starts Ray and trains


def test_a_run_shows_each_epoch_as_it_ends_and_keeps_rays_output_in_its_log(ray_session, synthetic_root, tmp_path):
    done = call_cli("cxr_tune.train", "--data", str(synthetic_root), "--storage", str(tmp_path), "--name", "run",
                    *[arg for setting in ("epochs=2", "image_size=32", "depth=2", "filters=4") for arg in ("--set", setting)])
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    log = tmp_path / "run" / "train.log"
    assert f"Ray logs: {log} (--verbose shows them here too)" in lines and log.is_file()
    epochs = [i for i, line in enumerate(lines) if re.match(r"\[\d\d:\d\d\] run epoch [12]/2: (carved|external) validation \(selection set\) AUC \d\.\d{4}, ", line)]
    report = next(i for i, line in enumerate(lines) if line.startswith("Best epoch"))
    assert len(epochs) == 2 and epochs[-1] < report, done.stdout  # each epoch shown as it ended, before the run's report
