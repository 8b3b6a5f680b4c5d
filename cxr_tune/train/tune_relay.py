"""Carries a Train run's epoch reports to the Tune trial that runs it, reported from the trial's own thread.

Ray 2.60's ``TuneReportCallback`` hands each report to the trial actor's main thread, which reports it
into the trial's one-slot result queue, the queue that same thread empties. When Tune's driver was busy
long enough for the run's last report to wait and its ``fit()`` to return, the trial's end was queued first
and the main thread then waited on itself for good: a search hung with no error (seen in the suite's
final fit, 2026-12-07). Here the trial's thread reports every epoch itself, as a trainable reports, so the
trial's end always comes after its last epoch. Used by every Tune trial that runs a Train run: a search's trials,
its final-fit runs and cross-validation's folds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ray import tune
from ray.train import UserCallback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY  # where a report's checkpoint is, as Tune's own callback names it
from ray.util.queue import Empty, Queue

POLL_S = 0.5  # how long the trial's thread waits for a report before it looks whether the run ended


class ReportToTrial(UserCallback):
    """Runs in Train's controller: rank 0's metrics of each report (with its checkpoint's path) into the trial's queue.
    The queue holds one report, so the run goes on only once the trial has taken the last one, as with Tune's callback."""

    def __init__(self, queue: Queue) -> None:
        self._queue = queue

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        report = dict(metrics[0])
        if checkpoint:
            report[CHECKPOINT_PATH_KEY] = checkpoint.path
        self._queue.put(report)


def fit_reporting_to_tune(build: Callable[[list[Any]], Any]) -> Any:
    """Fit the trainer ``build(callbacks)`` makes, in a thread of its own, and report each of its epochs to Tune from
    this one (the trial's); once every report it made has reached Tune, return the fit's result or raise what it raised."""
    queue = Queue(1, actor_options={"num_cpus": 0})
    trainer = build([ReportToTrial(queue)])
    raised: list[BaseException] = []
    result: list[Any] = []

    def fit() -> None:
        try:
            result.append(trainer.fit())
        except BaseException as error:  # noqa: BLE001 - raised again in the trial's thread below
            raised.append(error)

    run = threading.Thread(target=fit, name="train-run", daemon=True)
    run.start()
    while True:
        running = run.is_alive()  # looked at first: a run that has ended put every report of it in the queue before
        try:
            report = queue.get(block=running, timeout=POLL_S if running else None)
        except Empty:
            if running:
                continue
            break
        tune.report(report)
    if raised:
        raise raised[0]
    return result[0]
