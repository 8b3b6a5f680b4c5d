"""bench search's report says how many of the TPE arm's trials were drawn at random, as the study shows it."""

from __future__ import annotations

import shutil

from tests.conftest import ROOT


def test_the_random_start_up_trials_are_counted_from_the_study_not_copied_from_the_space(tmp_path):
    """``results/real/carved`` ran 2 trials at once with ``startup_trials: 10``: TPE took over once 10 had ended, so the first
    11 were drawn at random (the report said "10 random start-up trials" whatever ran at once)."""
    from cxr_tune.bench.search import drawn_at_random
    from cxr_tune.experiment import Experiment

    for name in ("experiment.json", "space.yaml", "study.db"):  # a copy: the committed study is only read
        shutil.copy(ROOT / "results/real/carved" / name, tmp_path / name)

    assert drawn_at_random(Experiment(str(tmp_path))) == (11, 10)
