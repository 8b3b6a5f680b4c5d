"""Read a YAML mapping from a file, or stop with one line naming the file and the problem; the one
reader of YAML (space and params files, ``--set`` values)."""

from __future__ import annotations

import re
import reprlib
import sys
from pathlib import Path
from typing import Any

import yaml

from cxr_tune import storage
from cxr_tune.errors import UserError
from cxr_tune.formatting import SHOWN_CHARS, printable

#: The largest YAML file read (a space or params file): the shipped ones are 1-4 KB.
MAX_BYTES = 2**20
#: The largest model.json read, by predict and the rest (serving.read_meta) and as a ``.json`` params file: the real ones
#: are about 30 KB, and the image hashes an export or adapt records (11 bytes an image) keep a site of two million images
#: below it. A larger file is refused before it is read and parsed.
MAX_META_BYTES = 32 * 2**20


class AliasRefused(yaml.YAMLError):
    """A YAML alias (``*name``): refused, because nine nested aliases make a 1 KB file a billion strings."""

    def __init__(self, anchor: str, mark: yaml.Mark) -> None:
        super().__init__(f"the alias *{anchor} at line {mark.line + 1}")
        self.anchor, self.mark = anchor, mark


class DuplicateKey(yaml.YAMLError):
    """A key given twice in one mapping: refused, because YAML keeps only the last (a second ``params:``
    section silently replaced the first, and with it every parameter listed there)."""

    def __init__(self, key: Any, mark: yaml.Mark, first: yaml.Mark) -> None:
        super().__init__(f"the key {reprlib.repr(key)} at line {mark.line + 1} repeats the one at line {first.line + 1}")
        self.key, self.mark, self.first = key, mark, first


class _Lenient(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, with YAML 1.2's floats: YAML 1.1's need a dot and a signed exponent, so ``1e-3`` and
    ``1.0e3`` were strings, and ``--set lr=1e-3`` "the wrong type". Here they are floats, as Python and JSON write them."""


_Lenient.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)[eE][-+]?[0-9]+$"),
                               list("-+.0123456789"))


class _Loader(_Lenient):
    """:class:`_Lenient`, but an alias stops it before anything is built from it, and so
    does a key given twice in one mapping. No file this project reads needs either; each value is
    written out once."""

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise AliasRefused(event.anchor, event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader says so below
                continue
            if first is not key_node.start_mark:
                raise DuplicateKey(key, key_node.start_mark, first)
        return super().construct_mapping(node, deep)


def parse(text: str) -> Any:
    """``text`` as ``yaml.safe_load`` reads it (exponents as floats: :class:`_Lenient`), refusing aliases (:class:`AliasRefused`) and a key given twice in one mapping (:class:`DuplicateKey`).

    >>> parse("[0.1, balanced]")
    [0.1, 'balanced']
    """
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader, stricter still


def load_mapping(path: str | Path, what: str, *, strict: bool = True) -> dict[str, Any]:
    """The top-level mapping in ``path``; ``what`` names the kind of file in error messages.

    ``strict=False`` reads as ``yaml.safe_load`` does (exponents as floats), aliases and repeated keys (the last wins)
    included: for a copy a started experiment keeps, which ran under the rules of its day. It must be a
    local file: ``Path("s3://b/x.yaml")`` would read (and name) ``s3:/b/x.yaml``."""
    if storage.is_uri(path):
        raise UserError(f"{what} file '{path}' must be a local file; copy it from object storage first (aws s3 cp {path} .)")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} file '{path}' is a folder; name a .yaml file")
    if not path.is_file():
        raise UserError(f"{what} file '{path}' does not exist")
    # a .json file is an export's model.json (train --params), which predict reads under its own cap: a large site's passes 1 MB
    as_json = path.suffix.lower() == ".json"
    if (size := path.stat().st_size) > (cap := MAX_META_BYTES if as_json else MAX_BYTES):  # parsed, an 88 MB file held YAML for minutes and 1.5 GB of memory
        kind, why = (f"a .json {what} file", "32 MB, as a model.json") if as_json else (f"a {what} file", "1 MB; the shipped ones are a few KB")
        raise UserError(f"{what} file '{path}' is {size:,} bytes; {kind} is at most {cap:,} ({why})")
    try:
        text = path.read_text(encoding="utf-8")
        content = parse(text) if strict else yaml.load(text, Loader=_Lenient)  # noqa: S506 - a SafeLoader
    except OSError as exc:
        raise UserError(f"{what} file '{path}' cannot be read: {exc.strerror or exc}") from None
    except AliasRefused as exc:
        raise UserError(f"{path}: {exc} is not accepted (YAML aliases are refused); write the value out") from None
    except DuplicateKey as exc:
        raise UserError(f"{path}: {exc} (YAML would keep only the last); give each key once") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if tag := re.fullmatch(r"could not determine a constructor for the tag '(.*)'", problem):  # !!python/object: SafeLoader builds none
            shown = printable(tag[1].replace("tag:yaml.org,2002:", "!!"), SHOWN_CHARS)
            raise UserError(f"{path}: the tag {shown}{where} is not allowed (plain YAML only); remove it") from None
        raise UserError(f"{path}: YAML syntax error{where}: {problem}") from None
    except RecursionError:  # PyYAML composes nested lists and mappings recursively
        raise UserError(f"{path}: YAML syntax error: nested too deeply (more than Python's {sys.getrecursionlimit()} levels); "
                        "write the values out flat") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None
    if content is None:
        raise UserError(f"{path}: the {what} file is empty")
    if not isinstance(content, dict):
        raise UserError(f"{path}: a {what} file must be a mapping of keys to values, not a {type(content).__name__}")
    return content
