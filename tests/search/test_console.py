"""The console of a search carries the product's own lines only; Ray's and Optuna's go to search.log."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow  # runs a search

LIBRARY_NOISE = (
    "(raylet)", "PreemptionWatcher", "PlacementGroupCleaner", "TrainController", "core_worker", "Configuration for experiment",
    "View detailed results", "ExperimentalWarning", "A new study created", "optuna_warn", "Traceback", "pid=",
)


@pytest.fixture(scope="module")
def piped(synthetic_root, tmp_path_factory):
    storage = tmp_path_factory.mktemp("console")
    done = run_cli("cxr_tune.search", "--space", "smoke", "--trials", "2", "--max-epochs", "2", "--data", str(synthetic_root),
                   "--storage", str(storage), "--name", "quiet", "--no-export", timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done, storage / "quiet"


def test_the_console_has_no_library_lines_and_no_escape_codes_when_piped(piped):
    done, _ = piped
    console = done.stdout + done.stderr
    assert not [line for line in console.splitlines() if any(noise in line for noise in LIBRARY_NOISE)], console
    assert "\x1b[" not in console and "\r" not in console
    assert "trial" in done.stdout and "Search finished" in done.stdout and "trials done" in done.stdout


def test_the_log_file_is_named_at_the_start_and_holds_the_library_output(piped):
    done, experiment = piped
    log = experiment / "search.log"
    lines = done.stdout.splitlines()
    named = next(i for i, line in enumerate(lines) if line.startswith(f"Ray and Optuna logs: {log}"))
    assert named < next(i for i, line in enumerate(lines) if " trial " in line)  # named before any trial runs
    text = log.read_text()
    assert "A new study created" in text  # Optuna's own line went to the file
