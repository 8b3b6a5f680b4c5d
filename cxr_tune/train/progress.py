"""Epoch lines for training that no search watches: ``train`` (one run, or cross-validation's folds) and the
benchmarks that retrain runs one after another (``bench epochs``, ``bench value``, ``bench ablation``).

A 32-epoch run on the real data takes minutes on a CPU, and without these lines it prints nothing until
it ends. Ray Train calls its callbacks on its controller, an actor, whose prints would reach the console
behind Ray's process prefix (or a log file); so the callback hands each epoch's metrics to the driver
through a Ray queue, and a thread here prints them::

    with epoch_lines(total_epochs=6 * 32, deciding="external") as callbacks_for:
        make_trainer(..., callbacks=callbacks_for("[1/6] 5a4e909c-seed100000", 32)).fit()
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ray.train import UserCallback

from cxr_tune.formatting import clock, time_left
from cxr_tune.selection import selection_label

POLL_SECONDS = 0.5


class EpochsToQueue(UserCallback):
    """Runs on Ray Train's controller: puts ``(label, epochs, metrics)`` on the driver's queue after each reported epoch."""

    def __init__(self, queue: Any, label: str, epochs: int) -> None:
        self.queue, self.label, self.epochs = queue, label, epochs

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        if not metrics:
            return
        try:  # worker 0's metrics: every worker reports the same epoch's validation
            self.queue.put((self.label, self.epochs, metrics[0]))
        except Exception:  # noqa: BLE001 - a driver gone (Ctrl-C) loses a console line; it must not fail the run
            pass


@contextmanager
def epoch_lines(total_epochs: int | None, deciding: str, *, stream: TextIO | None = None) -> Iterator[Callable[[str, int], list[UserCallback]]]:
    """Print one line per trained epoch of the runs started in the block. Yields ``callbacks_for(label, epochs)``:
    the callbacks to hand one run's trainer (its name on the console, its schedule's length). ``total_epochs``:
    all those runs' epochs together, for a time-left estimate (None: not known ahead); ``deciding``: the set
    whose metrics the lines show (``external`` or ``carved``)."""
    from ray.util.queue import Empty, Queue

    queue = Queue(actor_options={"num_cpus": 0})
    printer = EpochPrinter(total_epochs, deciding, stream or sys.stdout)
    stop = threading.Event()

    def drain() -> None:
        while True:
            try:
                printer.line(*queue.get(timeout=POLL_SECONDS))
            except Empty:
                if stop.is_set():
                    return
            except Exception:  # noqa: BLE001 - Ray going down under it (Ctrl-C): no more lines, nothing else to do
                return

    thread = threading.Thread(target=drain, name="epoch-lines", daemon=True)
    thread.start()
    try:
        yield lambda label, epochs: [EpochsToQueue(queue, label, epochs)]
    finally:
        stop.set()
        thread.join()
        queue.shutdown()


class EpochPrinter:
    """``[mm:ss] LABEL epoch 3/32: external validation (selection set) AUC 0.9621, sens 0.943, spec 0.906, about 12 min left``:
    the set that picks the run's best epoch (and, in a search, its trials), so its numbers are selection-set numbers."""

    def __init__(self, total_epochs: int | None, deciding: str, stream: TextIO) -> None:
        self.total, self.stream = total_epochs, stream
        self.prefix, self.deciding = ("ext", "external") if deciding == "external" else ("val", "carved")
        self.done: dict[str, int] = {}  # the last epoch of each run (a worker restarted from a checkpoint reports some again)
        self.before: dict[str, int] = {}  # each run's epochs trained before this command (a resumed run starts past 1)
        self.first: dict[str, float] = {}  # when each run reported its first epoch here
        self.last: dict[str, float] = {}  # and its latest
        self.started = time.monotonic()

    def line(self, label: str, epochs: int, metrics: dict[str, Any]) -> None:
        now = time.monotonic()
        epoch = int(metrics.get("epoch", 0))
        self.before.setdefault(label, epoch - 1)
        self.first.setdefault(label, now)
        self.last[label] = now
        self.done[label] = max(epoch, self.done.get(label, 0))
        done = sum(self.done.values())
        left = ""
        if self.total and done < self.total and (seconds := self._seconds_per_epoch(now, metrics)):
            left = ", " + time_left(seconds * (self.total - done) / 60)
        value = lambda key, digits: f"{metrics.get(f'{self.prefix}_{key}', math.nan):.{digits}f}"  # noqa: E731
        print(f"{clock(now - self.started)} {label} epoch {epoch}/{epochs}: {selection_label(f'{self.deciding} validation')} "
              f"AUC {value('auc', 4)}, sens {value('sensitivity', 3)}, spec {value('specificity', 3)}{left}", file=self.stream, flush=True)

    def _seconds_per_epoch(self, now: float, metrics: dict[str, Any]) -> float | None:
        """Seconds per epoch of the runs together: the time while some run was between its first epoch's report and its
        latest (the union of those spans) over the epochs each run reported after its first. The time before a run's first
        epoch is Ray's start-up and the run's own, which the epochs left do not repeat (timed from the command's start, 170 s
        of it made epoch 1 of 5 read "about 12 min left" with 25 s epochs); runs one after another (folds, a benchmark's
        retrains) leave each later run's start-up out too. Before any run's second epoch, the last epoch's own
        ``epoch_seconds``, shared by the runs that reported one (side by side)."""
        after_first = sum(self.done.values()) - sum(self.before.values()) - len(self.first)
        if after_first > 0:
            return _covered([(self.first[label], self.last[label]) for label in self.first]) / after_first
        seconds = metrics.get("epoch_seconds")
        return seconds / len(self.first) if seconds else None


def _covered(spans: list[tuple[float, float]]) -> float:
    """Seconds that at least one of the ``(start, end)`` spans covers (overlaps counted once)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total
