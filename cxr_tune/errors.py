"""User-facing errors: one sentence naming the file and the fix, exit status 2.

Anything a user can cause (a bad path, a bad image folder, a bad search-space file, a bad flag)
raises :class:`UserError` at the edge, before Ray starts, so nobody reads a traceback from deep
inside a Ray worker to learn that a folder name was misspelt.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a process Ctrl-C ended
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141, as a shell reports a process whose reader went away


class UserError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a CLI ``main``; turn :class:`UserError` into ``error: ...`` and exit 2, Ctrl-C into 130, and
    a reader of its output that went away (``... | head``) into a quiet exit 141, as a Unix tool ends.
    Text the console's encoding cannot show is escaped, never a crash.

    A crash in native code (Ray's core worker, torch) prints the Python stack of every thread before
    the process dies, so a segmentation fault says where it happened.
    """
    import faulthandler

    try:
        faulthandler.enable()
    except (OSError, ValueError):  # a stderr without a file descriptor (a test capturing it): nothing to write the stack to
        pass
    for stream in (sys.stdout, sys.stderr):  # a console that cannot show a file's name (PYTHONIOENCODING=ascii) shows it escaped
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        try:
            code = main(argv)
        finally:  # also after --help's SystemExit: flushed here, a closed pipe raises below, not in Python's exit as "Exception ignored"
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        sys.exit(EXIT_BROKEN_PIPE)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code or 0)


def _stdout_to_devnull() -> None:
    """Point the process's stdout at /dev/null, so that the flush at exit has nowhere to fail (the
    recipe of Python's ``signal`` documentation, "Note on SIGPIPE")."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (a test capturing it): nothing is flushed to a pipe
        pass
