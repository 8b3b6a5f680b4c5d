"""A built wheel carries the search spaces, and a regular (non-editable) install finds them.

The spaces live once, in the top-level ``search_spaces/``; ``cxr_tune/spaces`` is a symlink to it
that the build turns into copies. These tests build the wheel from what a commit holds, as a fresh
clone would, so a symlink that git does not track, or package-data that misses a file, fails here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def committable_files() -> list[str]:
    """Tracked files plus untracked ones git does not ignore: what the next commit can hold."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout; the wheel test builds from git's file list")
    return out.splitlines()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel . --no-deps`` on a copy of the checkout, so the build never writes into it."""
    source = tmp_path_factory.mktemp("clone")
    for name in committable_files():
        if name.startswith("results/"):  # experiment outputs, not part of the package
            continue
        src, dst = ROOT / name, source / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)  # as git checks it out
        elif src.is_file():  # a file deleted in the working tree but not yet in git
            shutil.copy2(src, dst)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--quiet", "-w", str(dist)],
                   cwd=source, check=True)
    (built,) = dist.glob("cxr_tune-*.whl")
    return built


def test_search_spaces_are_one_copy_linked_into_the_package():
    link = ROOT / "cxr_tune" / "spaces"
    assert link.is_symlink() and os.readlink(link) == "../search_spaces"
    assert "cxr_tune/spaces" in committable_files()


def test_wheel_holds_every_search_space_unchanged(wheel: Path):
    assert SPACES, "search_spaces/ has no .yaml files"
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(n).name: archive.read(n) for n in archive.namelist() if n.startswith("cxr_tune/spaces/")}
    assert sorted(shipped) == [p.name for p in SPACES]
    for path in SPACES:
        assert shipped[path.name] == path.read_bytes(), f"{path.name} differs in the wheel"


def test_installed_wheel_resolves_space_by_name(wheel: Path, tmp_path: Path):
    """``--space wide`` works from a regular install, far from the checkout."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target", str(target), str(wheel)],
                   check=True)
    probe = "import cxr_tune; from cxr_tune.search.space import load_space; print(cxr_tune.__file__); print(load_space('wide').path)"
    # PYTHONPATH puts the installed copy ahead of the checkout's editable install; the working
    # folder is outside the checkout so `import cxr_tune` cannot find the source tree either.
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    package, space = map(Path, run.stdout.split())
    assert package.is_relative_to(target), f"imported {package}, not the installed wheel"
    assert space == target / "cxr_tune" / "spaces" / "wide.yaml"
    assert space.read_bytes() == (ROOT / "search_spaces" / "wide.yaml").read_bytes()


def test_the_oldest_python_the_project_admits_can_install_every_pin():
    """requires-python said >=3.10 (and README and the Makefile "Python 3.10+"), but the pinned matplotlib,
    pandas, pyarrow, pillow, scipy, scikit-learn, onnxruntime and platformdirs require 3.11: on 3.10 the
    install, and so `make search`, failed with "No matching distribution found for matplotlib==3.11.2"."""
    import tomllib
    from importlib.metadata import metadata

    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    (oldest,) = [spec.version for spec in SpecifierSet(project["requires-python"]) if spec.operator == ">="]
    needs = {}
    for pin in map(Requirement, project["dependencies"]):
        needs[pin.name] = metadata(pin.name).get("Requires-Python") or ""
    assert {name: need for name, need in needs.items() if not SpecifierSet(need).contains(oldest)} == {}
    assert f"Python {oldest}+" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"Python {oldest}+" in (ROOT / "Makefile").read_text(encoding="utf-8").splitlines()[0]


def test_every_package_the_code_imports_is_a_declared_dependency():
    """numpy (imported in 35 modules) and google.protobuf (serving.py) were not declared: they came in through
    torch, pandas and onnx, whose own requirements could drop them or move them to versions never tested here."""
    import ast
    import tomllib
    from importlib.metadata import distribution, packages_distributions

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = {canonicalize_name(Requirement(pin).name) for pin in project["dependencies"]}
    imported = set()
    for path in (ROOT / "cxr_tune").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module)
    owners = packages_distributions()
    undeclared = {}
    for name in sorted(imported):
        top = name.partition(".")[0]
        if top in sys.stdlib_module_names or top == "cxr_tune":
            continue
        dists = owners.get(top, [])
        if len(dists) > 1:  # a namespace shared by several distributions (google): the one holding this module
            inner = name.replace(".", "/")
            dists = [d for d in dists if any(str(f) == f"{inner}.py" or str(f).startswith(f"{inner}/") for f in distribution(d).files or [])]
        if not {canonicalize_name(d) for d in dists} & declared:
            undeclared[name] = dists
    assert undeclared == {}
