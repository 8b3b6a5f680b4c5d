"""One command at a time in an experiment folder.

Two commands in one experiment (a ``--resume`` typed while the search still runs, say) both
restore Tune's state: they train the same trial twice, tell Optuna its end twice, and each
ends by rewriting the other's table, report and ``best/``. A command that writes an
experiment holds an advisory lock on a file in it (``fcntl.flock``) for as long as it runs;
the operating system lets go of it when the process ends, however it ends. Object storage has
no such lock: there, as before, the user keeps commands apart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

from cxr_tune import storage
from cxr_tune.errors import UserError

LOCK_FILE = ".cxr_tune.lock"

_held: dict[str, IO[str]] = {}


def hold(folder: str, what: str = "experiment") -> None:
    """Hold ``folder`` (an experiment, or ``what`` it is) for this command, or stop with one line when another command
    holds it. Within :func:`holding`, which lets go at its end; a folder already held by this command is held once."""
    owner = claim(folder)
    if owner is not None:
        raise UserError(f"another command{f' ({owner})' if owner else ''} is running in the {what} '{storage.resolve(folder)}'; wait for it to "
                        "end (two at once would train the same things and overwrite each other's results)")


def claim(folder: str) -> str | None:
    """:func:`hold` for a caller with its own words for a refusal: None once this command holds ``folder`` (or where
    nothing can be held: object storage, no folder yet, a read-only folder, a file system without locks); who holds it
    ("process 1234", or "" when it has not said yet) when another command does."""
    if storage.is_uri(folder):
        return None
    folder = storage.resolve(folder)
    if folder in _held or not os.path.isdir(folder):  # not an experiment yet: the command says so itself
        return None
    import fcntl

    try:
        handle = open(os.path.join(folder, LOCK_FILE), "a+", encoding="utf-8")  # noqa: SIM115 - held past this call
    except OSError:  # a read-only folder: no command can write it, so none needs keeping apart
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # held by another process
        handle.seek(0)
        owner = handle.read().strip()
        handle.close()
        return owner
    except OSError:  # a file system without locks (NFS without lockd): run unlocked, as on object storage
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    _held[folder] = handle
    return None


def held_elsewhere(folder: str) -> str | None:
    """Who holds ``folder`` now ("process 1234"), when another command does; None when none does."""
    import fcntl

    path = os.path.join(storage.resolve(folder), LOCK_FILE)
    if storage.is_uri(folder) or storage.resolve(folder) in _held or not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # (a file system without locks holds none)
                return handle.read().strip() or "another process"
    except OSError:
        return None
    return None


@contextmanager
def holding() -> Iterator[None]:
    """Let go, at the end of the block, of every folder :func:`hold` took in it (a test runs many commands in one process)."""
    before = set(_held)
    try:
        yield
    finally:
        for folder in set(_held) - before:
            _held.pop(folder).close()  # closing the file releases its lock
