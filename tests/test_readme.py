"""Every file the README (and the benchmarks' own README) points at is in git, so a fresh clone has it, and its command table names every benchmark.

Checked: the targets of relative markdown links, and inline code that names a path in the
project (`results/real/README.md`, `search_spaces/*.yaml`), outside fenced code blocks, which show
example output. Placeholders (`results/<experiment>/`, `results/NAME/study.db`) and paths outside
the project are not files to find.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\s]+)`")
PLACEHOLDER = re.compile(r"[<>{}$~]|(^|/)[A-Z][A-Z_]+(/|$)")  # <experiment>, NAME, PATH


def committed_files() -> set[str]:
    """Tracked files plus untracked ones git does not ignore: in CI's fresh clone, the tracked ones.

    An ignored file is what a clone would miss; counting the not-yet-added ones lets a new file
    and the README line naming it be checked before they are committed together.
    """
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return set(out.splitlines())


def prose(text: str) -> str:
    """The README without its fenced code blocks."""
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)


def link_targets(text: str) -> list[str]:
    targets = [t.split("#")[0] for t in LINK.findall(text)]
    return [t for t in targets if t and not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # not http:, mailto:


def code_paths(text: str, top_level: set[str]) -> list[str]:
    """Inline code that starts with a top-level name of the project and is not a placeholder."""
    return [c for c in CODE.findall(text) if c.split("/")[0] in top_level and not PLACEHOLDER.search(c)]


def missing(target: str, files: set[str]) -> bool:
    """A file, a folder holding files, or a glob matching some, in ``files``."""
    path = target.rstrip("/")
    if "*" in path:
        return not fnmatch.filter(files, path)
    return path not in files and not any(f.startswith(path + "/") for f in files)


@pytest.mark.parametrize("document", ["README.md", "results/benchmarks/README.md"])
def test_readme_points_only_at_committed_files(document):
    """Links are relative to the document's folder; inline code paths to the project's root."""
    files = committed_files()
    text = prose((ROOT / document).read_text(encoding="utf-8"))
    folder = posixpath.dirname(document)
    links = [posixpath.normpath(posixpath.join(folder, t)) for t in link_targets(text)]
    paths = code_paths(text, {f.split("/")[0] for f in files})
    assert links and paths, f"found no links or paths in {document}; the patterns above no longer match it"
    absent = sorted({t for t in links + paths if missing(t, files)})
    assert not absent, f"{document} points at files a fresh clone lacks (untracked or ignored): {absent}"


def test_checker_sees_what_it_should():
    """The rules above, on lines like the README's own."""
    files = {"results/real/README.md", "search_spaces/wide.yaml", "cluster.yaml"}
    text = prose("See [it](results/real/README.md#top), [web](https://docs.ray.io), `search_spaces/*.yaml`,\n"
                 "`results/<experiment>/`, `results/NAME/study.db`, `../shared/data`, `report.md`, `results/synthetic/README.md`.\n"
                 "```\nExported to results/wide-1/best\n`results/inside-a-fence.md`\n```\n")
    assert link_targets(text) == ["results/real/README.md"]
    paths = code_paths(text, {"results", "search_spaces", "cluster.yaml"})
    assert paths == ["search_spaces/*.yaml", "results/synthetic/README.md"]
    assert [p for p in paths if missing(p, files)] == ["results/synthetic/README.md"]


def test_the_command_table_names_every_benchmark():
    from cxr_tune.bench.__main__ import build_parser

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices  # argparse's subcommands
    listed = re.search(r"`cxr_tune\.bench \{([a-z,]+)\}`", README.read_text(encoding="utf-8"))
    assert listed, "README.md's command table no longer has a `cxr_tune.bench {...}` row"
    assert sorted(listed.group(1).split(",")) == sorted(commands)


def test_the_trust_boundary_names_every_command_that_reads_tunes_pickled_state():
    """Tune pickles its state (objects inside ``experiment_state-*.json`` too), and every command that reads an
    experiment's trials or resumes Tune reads it: the README must name each and claim no command is spared that is not."""
    text = README.read_text(encoding="utf-8")
    boundary = text.split("### Trust boundary", 1)[1].split("\n## ", 1)[0]
    benches = sorted(f"bench {p.stem}" for p in (ROOT / "cxr_tune" / "bench").glob("*.py")
                     if re.search(r"\.(trials|histories)\(", p.read_text(encoding="utf-8")))  # Experiment.trials/histories read Tune's state
    assert benches, "no benchmark reads an experiment's trials any more; the pattern above no longer matches the code"
    for command in ["search --resume", "search --report-only", "export", "train --cv", *benches]:
        assert f"`{command}" in boundary, f"README.md's Trust boundary does not name `{command}`, which reads Ray Tune's pickled state"
    assert "integrity check" in boundary and "not protection against someone who can edit the" in boundary
    row = next(line for line in text.splitlines() if line.startswith("|") and "`tuner.pkl`" in line)  # the experiment folder's table
    assert not re.search(r"never[^|]*`export`", row), "README.md says export never reads Tune's state; it does (the trial table)"


def section(text: str, heading: str) -> str:
    """The prose of one ``## heading`` section, up to the next one."""
    assert f"\n## {heading}\n" in text, f"README.md has no '## {heading}' section"
    return prose(text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0])


def test_the_quick_start_is_short_and_says_how_to_stop_resume_and_clean_up():
    """A newcomer reads the Quick start whole: what to run, how long, where the results go, how to stop and clean up;
    the measured history lives in results/benchmarks/README.md."""
    quick = section(README.read_text(encoding="utf-8"), "Quick start")
    assert len(quick.split()) < 450, "the Quick start grew again; move measurements to results/benchmarks/README.md"
    for needed in ["--space smoke", "--storage", "Ctrl-C", "--resume", ". .venv/bin/activate", "~/.cache/cxr_tune",
                   "session_*", "~/.ray/auth_token", "make clean", "make test", "3-node"]:
        assert needed in quick, f"README.md's Quick start does not mention {needed}"
    history = (ROOT / "results" / "benchmarks" / "README.md").read_text(encoding="utf-8")
    assert "## `make search` in fresh clones" in history and "**13 min 8 s**" in history


def test_the_words_used_here_define_each_criterion_and_the_search_describes_each_space():
    from cxr_tune.search.space import SPACES_DIR

    text = README.read_text(encoding="utf-8")
    words = " ".join(section(text, "Words used here").split())
    for term in ["**TPE**", "**ASHA**", "**rung**", "**Selection set**", "**External validation set**", "**DDP**",
                 "**Wilson score interval**", "**Percentile bootstrap**", "`balanced_accuracy` = (sensitivity + specificity) / 2",
                 "`youden` = sensitivity + specificity - 1", "`gmean` = sqrt(sensitivity x specificity)",
                 "`min_sens_spec` = the smaller of the two"]:
        assert term in words, f"README.md's Words used here does not define {term}"
    spaces = section(text, "The search").split("- **Spaces**", 1)[1].split("\n- **", 1)[0]
    for name in sorted(p.stem for p in SPACES_DIR.glob("*.yaml")):
        assert f"\n  - `{name}`: " in spaces, f"README.md's list of spaces does not say what {name} is for"


def test_the_command_table_gives_each_command_a_sentence_or_two():
    """The detail goes in the paragraphs below the table; a cell of thousands of characters is unreadable."""
    commands = section(README.read_text(encoding="utf-8"), "Commands")
    rows = [line for line in commands.splitlines() if line.startswith("| `cxr_tune.")]
    assert len(rows) >= 10
    long = [row.split(" | ")[0] for row in rows if len(row) > 500]
    assert not long, f"README.md's command table has rows over 500 characters: {long}"
