"""Lazily imported package names: a package's ``__init__`` lists them, the first use imports the module."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: ``exports`` maps each name to the submodule defining it.

    Why: ``cxr_tune.train.hparams`` and the data decoders are read in processes (Ray Data
    workers, export) that must not pay for torch, the training loop or scikit-learn on import.
    """

    def __getattr__(name: str) -> Any:
        if name in exports:
            return getattr(import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
