"""Reading an experiment folder: a copied or moved one reads its own files, not the original's."""

from __future__ import annotations

import shutil

from cxr_tune.experiment import Experiment
from tests.conftest import ROOT


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
