"""Numbers for people: metrics as text, ``n/a`` where undefined (and ``null`` in JSON); a console line's clock and time left;
file names as the console, a spreadsheet and Markdown can show them safely. Used by export, predict, report, train, search and bench alike."""

from __future__ import annotations

import math
import re
import shlex
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

METRIC_NAMES = (("AUC", "auc"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("balanced accuracy", "balanced_accuracy"))


def fmt(value: Any, digits: int = 4) -> str:
    """A metric for people: ``n/a`` where it is undefined (AUC of one class, an empty set).

    >>> fmt(0.91234), fmt(float("nan")), fmt(None)
    ('0.9123', 'n/a', 'n/a')
    """
    if value is None or (isinstance(value, (float, np.floating)) and not np.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def interval(ci: Any, digits: int = 3) -> str:
    """`` [low, high]`` for a 95 % interval, or nothing when there is none."""
    if not isinstance(ci, (list, tuple)) or len(ci) != 2 or any(v is None for v in ci):
        return ""
    return f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def interval_in(ci: Any, key: str, digits: int = 3) -> str:
    """:func:`interval` of ``key`` in a ``ci95`` dict; `` [n/a]`` where it holds None (an interval withheld:
    :func:`cxr_tune.selection.bootstrap_interval`), nothing where it holds no such key."""
    ci = ci or {}
    return " [n/a]" if key in ci and ci[key] is None else interval(ci.get(key), digits)


def metric_line(metrics: dict[str, Any], ci: dict[str, Any] | None = None) -> str:
    """``AUC 0.9700 [0.95, 0.98], sensitivity ...`` from a metrics dict (and its intervals, if any)."""
    ci = ci or {}
    return ", ".join(f"{name} {fmt(metrics.get(key))}{interval_in(ci, key)}" for name, key in METRIC_NAMES)


def against(probability: float, threshold: float, digits: int = 3) -> tuple[str, str]:
    """A probability and the threshold it is called against, as text with as many decimals as it takes
    (at least ``digits``) for them to read as different when they are: 0.64966 against 0.64977 read
    "0.650" and "0.650", a NORMAL call that looked like P >= threshold.

    >>> against(0.64966, 0.64977), against(0.91, 0.5), against(0.5, 0.5)
    (('0.6497', '0.6498'), ('0.910', '0.500'), ('0.500', '0.500'))
    """
    while digits < 17 and probability != threshold and f"{probability:.{digits}f}" == f"{threshold:.{digits}f}":
        digits += 1
    return f"{probability:.{digits}f}", f"{threshold:.{digits}f}"


def clock(seconds: float) -> str:
    """``[02:13]``: minutes and seconds since a command began, at the start of its progress lines."""
    minutes, rest = divmod(int(seconds), 60)
    return f"[{minutes:02d}:{rest:02d}]"


def time_left(minutes: float) -> str:
    """``about 12 min left`` (rounded up), or ``under a minute left``: an estimate, said as one."""
    return f"about {math.ceil(minutes)} min left" if minutes >= 1 else "under a minute left"


def json_safe(value: Any) -> Any:
    """``value`` with NaN as None (JSON has no NaN: "n/a" where a metric is undefined) and numpy scalars as Python's."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def code_span(text: Any, *, in_table: bool = False) -> str:
    """``text`` (a path, a command) as a Markdown code span that shows it exactly: fenced with one
    backtick more than its longest run of them, padded with a space where it starts or ends with one
    (CommonMark's rules), so no backtick in a folder name closes the span early and lets what follows
    render as Markdown or HTML; control characters as :func:`printable` shows them (a newline would
    end the line it is on). ``in_table``: for a cell of a Markdown table, where a ``|`` ends the cell
    even inside a code span unless written ``\\|`` (GitHub shows it as ``|``).

    >>> print(code_span("/data/site"), code_span("site`<img src=x>`x"), code_span("`x"), code_span("a|b", in_table=True))
    `/data/site` ``site`<img src=x>`x`` `` `x `` `a\\|b`
    """
    text = printable(str(text))
    if in_table:
        text = text.replace("|", "\\|")
    fence = "`" * (max(map(len, re.findall("`+", text)), default=0) + 1)
    pad = " " if not text or text[0] == "`" or text[-1] == "`" or (text[0] == text[-1] == " " and text.strip()) else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def search_command(record: dict[str, Any]) -> str | None:
    """The search command an experiment recorded (``experiment.json``, or ``model.json``'s ``search``), as it runs
    again from any folder: as typed, after a ``cd`` to the folder it was typed in, which its relative paths are
    relative to (an experiment from before that record: as typed). None where no command was recorded.

    >>> search_command({"command": "python -m cxr_tune.search --data ../d", "command_cwd": "/home/me/runs 2"})
    "cd '/home/me/runs 2' && python -m cxr_tune.search --data ../d"
    >>> search_command({"command": "python -m cxr_tune.search --data ../d"})
    'python -m cxr_tune.search --data ../d'
    """
    command, folder = record.get("command"), record.get("command_cwd")
    return f"cd {shlex.quote(folder)} && {command}" if command and folder else command


def rerun_command(record: dict[str, Any], name: str | None) -> str | None:
    """:func:`search_command` with ``--name name`` in place of the recorded one's value (added where it gave none), so that
    it runs again into a new experiment: as typed, a search under an existing name is refused. ``name`` None: the recorded
    name with ``-repro`` added (a record that does not name its experiment's folder); the command as typed where it gave
    no name. None where no command was recorded; a command that does not parse as shell words stays as typed.

    >>> rerun_command({"command": "python -m cxr_tune.search --name s0a --seed 0", "command_cwd": "/runs"}, "s0a-repro")
    'cd /runs && python -m cxr_tune.search --name s0a-repro --seed 0'
    >>> rerun_command({"command": "python -m cxr_tune.search --name=external --seed 0"}, None)
    'python -m cxr_tune.search --name external-repro --seed 0'
    """
    try:
        words = shlex.split(record.get("command") or "")
    except ValueError:
        return search_command(record)
    given = [i for i, word in enumerate(words) if word == "--name" or word.startswith("--name=")]
    if name is None and given:  # argparse keeps the last one given
        last = words[given[-1]]
        recorded = last.split("=", 1)[1] if "=" in last else (words[given[-1] + 1] if given[-1] + 1 < len(words) else "")
        name = f"{recorded}-repro" if recorded else None
    if not words or name is None:
        return search_command(record)
    for i in reversed(given):  # argparse keeps the last; drop every one
        del words[i: i + (2 if words[i] == "--name" else 1)]
    at = given[0] if given else len(words)
    return search_command({**record, "command": shlex.join([*words[:at], "--name", name, *words[at:]])})


def printable(name: str, limit: int | None = None) -> str:
    r"""A file name (or a value a user gave) for the console: each character that is not printable (a
    newline, an escape code, a tab) as Python's repr writes it, so a name can neither forge a line nor
    drive the terminal; ordinary names, spaces and non-ASCII letters stay as they are. With ``limit``,
    a longer text keeps its first ``limit`` characters and says how long it was, so a one-line error
    stays one readable line whatever was typed or pasted.

    >>> print(printable("NORMAL/tête 1.jpeg"), printable("a.jpeg\n0.0010  NORMAL  b.jpeg"), printable("\x1b[31mRED"))
    NORMAL/tête 1.jpeg a.jpeg\n0.0010  NORMAL  b.jpeg \x1b[31mRED
    >>> printable("x" * 1000, limit=5)
    'xxxxx... (1000 characters)'
    """
    if limit is not None and len(name) > limit:
        return f"{printable(name[:limit])}... ({len(name)} characters)"
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in name)


#: How much of a value a user gave (a --set value, a key in a params file) an error line shows: a 10 MB string
#: pasted into a flag is not printed whole.
SHOWN_CHARS = 80


def first_listed(frame: pd.DataFrame, shown: int = 3) -> str:
    """``path: reason`` of the first ``shown`` rows of ``frame`` (columns ``path`` and ``reason``), and how many more
    there are: the files a command could not use, named inside one line."""
    first = "; ".join(f"{printable(path)}: {reason}" for path, reason in frame[["path", "reason"]].head(shown).itertuples(index=False))
    return first + (f"; and {len(frame) - shown} more" if len(frame) > shown else "")


def shown(value: Any) -> str:
    """``value`` as a one-line error shows it: its repr, printable and cut to :data:`SHOWN_CHARS` characters.

    >>> shown("adam9"), shown("x" * 1000)[-24:]
    ("'adam9'", 'xxx... (1002 characters)')
    """
    return printable(repr(value), SHOWN_CHARS)


#: A cell starting with one of these is a formula to Excel and LibreOffice (a file named ``=HYPERLINK(...)``);
#: the quote itself is in the list so that :func:`from_spreadsheet` gives every cell back exactly.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def for_spreadsheet(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` for a CSV a person opens in a spreadsheet: a text cell starting with = + - @ TAB CR
    (or ') gets a leading ', which makes it text; :func:`from_spreadsheet` reads it back."""
    return _map_text(frame, lambda text: "'" + text if text.startswith(_FORMULA_STARTS) else text)


def from_spreadsheet(frame: pd.DataFrame) -> pd.DataFrame:
    """A CSV written through :func:`for_spreadsheet`, read back: its text cells as they were."""
    return _map_text(frame, lambda text: text[1:] if text.startswith("'") else text)


def _map_text(frame: pd.DataFrame, change: Any) -> pd.DataFrame:
    from pandas.api.types import is_numeric_dtype

    text = [name for name in frame.columns if not is_numeric_dtype(frame[name])]
    return frame.assign(**{name: frame[name].map(lambda v: change(v) if isinstance(v, str) else v) for name in text})
