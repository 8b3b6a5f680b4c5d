"""The package's structure: imports run one way (no cycle, also none hidden inside a function),
export and the report load without Ray Tune, and one module reads an experiment folder."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "cxr_tune"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the cxr_tune modules it imports anywhere in its body (functions included)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # "from cxr_tune.search import transfer" imports the module cxr_tune.search.transfer
                targets = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target.startswith("cxr_tune."):
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert len(graph) > 40 and graph["cxr_tune.export"]  # the graph was read
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle_hidden_inside_a_function():
    graph = import_graph()
    graph["cxr_tune.formatting"] = graph["cxr_tune.formatting"] | {"cxr_tune.export"}  # as if formatting imported export in a function
    assert any({"cxr_tune.export", "cxr_tune.formatting"} <= set(c) for c in cycles(graph))


def test_export_report_and_the_experiment_reader_load_without_ray_tune():
    code = ("import sys; import cxr_tune.export, cxr_tune.search.report, cxr_tune.experiment, cxr_tune.predict, cxr_tune.adapt; "
            "print(sorted(m for m in sys.modules if m == 'ray.tune' or m.startswith('ray.tune.')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"



def test_the_bench_parser_checks_its_arguments_without_loading_torch():
    """A mistyped bench flag is answered at once: the parser's choices (precisions, architectures) come from torch-free modules."""
    code = "import sys; import cxr_tune.bench.__main__; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def loads_torch_to_answer(module: str, *argvs: list[str]) -> bool:
    """Whether ``python -m MODULE ARGV`` (for each ``argv`` in turn, all parsed in one process) imports torch."""
    code = ("import runpy, sys\n"
            f"for argv in {list(argvs)!r}:\n"
            f"    sys.argv = [{module!r}, *argv]\n"
            "    try:\n"
            f"        runpy.run_module({module!r}, run_name='__main__', alter_sys=True)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print('torch' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stderr.strip().splitlines()[-1] == "True"


def test_export_answers_help_and_a_mistyped_flag_without_loading_torch():
    """torch (half the time of the answer) is loaded where a model is built, not with the parser."""
    assert not loads_torch_to_answer("cxr_tune.export", ["--help"], ["EXPERIMENT", "--tta", "99"])


def test_train_answers_help_and_a_mistyped_flag_without_loading_torch():
    assert not loads_torch_to_answer("cxr_tune.train", ["--help"], ["--no-such-flag"])


def test_the_search_answers_help_and_a_bad_flag_without_loading_torch():
    """Its space reader and precision flags load torch only when a network is checked or trained (before: ~1.6 s each time)."""
    assert not loads_torch_to_answer("cxr_tune.search", ["--help"], ["--trials", "0"])


def test_one_module_reads_an_experiment_folder():
    """experiment.json, splits.csv and space.yaml are named in one module (the reader); the search
    writes them through its constants."""
    names = ('"experiment.json"', '"splits.csv"', '"space.yaml"')
    naming = sorted(str(p.relative_to(PACKAGE.parent)) for p in PACKAGE.rglob("*.py") if any(n in p.read_text(encoding="utf-8") for n in names))
    assert naming == ["cxr_tune/experiment.py"]
