"""Reading an experiment folder: a copied or moved one reads its own files, not the original's."""

from __future__ import annotations

import shutil

import pytest

from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from tests.conftest import ROOT, call_cli


def test_a_copied_experiment_opens_its_own_study(tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(ROOT / "results" / "real" / "external", copy)  # recorded as run from another checkout (/work/run)
    experiment = Experiment(str(copy))
    assert experiment.options.experiment_dir != str(copy)
    assert experiment.study_path == str(copy / "study.db")
    from cxr_tune.search.finish import dashboard_command

    assert dashboard_command(experiment).startswith(f"optuna-dashboard sqlite:///{copy / 'study.db'}")


def test_an_experiment_whose_space_a_later_rule_refuses_is_still_read(tmp_path):
    copy = tmp_path / "carved"
    shutil.copytree(ROOT / "results" / "real" / "carved", copy)
    text = (copy / "space.yaml").read_text()
    (copy / "space.yaml").write_text(text.replace("\nfixed:\n", "\nfixed:\n  epochs: 12\n", 1))  # refused in a new space file since 2026-12-06
    space = Experiment(str(copy)).space()
    assert space.fixed["epochs"] == 12 and space.path == str(copy / "space.yaml")


def _cut_mid_row(text: str) -> str:
    """``splits.csv`` as a copy stopped halfway leaves it: the last row ends inside its content hash."""
    start = text.index("\n", len(text) // 2) + 1
    return text[: text.index(",", start) + 5]


@pytest.mark.parametrize(("name", "damage", "read"), [
    ("experiment.json", lambda path: path.write_text(path.read_text()[:200]), lambda e: e.options),
    ("experiment.json", lambda path: path.write_text(""), lambda e: e.options),
    ("experiment.json", lambda path: path.write_text("{}"), lambda e: e.options),
    ("experiment.json", lambda path: path.write_text('{"options": {"trials": 4}}'), lambda e: e.options),
    ("splits.csv", lambda path: path.unlink(), lambda e: e.splits),
    ("splits.csv", lambda path: path.write_text(_cut_mid_row(path.read_text())), lambda e: e.splits),
    ("splits.csv", lambda path: path.write_text(_cut_mid_row(path.read_text()).rsplit("\n", 1)[0] + "\n"), lambda e: e.splits),
    ("space.yaml", lambda path: path.unlink(), lambda e: e.space()),
])
def test_a_damaged_or_half_written_experiment_file_is_one_line_naming_it(tmp_path, name, damage, read):
    copy = shutil.copytree(ROOT / "results" / "real" / "carved", tmp_path / "carved")
    damage(copy / name)
    with pytest.raises(UserError, match="damaged or half-written") as caught:
        read(Experiment(str(copy)))
    assert str(caught.value).startswith(f"'{copy / name}' could not be read (") and "\n" not in str(caught.value)


def test_export_of_a_half_written_experiment_is_one_line(tmp_path):
    copy = shutil.copytree(ROOT / "results" / "real" / "carved", tmp_path / "carved")
    (copy / "experiment.json").write_text("{}")
    done = call_cli("cxr_tune.export", str(copy), "--out", str(tmp_path / "best"))
    assert done.returncode == 2 and done.stderr.startswith(f"error: '{copy / 'experiment.json'}' could not be read"), done.stderr


def test_a_broken_space_file_is_named_as_the_experiments_own(tmp_path):
    copy = shutil.copytree(ROOT / "results" / "real" / "carved", tmp_path / "carved")
    (copy / "space.yaml").write_text("params: [1, 2\n")
    with pytest.raises(UserError) as caught:
        Experiment(str(copy)).space()
    assert str(caught.value).startswith(f"{copy / 'space.yaml'}: YAML syntax error"), caught.value  # not the temporary copy it read
