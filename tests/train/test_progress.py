"""The epoch lines of runs no search watches (``train``, ``train --cv``, the benchmarks that retrain): their time-left
estimate, on a clock the test sets (no Ray: :class:`EpochPrinter` is what the queue's thread calls)."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from cxr_tune.train import progress


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    """The monotonic clock the printer reads, in seconds; set ``clock[0]``."""
    now = [0.0]
    monkeypatch.setattr(progress, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def ends(printer: progress.EpochPrinter, stream: io.StringIO, clock: list[float], at: float, label: str, epoch: int, epochs: int) -> str:
    """The time left the line of ``label``'s ``epoch``, reported at ``at`` seconds, ends with ("" for none)."""
    clock[0] = at
    printer.line(label, epochs, {"epoch": epoch, "val_auc": 0.8, "val_sensitivity": 0.8, "val_specificity": 0.7, "epoch_seconds": 24.0})
    line = stream.getvalue().splitlines()[-1]
    return line.split("spec 0.700")[1].removeprefix(", ")


def test_the_time_left_counts_epochs_not_the_start_up_before_the_first(clock):
    """Before: time since the command's start divided by the epochs done, Ray's start-up counted as epoch time: 170 s of
    start-up and 25 s epochs gave "about 12 min left" at epoch 1 of 5, when under 2 min were left."""
    stream = io.StringIO()
    printer = progress.EpochPrinter(5, "carved", stream)
    assert ends(printer, stream, clock, 170, "run", 1, 5) == "about 2 min left"  # 4 epochs of its own 24 s
    assert ends(printer, stream, clock, 195, "run", 2, 5) == "about 2 min left"  # 3 of 25 s, from the first epoch's report on
    assert ends(printer, stream, clock, 220, "run", 3, 5) == "under a minute left"
    assert ends(printer, stream, clock, 270, "run", 5, 5) == ""


def test_runs_side_by_side_each_leave_out_their_own_start_up(clock):
    """Two folds trained at once, 30 s epochs after 170 s of start-up: once both reported their second epoch, one epoch of
    each is left, half a minute (before: about 2 min)."""
    stream = io.StringIO()
    printer = progress.EpochPrinter(2 * 3, "carved", stream)
    for at, label, epoch in [(170, "fold 2/2", 1), (171, "fold 1/2", 1), (200, "fold 2/2", 2)]:
        ends(printer, stream, clock, at, label, epoch, 3)
    assert ends(printer, stream, clock, 201, "fold 1/2", 2, 3) == "under a minute left"


def test_runs_one_after_another_leave_out_each_later_run_s_start_up(clock):
    """Two folds one after the other, 25 s epochs, 29 s of start-up before the second: 25 s an epoch once it has trained
    three (before: its start-up counted as epoch time, (374 - 170) / 6 = 34 s an epoch)."""
    stream = io.StringIO()
    printer = progress.EpochPrinter(2 * 5, "carved", stream)
    for at, epoch in [(170, 1), (195, 2), (220, 3), (245, 4), (270, 5)]:
        ends(printer, stream, clock, at, "fold 1/2", epoch, 5)
    for at, epoch in [(324, 1), (349, 2), (374, 3)]:
        ends(printer, stream, clock, at, "fold 2/2", epoch, 5)
    assert printer._seconds_per_epoch(374, {}) == pytest.approx(25.0)  # (100 s + 50 s) over 4 + 2 epochs
