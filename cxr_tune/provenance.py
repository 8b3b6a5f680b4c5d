"""Which code and libraries made a result, recorded beside it so that it can be made again.

The package version alone (``cxr_tune 0.1.0``) never changes between commits; the commit does.
Torch-free: the versions come from the installed packages' metadata, nothing heavy is imported.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

# Each library's distribution names: the first one installed gives its version.
PACKAGES = {"torch": ("torch",), "ray": ("ray",), "optuna": ("optuna",), "onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "numpy": ("numpy",)}


def provenance() -> dict[str, Any]:
    """``{"commit": ..., "versions": {"python": ..., "torch": ..., ...}}``: :func:`git_commit` and the
    versions installed (None for one that is not)."""
    return {"commit": git_commit(), "versions": {"python": platform.python_version(), **{name: _version(names) for name, names in PACKAGES.items()}}}


def git_commit(anchor: Path = Path(__file__).with_name("__init__.py")) -> str | None:
    """The commit of the git checkout that tracks the file ``anchor`` (this package's ``__init__.py``), with
    ``+dirty`` when a tracked file there has changes; None when it is not in a checkout, git is
    missing or fails: a record is never worth failing a command for."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=anchor.parent, capture_output=True, text=True, timeout=30, check=False)

    try:
        tracked = git("ls-files", "--error-unmatch", anchor.name)  # an install inside another checkout's ignored folder is not its code
        head = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    if tracked.returncode or head.returncode or status.returncode:
        return None
    return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def describe(record: dict[str, Any] | None) -> str:
    """One line for people: ``commit abc123+dirty; python 3.11.7, torch 2.5.1, ...``; "" without a record (an older file)."""
    if not record:
        return ""
    versions = ", ".join(f"{name} {version}" for name, version in (record.get("versions") or {}).items() if version)
    return f"commit {record.get('commit') or 'unknown (not a git checkout)'}; {versions}"


def _version(names: tuple[str, ...]) -> str | None:
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None
