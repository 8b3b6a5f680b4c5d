"""Read a YAML mapping from a file, or stop with one line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cxr_tune.errors import UserError


def load_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """The top-level mapping in ``path``; ``what`` names the kind of file in error messages."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} file '{path}' is a folder; name a .yaml file")
    if not path.is_file():
        raise UserError(f"{what} file '{path}' does not exist")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"{what} file '{path}' cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: YAML syntax error{where}: {problem}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None
    if content is None:
        raise UserError(f"{path}: the {what} file is empty")
    if not isinstance(content, dict):
        raise UserError(f"{path}: a {what} file must be a mapping of keys to values, not a {type(content).__name__}")
    return content
