"""User-facing errors: one sentence naming the file and the fix, exit status 2.

Anything a user can cause (a bad path, a bad image folder, a bad search-space file, a bad flag)
raises :class:`UserError` at the edge, before Ray starts, so nobody reads a traceback from deep
inside a Ray worker to learn that a folder name was misspelt.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

EXIT_USAGE = 2


class UserError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a CLI ``main``; turn :class:`UserError` into ``error: ...`` and exit 2, Ctrl-C into 130.

    A crash in native code (Ray's core worker, torch) prints the Python stack of every thread before
    the process dies, so a segmentation fault says where it happened.
    """
    import faulthandler

    try:
        faulthandler.enable()
    except (OSError, ValueError):  # a stderr without a file descriptor (a test capturing it): nothing to write the stack to
        pass
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
