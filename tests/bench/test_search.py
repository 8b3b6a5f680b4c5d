"""bench search's report says how many of the TPE arm's trials were drawn at random, as the study shows it."""

from __future__ import annotations

import json
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


def test_the_summary_names_the_data_and_external_set_the_searches_recorded(tmp_path):
    """It said "real training split" whatever --data was, also over a SYNTHETIC folder with another external set."""
    from cxr_tune.bench.search import setting_line
    from cxr_tune.experiment import Experiment

    info = json.loads((ROOT / "results/real/carved/experiment.json").read_text())
    info.update(data_description="SYNTHETIC chest X-rays (generated, not real patients) at /d/syn", synthetic=True, external="/d/site")
    (tmp_path / "experiment.json").write_text(json.dumps(info))
    line = setting_line(Experiment(str(tmp_path)), 3, 0, "external validation set")
    assert "Data: SYNTHETIC chest X-rays (generated, not real patients) at /d/syn; external set: `/d/site`." in line
    assert "real" not in line.replace("not real patients", "")


def test_the_search_and_replay_tables_say_which_best_auc_they_show():
    """Both headed best_auc: the best trial's at its best epoch here, the highest of any epoch in the replay, on the same search."""
    from cxr_tune.bench import replay
    from cxr_tune.bench.search import results_table

    rows = [{"search": "TPE + ASHA", "experiment": "e", "outcome": "complete", "trials": 2, "trial_epochs": 4, "deciding set": "external validation",
             "best_balanced_accuracy": 0.9, "best_interval": (0.8, 0.95), "best_auc": 0.96, "minutes": 1.0}]
    header = results_table(rows).splitlines()[0]
    assert "best_auc (the best trial's, at its best epoch)" in header
    assert replay.BEST_AUC == "best_auc (of any epoch run)"


def test_the_search_and_replay_tables_say_which_clock_their_minutes_are():
    """Before: both headed "minutes" for the same search, bench search's the whole command (Ray's start, the image cache,
    the trials), the replay's the trials alone, so the same random arm read 0.62 minutes in one and 0.4 in the other."""
    from cxr_tune.bench import replay
    from cxr_tune.bench.search import results_table

    rows = [{"search": "random", "experiment": "e", "outcome": "complete", "trials": 2, "trial_epochs": 4, "deciding set": "external validation",
             "best_balanced_accuracy": 0.9, "best_interval": (0.8, 0.95), "best_auc": 0.96, "minutes": 0.62}]
    columns = [column.strip() for column in results_table(rows).splitlines()[0].split("|")]
    assert "command minutes" in columns and "minutes" not in columns
    assert replay.MINUTES == "trial minutes"


def test_the_best_auc_is_the_best_trials_not_the_highest_of_any_trial():
    """Seed 0's TPE arm: its best trial, 4f808850, had AUC 0.9485, but the row showed 0.9601, another trial's (the
    highest AUC of any trial), beside 4f808850's balanced accuracy and interval."""
    import pandas as pd

    from cxr_tune.bench.search import best_trial

    table = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": ["TERMINATED"] * 3, "objective": [0.90, 0.91, 0.88], "objective_low": [0.86, 0.88, 0.84],
                          "objective_high": [0.93, 0.94, 0.91], "ext_auc": [0.96, 0.95, 0.97], "val_auc": [0.99, 0.98, 0.97]})
    assert best_trial(table, "ext") == {"best_balanced_accuracy": 0.91, "best_interval": (0.88, 0.94), "best_auc": 0.95}
    assert best_trial(table, "val")["best_auc"] == 0.98


def test_a_trial_that_failed_after_reporting_is_never_the_arms_best():
    """Before: the arm's best balanced accuracy was the highest objective of any row, a trial that reported 0.95 and then
    failed (ERROR) included, which selection never selects and the report leaves out of its ranking."""
    import pandas as pd

    from cxr_tune.bench.search import best_trial

    table = pd.DataFrame({"trial_id": ["a", "b"], "status": ["ERROR", "TERMINATED"], "objective": [0.95, 0.91], "objective_low": [0.92, 0.88],
                          "objective_high": [0.97, 0.94], "val_auc": [0.99, 0.98]})
    assert best_trial(table, "val") == {"best_balanced_accuracy": 0.91, "best_interval": (0.88, 0.94), "best_auc": 0.98}


def test_the_summary_says_its_intervals_are_stratified_unlike_the_model_cards():
    """best/'s 0.935 reads [0.904, 0.961] on its card (all images resampled together) and [0.908, 0.962] by the interval
    bench search gives (NORMAL and PNEUMONIA images resampled apart), and its summary did not say which it was."""
    from cxr_tune.bench.search import comparison_line

    row = {"best_balanced_accuracy": 0.935, "best_interval": (0.908, 0.962)}
    line = comparison_line({**row, "trial_epochs": 88}, {**row, "best_balanced_accuracy": 0.93, "trial_epochs": 216}, 88 / 216)
    assert "**TPE + ASHA used 41% of the trial-epochs of random search**" in line and "difference +0.0050" in line
    assert "stratified by class" in line and "model card's" in line and "[0.908, 0.962] and [0.908, 0.962] (they overlap" in line
