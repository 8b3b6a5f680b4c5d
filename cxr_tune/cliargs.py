"""argparse helpers: ``type=`` for finite numbers in range and ``KEY=VALUE`` settings, or a one-line usage error;
:func:`help_text` for a module docstring shown by ``--help``, and :func:`with_exit_statuses` for the line that ends it.

Plain ``type=float`` accepts ``nan`` and ``inf``, and ``nan`` slips through every ``<= 0`` check;
these helpers refuse both while parsing, so a bad flag stops with argparse's usage line and exit
status 2 before anything starts::

    parser.add_argument("--cpus-per-worker", type=positive_float, default=None)
    parser.add_argument("--image-size", type=int_between(16, 1024), default=128)
"""

from __future__ import annotations

import argparse
import math
import re
import textwrap
from collections.abc import Callable
from typing import Any

__all__ = [
    "EXIT_STATUSES", "assignment", "assignments_text", "help_text", "with_exit_statuses", "float_between", "fraction", "int_between", "nonnegative_float", "nonnegative_int", "positive_float", "positive_int",
]


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def float_between(low: float | None, high: float | None, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A ``type=`` for finite floats in ``[low, high]`` (``None``: unbounded; ``*_open``: bound excluded)."""
    parts = [f"{'>' if low_open else '>='} {low:g}" if low is not None else "", f"{'<' if high_open else '<='} {high:g}" if high is not None else ""]
    wanted = " and ".join(p for p in parts if p)

    def parse(text: str) -> float:
        value = _finite(text)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} must be {wanted}")
        return value

    return parse


def int_between(low: int, high: int | None = None) -> Callable[[str], int]:
    """A ``type=`` for whole numbers in ``[low, high]`` (``high=None``: no upper bound)."""
    wanted = f"at least {low}" if high is None else f"between {low} and {high}"

    def parse(text: str) -> int:
        value = _whole(text)
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{text} must be {wanted}")
        return value

    return parse


#: ``> 0``, finite: CPUs, minutes.
positive_float = float_between(0.0, None, low_open=True)
#: ``>= 0``, finite: GPUs per worker.
nonnegative_float = float_between(0.0, None)
#: ``0 <= x <= 1``: a rate such as a sensitivity floor.
fraction = float_between(0.0, 1.0)
#: ``>= 1``: counts of trials, epochs, workers.
positive_int = int_between(1)
#: ``>= 0``: seeds, "0 means all".
nonnegative_int = int_between(0)


def assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` as ``(key, value)``, the value read as YAML (``3`` an int, ``0.2`` a float,
    ``balanced`` a string), as a params file would give it; what each key may hold, the reader checks.

    >>> assignment("mixup=0.2")
    ('mixup', 0.2)
    """
    import yaml

    from cxr_tune.yamlfile import AliasRefused, parse

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} must look like KEY=VALUE, e.g. epochs=3")
    try:
        return key.strip(), parse(value)
    except AliasRefused as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc} is not accepted (YAML aliases are refused); write the value out") from None
    except yaml.YAMLError:
        raise argparse.ArgumentTypeError(f"{text!r}: the value is not a number, word or list") from None


def assignments_text(values: dict[str, Any]) -> str:
    """``{"mixup": 0.2, "convs_per_block": 2}`` as ``mixup=0.2, convs_per_block=2``: settings as a person typed them."""
    return ", ".join(f"{key}={value}" for key, value in values.items())


#: The last paragraph of every command's ``--help``: what a script or scheduler reads from the status (:mod:`cxr_tune.errors`).
EXIT_STATUSES = ("Exit status: 0 done, 1 the run failed, 2 bad input (a flag, file or folder), 130 Ctrl-C (SIGINT), 141 the reader of "
                 "its output went away, 143 SIGTERM; README.md, \"Exit status\", says more.")


def with_exit_statuses(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``parser`` (and each of its subcommands') with :data:`EXIT_STATUSES` ending its ``--help``, one text for every command,
    wrapped here for an 80-column terminal (argparse's 78): a ``RawDescriptionHelpFormatter`` prints an epilog as given,
    which was one line of 200 characters; the other formatters wrap it again at the terminal's width."""
    epilog = textwrap.fill(EXIT_STATUSES, width=78)
    parser.epilog = epilog
    for action in parser._actions:  # noqa: SLF001 - argparse keeps subcommands' parsers only there
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for sub in action.choices.values():
                sub.epilog = epilog
    return parser


def help_text(doc: str | None) -> str:
    """A module docstring as ``--help`` shows it: reStructuredText's markup left out (````x````,
    ``**x**`` and ``:mod:`x``` read as ``x``; a ``::`` that opens an example as ``:``), and a
    cross-reference in parentheses, which points a developer at the code, left out of the user's help.

    >>> help_text("Reads ``model.json`` (:mod:`cxr_tune.serving`), **never** a pickle::")
    'Reads model.json, never a pickle:'
    >>> help_text("paired (:func:`cxr_tune.x.y`, within each class); other (a, b: :mod:`cxr_tune.z`) or :mod:`cxr_tune.w`")
    'paired (within each class); other (a, b) or cxr_tune.w'
    """
    ref = r":(?:mod|func|class|data|attr|meth):`~?([^`]+)`"
    text = re.sub(rf"\s*\({ref}\)", "", doc or "")
    text = re.sub(rf"\({ref}[,;]\s*", "(", text)
    text = re.sub(rf"[,;:]\s*{ref}\)", ")", text)
    text = re.sub(ref, r"\1", text)
    text = re.sub(r"\*\*([^*]+)\*\*", r"\1", re.sub(r"``([^`]+)``", r"\1", text))
    return text.replace("::\n", ":\n").replace("::", ":")
