"""``python -m cxr_tune.train``: a run a person watches epoch by epoch, with Ray's own output kept out of the way, and
Ctrl-C that says how to go on."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # starts a Train run


def test_a_run_shows_its_epochs_keeps_rays_output_in_its_log_and_stops_on_ctrl_c_saying_how_to_resume(ray_session, synthetic_root, tmp_path):
    # It joins the session's Ray (--address), as on a cluster: Ctrl-C ends the command, not the Ray it ran on.
    command = [sys.executable, "-m", "cxr_tune.train", "--data", str(synthetic_root), "--storage", str(tmp_path), "--name", "run",
               "--address", ray_session.get_runtime_context().gcs_address,
               *[arg for setting in ("epochs=500", "image_size=32", "depth=2", "filters=4") for arg in ("--set", setting)]]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen = []
        for line in process.stdout:  # Ctrl-C once two epochs were shown
            seen.append(line)
            if " epoch 2/500: " in line:
                break
        process.send_signal(signal.SIGINT)
        output = "".join(seen) + process.communicate(timeout=120)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    lines = output.splitlines()
    log = tmp_path / "run" / "train.log"
    assert f"Ray logs: {log} (--verbose shows them here too)" in lines and log.is_file(), output[-3000:]
    epochs = [line for line in lines if re.match(r"\[\d\d:\d\d\] run epoch [12]/500: carved validation \(selection set\) AUC \d\.\d{4}, "
                                                 r"sens \d\.\d{3}, spec \d\.\d{3}, (about \d+ min|under a minute) left$", line)]
    assert len(epochs) == 2, output[-3000:]  # each epoch shown as it ended
    assert process.returncode == 130, output[-3000:]  # before: Ray Train's own handler, status 1 and no word
    assert f"Stopped; its checkpoints are in {tmp_path / 'run'}: the same command with --name run resumes the run from the last one" in lines
    assert "interrupted" in lines and "Traceback" not in output, output[-3000:]
    # The run's Train actors end with the command that owned them; the next module starts on free CPUs.
    deadline = time.monotonic() + 60
    while ray_session.available_resources().get("CPU", 0) < ray_session.cluster_resources()["CPU"] and time.monotonic() < deadline:
        time.sleep(0.5)
