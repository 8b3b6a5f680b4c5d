"""User-facing errors: one sentence naming the file and the fix, exit status 2 (1 for a failure at run time).

Anything a user can cause (a bad path, a bad image folder, a bad search-space file, a bad flag)
raises :class:`UserError` at the edge, before Ray starts, so nobody reads a traceback from deep
inside a Ray worker to learn that a folder name was misspelt.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import NoReturn

EXIT_USAGE = 2
EXIT_FAILED = 1  # the work failed at run time (every trial failed, Ray did not start): not a bad flag or file
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports a process Ctrl-C ended
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # 141, as a shell reports a process whose reader went away
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a process SIGTERM ended

_terminated = False

#: What an ``OSError`` says when the machine ran out of something (room, a quota, a writable file system, file handles),
#: not that the code is wrong: one line, status 1. (EIO is not here: a failing disk or a damaged file, whose traceback helps.)
OUT_OF_ROOM = {errno.ENOSPC: "write", errno.EDQUOT: "write", errno.EROFS: "write", errno.EFBIG: "write",
               errno.EMFILE: "open", errno.ENFILE: "open"}


class UserError(Exception):
    """A problem with the user's input; printed as one line, exit status 2."""


class RunFailure(UserError):
    """Something other than the user's input stopped the command (Ray's own node did not start on a loaded machine):
    printed as one line like a :class:`UserError`, and caught wherever one is, but exit status 1, as a run that failed."""


def damaged(path: str, exc: BaseException, *, what: str = "") -> UserError:
    """The one line for a file a run wrote that cannot be read back (gone, cut short, not what it
    should hold): a copy that stopped halfway, or a process killed while writing it. ``what``: words
    before the path, for a file whose name does not say whose it is. An error that already says why
    in one line (an object store that refused the read) is kept as it is."""
    if isinstance(exc, UserError):
        return exc
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif isinstance(exc, KeyError):
        reason = f"no {text}"
    else:  # the first sentence: torch and Arrow go on with advice of their own, and Arrow names the file again
        reason = text.splitlines()[0].split(". ")[0].rsplit(f"{path}': ", 1)[-1] if text else type(exc).__name__
    named = f"{what} '{path}'" if what else f"'{path}'"
    return UserError(f"{named} could not be read ({reason}); it is damaged or half-written (a copy or a run cut short)")


def out_of_room(exc: BaseException) -> str | None:
    """The one line (without ``error: ``) for an error that says the machine ran out of disk, quota, file handles or memory,
    naming the path when the error has one: "cannot write '/x/y.csv': No space left on device", "not enough memory (...)";
    None for any other, whose traceback must stay visible. Looks through Ray's wrapping (a ``RayTaskError``'s ``cause``: a
    Ray Data task's error, as data prepare's cache build raises it) and through ``raise ... from``."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in OUT_OF_ROOM:  # pyarrow's strerror is a sentence of its own: the system's words
            path = f" '{exc.filename}'" if exc.filename else " its output" if OUT_OF_ROOM[exc.errno] == "write" else " a file"
            return f"cannot {OUT_OF_ROOM[exc.errno]}{path}: {os.strerror(exc.errno)}"
        if isinstance(exc, ImportError) and str(exc).endswith("failed to map segment from shared object"):  # the loader's mmap
            return f"not enough memory (loading {os.path.basename(str(exc).split(':')[0])})"
        if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and str(exc) == "can't start new thread"):
            said = str(exc).strip().splitlines()
            return f"not enough memory ({said[0] if said else type(exc).__name__})"
        cause = getattr(exc, "cause", None)  # Ray's RayTaskError(OSError) copies the cause's type, not its errno
        exc = cause if isinstance(cause, BaseException) else exc.__cause__  # another library's `cause` may be a string
    return None


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> NoReturn:
    """Run a CLI ``main``; turn :class:`UserError` into ``error: ...`` and exit 2 (1 for a :class:`RunFailure`, and for a machine
    out of disk, quota, file handles or memory: :func:`out_of_room`), Ctrl-C into 130, and
    a reader of its output that went away (``... | head``) into a quiet exit 141, as a Unix tool ends.
    SIGTERM (``kill``, a batch scheduler's stop, ``timeout``) stops a command as Ctrl-C does, saying what
    was kept and how to go on, and ends it with 143. Text the console's encoding cannot show is escaped,
    never a crash.

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
    if signal.getsignal(signal.SIGINT) is _stopped_at_start_up:  # from here Ctrl-C raises KeyboardInterrupt, handled below
        signal.signal(signal.SIGINT, signal.default_int_handler)
    restore = stop_on_sigterm_as_on_ctrl_c()
    hook_before, sys.unraisablehook = sys.unraisablehook, _stop_again_when_ignored(sys.unraisablehook)
    try:
        sys.exit(_ended(main, argv))
    finally:  # a caller that goes on (a test calling run_cli in its own process) gets its own handlers back
        restore()
        sys.unraisablehook = hook_before


def _ended(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None) -> int:
    """``main``'s exit status, with the ways a command can end that are not its own (see :func:`run_cli`)."""
    global _terminated
    _terminated = False
    try:
        try:
            code = main(argv)
        finally:  # also after --help's SystemExit: flushed here, a closed pipe raises below, not in Python's exit as "Exception ignored"
            sys.stdout.flush()
    except BrokenPipeError:
        _stdout_to_devnull()
        return EXIT_BROKEN_PIPE
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, RunFailure) else EXIT_USAGE
    except KeyboardInterrupt:
        print("terminated" if _terminated else "interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except Exception as exc:
        line = out_of_room(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_TERMINATED if code == EXIT_INTERRUPTED and _terminated else code or 0


def stop_on_sigterm_as_on_ctrl_c() -> Callable[[], None]:
    """Make SIGTERM raise SIGINT, so whoever handles Ctrl-C at that moment stops the work: Python's
    ``KeyboardInterrupt``, or Ray Tune's and Ray Train's graceful stop that keeps their checkpoints.
    :func:`cxr_tune.ray_session.ray_session` puts it back after ``ray.init()``, which installs Ray's own
    (a search then ended with status 1 after a native stack dump: no table, no report, no resume line), and after
    ``ray.shutdown()``, which sets it to the default (a search then died without a word). Only on the main thread,
    where handlers live. Returns what puts the handler before it back."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    before = signal.signal(signal.SIGTERM, _sigterm_to_sigint)
    return lambda: signal.signal(signal.SIGTERM, before)


class Stops:
    """What a :func:`ctrl_c_kept` block yields: ``arrived`` says, once the block has ended, whether a stop (Ctrl-C or
    SIGTERM) reached the process in it, whichever handler took it."""

    arrived: bool = False


@contextmanager
def ctrl_c_kept() -> Iterator[Stops]:
    """Put this command's Ctrl-C handler back after the block. Ray Tune's and Ray Train's ``fit()`` install their own
    and put the one before back only when a signal arrives: after a run that ended by itself, Ctrl-C still went to
    it, ignored during the export and report, or killing Ray's dashboard in the next stage's start-up (a traceback).

    The stops that arrive in the block are recorded (:class:`Stops`): Tune's handler takes a stop, ends its trials and
    returns normally, so a final-fit run that completed its last epoch as Tune shut down looked like a finished final fit,
    and the command exported and ended with status 0. Python writes each signal's number to a wakeup fd whichever
    Python handler takes it; this block holds one (passing what it read on to one held before it, if any)."""
    import socket
    import threading

    stops = Stops()
    if threading.current_thread() is not threading.main_thread():
        yield stops
        return
    before = signal.getsignal(signal.SIGINT)
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    wakeup_before = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        yield stops
    finally:
        signal.set_wakeup_fd(wakeup_before)
        received = b""
        while True:
            try:
                chunk = reader.recv(4096)
            except (BlockingIOError, InterruptedError):
                break
            if not chunk:
                break
            received += chunk
        reader.close()
        writer.close()
        stops.arrived = bool({signal.SIGINT, signal.SIGTERM} & set(received))
        if received and wakeup_before != -1:
            try:
                os.write(wakeup_before, received)
            except OSError:
                pass
        if before is not None:
            signal.signal(signal.SIGINT, before)


def stop_quietly_during_start_up() -> None:
    """Until :func:`run_cli` takes over, end the process on Ctrl-C or SIGTERM with one line and the status a shell
    reports: a command's module imports its libraries first (1-3 s), where a Ctrl-C printed a traceback through pandas'
    imports and SIGTERM ended it without a word. A signal already ignored (a script's ``command &`` ignores SIGINT) stays
    ignored. Nothing has been written then, so nothing is left to clean up."""
    for stop, untouched in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
        if signal.getsignal(stop) is untouched:
            signal.signal(stop, _stopped_at_start_up)


def _stopped_at_start_up(signum: int, frame: object) -> None:
    os.write(2, b"interrupted\n" if signum == signal.SIGINT else b"terminated\n")
    os._exit(128 + signum)


def _stop_again_when_ignored(hook: Callable[[object], None]) -> Callable[[object], None]:
    """A ``sys.unraisablehook`` that does not lose a stop. Python runs a signal's handler wherever the main thread is; inside
    a callback whose exceptions it ignores (a weakref callback, as a thread pool's clean-up runs one) the KeyboardInterrupt
    was printed as "Exception ignored" and the command ran to its end with status 0. Here the same signal is sent again a
    moment later, from another thread, so its handler runs once that callback has returned; other exceptions go to ``hook``."""
    import threading

    def hook_keeping_stops(unraisable: object) -> None:
        if not issubclass(getattr(unraisable, "exc_type", type(None)), KeyboardInterrupt):
            hook(unraisable)
            return
        # SIGINT where a handler takes it, else SIGTERM (whose handler raises KeyboardInterrupt itself then: see below)
        stop = signal.SIGINT if callable(signal.getsignal(signal.SIGINT)) else signal.SIGTERM
        again = threading.Timer(0.05, os.kill, (os.getpid(), stop))
        again.daemon = True
        again.start()

    return hook_keeping_stops


def _sigterm_to_sigint(signum: int, frame: object) -> None:
    global _terminated
    _terminated = True
    if not callable(signal.getsignal(signal.SIGINT)):  # a job a script started in the background ignores SIGINT: stop here
        raise KeyboardInterrupt
    signal.raise_signal(signal.SIGINT)


def _stdout_to_devnull() -> None:
    """Point the process's stdout at /dev/null, so that the flush at exit has nowhere to fail (the
    recipe of Python's ``signal`` documentation, "Note on SIGPIPE")."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (a test capturing it): nothing is flushed to a pipe
        pass
