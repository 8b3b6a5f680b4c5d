"""What a result records of the code that made it: the git commit (dirty or not) and the library versions, never a failure."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cxr_tune.provenance import describe, git_commit, provenance


def git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def checkout(tmp_path) -> Path:
    git(tmp_path, "init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git(tmp_path, "add", "code.py")
    git(tmp_path, "commit", "-qm", "first")
    return tmp_path


def test_the_commit_is_the_checkouts_and_dirty_only_when_a_tracked_file_changed(checkout):
    head = git(checkout, "rev-parse", "HEAD")
    assert git_commit(checkout / "code.py") == head
    (checkout / "notes.txt").write_text("untracked\n")
    assert git_commit(checkout / "code.py") == head
    (checkout / "code.py").write_text("x = 2\n")
    assert git_commit(checkout / "code.py") == f"{head}+dirty"


def test_no_checkout_an_untracked_install_or_no_git_is_none_not_an_error(checkout, tmp_path_factory, monkeypatch):
    outside = tmp_path_factory.mktemp("plain") / "code.py"
    outside.write_text("x = 1\n")
    assert git_commit(outside) is None
    (checkout / "site-packages").mkdir()
    (checkout / "site-packages" / "code.py").write_text("x = 1\n")  # installed inside another checkout, untracked there
    assert git_commit(checkout / "site-packages" / "code.py") is None
    monkeypatch.setenv("PATH", "")
    assert git_commit(checkout / "code.py") is None


def test_the_versions_are_the_installed_ones_and_read_without_importing_torch():
    versions = provenance()["versions"]
    assert versions["python"] == platform.python_version() and versions["numpy"] == np.__version__
    assert set(versions) == {"python", "torch", "ray", "optuna", "onnxruntime", "numpy"}
    code = "import sys; from cxr_tune.provenance import provenance; provenance(); print('torch' in sys.modules, 'ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]


def test_the_line_for_people_names_the_commit_and_says_nothing_without_a_record():
    line = describe({"commit": "abc+dirty", "versions": {"python": "3.11.7", "torch": "2.5.1", "ray": None}})
    assert line == "commit abc+dirty; python 3.11.7, torch 2.5.1"
    assert describe(None) == "" and describe({}) == ""
