"""A search interrupted with Ctrl-C continues with --resume and ends with exactly the trials asked for."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd

from tests.conftest import ROOT


def start_search(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cxr_tune.search", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ))


def wait_for_line(process: subprocess.Popen, needle: str, timeout: float) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    for line in process.stdout:
        lines.append(line)
        if needle in line or time.monotonic() > deadline:
            break
    return lines


def test_interrupted_search_resumes_to_exactly_the_requested_trials(synthetic_root, tmp_path):
    common = ["--storage", str(tmp_path), "--name", "resumable"]
    search = start_search("--space", "smoke", "--data", str(synthetic_root), "--concurrency", "1", "--trials", "3", *common)
    seen = wait_for_line(search, "(1/3 done)", timeout=600)
    assert any("(1/3 done)" in line for line in seen), "".join(seen)
    search.send_signal(signal.SIGINT)  # Ctrl-C
    rest = search.communicate(timeout=300)[0]
    assert search.returncode == 130, rest[-2000:]
    assert "--resume" in rest
    before = pd.read_csv(tmp_path / "resumable" / "trials.csv")
    finished_before = before[before["status"] == "TERMINATED"]
    assert 1 <= len(finished_before) < 3

    resumed = subprocess.run([sys.executable, "-m", "cxr_tune.search", "--resume", *common], cwd=ROOT,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    after = pd.read_csv(tmp_path / "resumable" / "trials.csv")
    assert len(after) == 3 and after["trial_id"].is_unique and set(after["status"]) == {"TERMINATED"}
    kept = after.set_index("trial_id").loc[finished_before["trial_id"]]
    pd.testing.assert_series_equal(kept["objective"], finished_before.set_index("trial_id")["objective"], check_names=False)
    with sqlite3.connect(tmp_path / "resumable" / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 3
