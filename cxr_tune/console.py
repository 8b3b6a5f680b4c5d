"""What reaches the console: the product's own lines. Ray's and Optuna's go to a log file.

A search prints what a person watching wants (where things are, trials starting and ending, the
best so far, time left, the result). Ray's loggers and its workers' output (actor warnings, the
raylet's notices), Optuna's logger and library warnings are written to a log file instead, named at
the start; ``--verbose`` sends them to the console as well. Lines that every healthy run prints
(:data:`ROUTINE_WORKER_LINES`) go to neither.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from cxr_tune.errors import out_of_room

LIBRARY_LOGGERS = ("ray", "ray.data", "optuna", "py.warnings")  # ray.data keeps handlers of its own
#: Ray Data's level while a block is open, unless ``RAY_DATA_LOG_LEVEL`` says otherwise. Ray Data sets its logger to DEBUG
#: as it is imported (for its own ray-data.log) and reads that variable only then; Ray Tune imports it before a command
#: could set it (:mod:`cxr_tune.ray_session` sets it for the workers), so its DEBUG records and their DataContext and
#: operator-metrics dumps were most of the log file, burying its warnings
RAY_DATA_LEVEL = "WARNING"
_ACTIVE: list[tuple[TextIO, bool]] = []  # the files of the library_output_to blocks now open (innermost last), with their verbose


def active_log() -> tuple[TextIO | None, bool]:
    """The file of the innermost :func:`library_output_to` block now open (None outside one), and its ``verbose``:
    where :func:`cxr_tune.ray_session.ray_session` sends Ray's workers' output when not told otherwise."""
    return _ACTIVE[-1] if _ACTIVE else (None, False)


@contextmanager
def library_output_to(path: str | None, *, verbose: bool = False) -> Iterator[TextIO | None]:
    """Route library logging and warnings to the local file ``path`` for the ``with`` block.

    Yields the open file (Ray's worker output is routed there by
    :func:`cxr_tune.ray_session.ray_session`), or None when ``path`` is None. With ``verbose`` the
    file gets everything and the console keeps what it would show anyway.
    """
    if path is None:
        yield None
        return
    from pathlib import Path

    import ray.data  # noqa: F401 - Ray Data installs its console handler on import: let it, then replace it

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - closed below
    handler = _LogFileHandler(handle)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, list(logger.handlers), logger.propagate))
        kept = logger.handlers if verbose else [h for h in logger.handlers if not _to_console(h)]
        logger.handlers = [*kept, handler]
        logger.propagate = verbose and name != "ray.data"
    ray_data, ray_data_level = logging.getLogger("ray.data"), logging.getLogger("ray.data").level
    ray_data.setLevel(os.environ.get("RAY_DATA_LOG_LEVEL") or RAY_DATA_LEVEL)
    _quiet_optuna(verbose)
    logging.captureWarnings(True)
    _ACTIVE.append((handle, verbose))
    ended = True  # by an error, until the block returns
    try:
        yield handle
        ended = False
    finally:
        _ACTIVE.pop()
        logging.captureWarnings(False)
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
        ray_data.setLevel(ray_data_level)
        try:
            handle.close()
        except OSError:  # its last lines on a disk that filled: the error that ended the block says so, naming its file
            if not ended:
                raise


class _LogFileHandler(logging.StreamHandler):
    """The log file's handler: a record the file's disk has no room for is lost without a word, where logging printed a
    "--- Logging error ---" traceback on the console for each one (hundreds, before the command's own line)."""

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        if error is None or out_of_room(error) is None:
            super().handleError(record)


#: Lines of Ray's processes that every healthy search prints and that ask nothing of anyone, as (the process: an
#: actor's class or "raylet", words of the line) in Ray 2.60's wording; left out of the log file and the console
ROUTINE_WORKER_LINES = (
    # Train's placement-group cleaner at every trial end: Tune ends the trial's process, and with it Train's controller
    # (an actor it owns), before the controller frees its workers' reserved CPUs; freeing them is the cleaner's job
    # (a failure to is still shown).
    ("PlacementGroupCleaner", "Detected that the Ray Train controller actor ("),
    # The raylet, once a node has run 4x as many Python processes as it has CPUs. Under Tune every trial runs several
    # (its driver, Train's controller and placement-group cleaner, its workers) for one CPU: two trials on a 2-CPU
    # machine crossed it in every search. Avoiding it would take a whole CPU per trial's driver: half the trials at once.
    ("raylet", "PYTHON worker processes have been started on node"),
)


def routine_worker_line(data: dict, line: str) -> bool:
    """Whether ``line``, from the Ray process that ``data`` (Ray's record of a batch of its output) names, is one of
    :data:`ROUTINE_WORKER_LINES`."""
    source = data.get("actor_name") or data.get("pid")
    return any(source == who and words in line for who, words in ROUTINE_WORKER_LINES)


def route_worker_output(handle: TextIO, *, verbose: bool = False) -> Callable[[], None]:
    """Send what Ray prints on the driver's console for its processes (workers' stdout/stderr,
    the raylet's warnings) to ``handle`` instead (as well, with ``verbose``), less its
    :data:`ROUTINE_WORKER_LINES`. Returns a function that undoes it.

    Ray streams worker output through one dispatcher and prints the raylet's warnings from a
    listener thread; both end in ``ray._private.worker.print_to_stdstream``, which is swapped
    here (Ray 2.60's private API: tests/search/test_search_e2e.py checks the console stays quiet).
    """
    from functools import partial

    from ray._private import worker as ray_worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    original = ray_worker.print_to_stdstream

    def to_log(data: dict, ignore_prefix: bool) -> None:
        lines = [line for line in data.get("lines", []) if not routine_worker_line(data, line)]
        if not lines:
            return
        data = {**data, "lines": lines}
        ray_worker.print_worker_logs(data, handle, ignore_prefix)
        if verbose:
            original(data, ignore_prefix)

    ignore_prefix = ray_worker._should_ignore_worker_log_prefix(ray_worker.global_worker)
    ray_worker.print_to_stdstream = to_log
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", partial(to_log, ignore_prefix=ignore_prefix))

    def undo() -> None:
        ray_worker.print_to_stdstream = original

    return undo


@contextmanager
def unreported_trials_unwarned() -> Iterator[None]:
    """Leave out Tune's warning for trials without a ``result.json`` (Ray 2.60 logs "Failed to fetch
    metrics for N trial(s)" with a FileNotFoundError each when it reads an experiment). A search
    trial that a budget or Ctrl-C ended before its first report has none, and the trial table says
    so ("never trained"): the warning reached the console after a budget-stopped search's last
    lines. Final-fit runs and cross-validation folds have none at all (their rows come from their
    checkpoints and ``folds/fold<i>.json``): one warning per run in the log. Any other failure still shows."""

    def keep(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Failed to fetch metrics"):
            return True
        failures = [line for line in message.splitlines()[1:] if line.strip()]
        return not failures or not all("FileNotFoundError" in line for line in failures)

    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _to_console(handler: logging.Handler) -> bool:
    """A handler that writes to the console (not to a file of its own)."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler) \
        and getattr(handler, "stream", None) in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__, None) \
        or type(handler).__name__ == "PlainRayHandler"


def _quiet_optuna(verbose: bool) -> None:
    import optuna

    if verbose:
        optuna.logging.enable_default_handler()
    else:
        optuna.logging.disable_default_handler()  # its records still reach the log file's handler
