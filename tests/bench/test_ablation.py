"""bench ablation: one-change retrains of an experiment's selected configuration."""

from __future__ import annotations

import pytest

from tests.conftest import call_cli
from tests.exports import write_export


@pytest.mark.parametrize(("change", "problem"), [
    ("nosuch=1", "--vary: unknown hyperparameter 'nosuch'"),
    ("lr=abc", "--vary: lr='abc' has the wrong type"),
    ("dropout=2", "--vary: dropout=2.0 is out of range"),
])
def test_a_change_no_configuration_takes_is_refused_before_anything_trains(tmp_path, change, problem):
    """Before: the baseline retrained first (minutes on real data), then an HParamsError traceback."""
    experiment = tmp_path / "exp"
    write_export(experiment / "best", hparams={"lr": 0.001, "epochs": 9})
    (experiment / "experiment.json").write_text("{}")  # no trials: anything past the check would fail otherwise
    done = call_cli("cxr_tune.bench", "ablation", str(experiment), "--vary", change)
    assert done.returncode == 2 and problem in done.stderr and "Traceback" not in done.stderr, done.stderr
