import os
import re
import subprocess
import sys
import types
import warnings

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from cxr_tune.search import report


def _study(tmp_path, depths: list[int], *, stopped: int = 0) -> types.SimpleNamespace:
    """A study of completed trials, one per entry of ``depths`` (``filters_2`` only where the depth is 3), and
    ``stopped`` PRUNED ones, as the searcher tells Optuna about the trials ASHA stopped."""
    db = tmp_path / "study.db"
    study = optuna.create_study(study_name="lopsided", storage=f"sqlite:///{db}", direction="maximize")
    for i, depth in enumerate(depths):
        distributions = {"depth": IntDistribution(2, 3), "lr": FloatDistribution(1e-3, 1e-1)}
        params = {"depth": depth, "lr": 1e-3 * (i + 1)}
        if depth == 3:
            distributions["filters_2"], params["filters_2"] = CategoricalDistribution([4, 8]), 4
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.5 + 0.01 * i))
    for _ in range(stopped):
        study.add_trial(optuna.trial.create_trial(params={"depth": 2, "lr": 0.05}, distributions=distributions,
                                                  state=optuna.trial.TrialState.PRUNED, intermediate_values={1: 0.4}))
    return types.SimpleNamespace(study_path=str(db), options=types.SimpleNamespace(name="lopsided"),
                                 study=lambda: optuna.load_study(study_name="lopsided", storage=f"sqlite:///{db}"))


@pytest.fixture
def lopsided_study(tmp_path):
    """Enough completed trials for PED-ANOVA (43), one of them deep: ``filters_2`` has a single trial, which Optuna doubts."""
    return _study(tmp_path, [3] + [2] * 42, stopped=7)


def test_optunas_doubts_about_importances_go_into_the_report_not_the_console(lopsided_study, tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning that escaped would raise here
        notes = report.plot_importances(tmp_path / "importances.png", lopsided_study)
    assert notes["importances"] is None and (tmp_path / "importances.png").stat().st_size > 0
    assert "filters_2" in notes["importances_caveat"] and "may be inaccurate" in notes["importances_caveat"]
    assert capsys.readouterr() == ("", "")


def test_the_importances_say_they_come_from_the_completed_trials_only(lopsided_study, tmp_path):
    notes = report.plot_importances(tmp_path / "importances.png", lopsided_study)
    assert "From the 43 trial(s) that ran every epoch" in notes["importances_caveat"]
    assert "the 7 that ASHA or the search's end stopped early are not in it" in notes["importances_caveat"]


def test_too_few_completed_trials_for_ped_anova_give_a_sentence_not_a_chart(tmp_path):
    """9 of 25 trials ran every epoch (the committed carved search): PED-ANOVA's top 10 % would be one trial.
    Optuna's docstring asks for 5 there: 41 completed trials, a minimum (it said "(41 trials)" beside "Trials: 40", read as a count)."""
    notes = report.plot_importances(tmp_path / "importances.png", _study(tmp_path, [2] * 9, stopped=16))
    assert not (tmp_path / "importances.png").exists()
    assert notes["importances"].startswith("Parameter importances are not shown: they would come from the 9 trial(s) that ran every epoch")
    assert "the 16 that ASHA or the search's end stopped early" in notes["importances"] and notes["importances"].endswith(
        "asks for at least 5 in that top share, so the chart needs at least 41 completed trials.")


def test_the_rank_correlation_counts_the_trials_it_is_over():
    import numpy as np
    import pandas as pd

    from cxr_tune.search.transfer import markdown

    values = np.linspace(0.8, 0.95, 12)
    table = pd.DataFrame({"trial_id": [f"t{i}" for i in range(12)], "rank": range(1, 13), "tied": False,
                          "val_balanced_accuracy": values, "ext_balanced_accuracy": values, "val_auc": values, "ext_auc": values})
    table.loc[:2, ["ext_balanced_accuracy", "ext_auc"]] = np.nan  # three trials never scored on the external set
    [line] = [line for line in markdown(table, "external", None, "no plot") if "Spearman" in line]
    assert "over the 9 trials scored on both" in line and "says little" in line


def test_the_transfer_section_names_the_set_that_chose_as_the_selection_set():
    import numpy as np
    import pandas as pd

    from cxr_tune.search.transfer import markdown

    values = np.linspace(0.8, 0.95, 12)
    table = pd.DataFrame({"trial_id": [f"t{i}" for i in range(12)], "rank": range(1, 13), "tied": False,
                          "val_balanced_accuracy": values, "ext_balanced_accuracy": values, "val_auc": values, "ext_auc": values})
    carved, external = markdown(table, "carved", None, "no plot")[0], markdown(table, "external", None, "no plot")[0]
    assert "(`val_`, the selection set" in carved and "ext_`, a selection set" not in carved
    assert "(`ext_`, a selection set" in external


def test_under_carved_selection_the_transfer_section_says_external_rates_are_at_the_external_sets_own_threshold(tmp_path, monkeypatch):
    """It said the external set "chose nothing", yet each ``ext_`` rate (and the plot's y-axis) is at a threshold
    chosen on the external set: the carved pick's 0.8846 there was 0.8128 at carved validation's threshold."""
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from cxr_tune.search.transfer import markdown, plot_transfer

    values = np.linspace(0.8, 0.95, 4)
    table = pd.DataFrame({"trial_id": [f"t{i}" for i in range(4)], "rank": range(1, 5), "tied": False,
                          "val_balanced_accuracy": values, "ext_balanced_accuracy": values, "val_auc": values, "ext_auc": values})
    first = markdown(table, "carved", None, "no plot")[0]
    assert "chose nothing:" not in first and "threshold chosen on that set itself" in first and "optimistic even where" in first
    axes, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (axes.extend(fig.axes), save(fig, *args, **kwargs)))
    assert plot_transfer(tmp_path / "transfer.png", table, "carved") is None
    assert [ax.get_ylabel() for ax in axes] == ["external balanced accuracy\n(at a threshold chosen on this set)", "external AUC"]


def test_ranks_and_epochs_read_as_whole_numbers_when_a_failed_trial_has_none():
    import numpy as np
    import pandas as pd

    from cxr_tune.search.report import _trial_table

    metrics = pd.DataFrame({"rank": [1.0, np.nan], "trial_id": ["a", "failed"], "epochs": [8.0, 0.0], "objective": [0.9, np.nan]})
    rows = [line.split("|")[1:-1] for line in _trial_table(metrics, pd.DataFrame({"lr": [0.001, np.nan]})).splitlines()[2:]]
    assert [[cell.strip() for cell in row] for row in rows] == [["1", "a", "8", "0.9000", "0.001"], ["", "failed", "0", "", ""]]


def test_the_operating_points_plot_has_the_roc_plot_s_axis_labels(tmp_path, monkeypatch):
    """Its axes read scikit-learn's "False Positive Rate (Positive label: 1)" while roc.png's said specificity and sensitivity."""
    import pandas as pd
    from matplotlib.figure import Figure

    labels = [0, 0, 0, 1, 1, 1]
    predictions = pd.DataFrame({"label": labels, "probability": [0.1, 0.4, 0.6, 0.3, 0.7, 0.9], "score": [0.1, 0.4, 0.6, 0.3, 0.7, 0.9]})
    exported = {"operating_points": {"balanced": {"threshold": 0.5}},
                "validation": {"operating_points": {"balanced": {"sensitivity": 2 / 3, "specificity": 2 / 3}}}}
    axes, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (axes.append(fig.axes[0]), save(fig, *args, **kwargs)))
    assert report._plot_roc(tmp_path / "roc.png", predictions, 0.5, "carved validation") is None
    assert report._plot_operating_points(tmp_path / "points.png", exported, predictions, "validation") is None
    assert [(ax.get_xlabel(), ax.get_ylabel()) for ax in axes] == [("1 - specificity (false positive rate)", "sensitivity (true positive rate)")] * 2


def test_the_reports_reliability_diagram_labels_each_set_as_best_reliability_png_does(monkeypatch, tmp_path):
    """An experiment chosen on carved validation, exported with ``--val-data``: both sets chose
    something, so both diagrams mark both as selection sets, whatever ``deciding_set`` says."""
    from cxr_tune import export

    curve = {"predicted": [0.5], "observed": [0.5], "count": [10]}
    meta = {"deciding_set": "external", "validation": {"calibration": {"reliability": curve}, "selection_set": True},
            "external": {"calibration": {"reliability": curve}, "selection_set": True},
            "test": {"calibration": {"reliability": curve}}}
    labels = {}
    monkeypatch.setattr(export, "plot_reliability", lambda path, curves, title: (labels.__setitem__("best", list(curves)), open(path, "wb").close()))
    monkeypatch.setattr(report, "plot_reliability", lambda path, curves, title: labels.__setitem__("report", list(curves)))
    monkeypatch.setattr(report, "_plot_operating_points", lambda *args: None)
    monkeypatch.setattr(report, "_plot_saliency", lambda *args: None)
    export._reliability_png(meta)
    report._clinical_plots(tmp_path, types.SimpleNamespace(file=lambda *parts: str(tmp_path.joinpath(*parts))), meta, None)
    assert labels["best"] == labels["report"] == ["carved validation (selection set)", "external validation (selection set)", "test"]


def test_the_reports_test_table_names_wilson_intervals_for_the_rates():
    """It said "95 % bootstrap intervals" over sensitivity 0.6585 [0.551, 0.752], a Wilson interval (as model.json's and the card's)."""
    exported = {"test": {"auc": 0.70, "sensitivity": 54 / 82, "specificity": 11 / 29, "balanced_accuracy": 0.52, "accuracy": 65 / 111,
                         "ci95": {"auc": [0.6, 0.8], "sensitivity": [0.5509, 0.7520], "specificity": [0.2269, 0.5600],
                                  "balanced_accuracy": [0.42, 0.62], "accuracy": [0.4926, 0.6729]}}}
    heading = report._test_section(exported)[0]
    assert "Wilson score for sensitivity, specificity and accuracy" in heading and "percentile bootstrap for AUC and balanced accuracy" in heading
    assert report._test_section({}) == []
    # A small test split's withheld AUC interval (null in model.json) is "[n/a]" and its reason, not a TypeError that left no report.
    exported["test"]["ci95"]["auc"], exported["test"]["ci95_withheld"] = None, {"auc": "4 NORMAL image(s), fewer than 10 of a class"}
    text = "\n".join(report._test_section(exported))
    assert "0.7000 [n/a]" in text and "n/a intervals: AUC: 4 NORMAL image(s), fewer than 10 of a class" in text


def test_roc_legends_give_the_auc_to_four_decimals_as_the_tables_do(tmp_path, monkeypatch):
    """A 0.9956 AUC read "AUC = 1.00" (scikit-learn's label) on roc.png and operating_points.png."""
    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    scores = np.r_[np.linspace(0.0, 0.40, 14), 0.62, np.linspace(0.6, 1.0, 15)]  # one of 15 x 15 pairs out of order: AUC 224 / 225
    predictions = pd.DataFrame({"label": [0] * 15 + [1] * 15, "score": scores, "probability": scores})
    exported = {"operating_points": {"balanced": {"threshold": 0.5}}, "validation": {"operating_points": {"balanced": {"sensitivity": 1.0, "specificity": 1.0}}}}
    legends, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (legends.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()]),
                                                                         save(fig, *args, **kwargs)))
    report._plot_roc(tmp_path / "roc.png", predictions, 0.5, "carved validation")
    report._plot_operating_points(tmp_path / "points.png", exported, predictions, "validation")
    assert legends[0][0] == "carved validation (AUC 0.9956)" and legends[1][0] == "exported model, carved validation (selection set) (AUC 0.9956)"


def test_the_gallerys_probabilities_never_read_as_the_reports_threshold(tmp_path, monkeypatch):
    """A false negative at P 0.64966 under threshold 0.64977 (stated as 0.6498) was captioned "P(PNEUMONIA) 0.650"."""
    import numpy as np
    import pandas as pd

    from cxr_tune import storage

    monkeypatch.setattr(report, "load_members", lambda folder, exported: types.SimpleNamespace(image_size=8))
    monkeypatch.setattr(report, "grad_cam", lambda members, images: np.zeros((len(images), 8, 8)))
    monkeypatch.setattr(report, "decode_gray", lambda data, size, name=None: np.zeros((size, size), np.uint8))
    monkeypatch.setattr(storage, "read_bytes", lambda path: b"")
    monkeypatch.setattr(report, "cam_grid", lambda members: f"Grad-CAM at 2x2 cells, each {members.image_size // 2} px")
    drawn = {}
    monkeypatch.setattr(report, "plot_gallery", lambda path, gallery, grid: drawn.update(gallery, grid=grid))
    predictions = pd.DataFrame({"path": ["fn.jpeg", "fp.jpeg"], "label": [1, 0], "prediction": [0, 1], "probability": [0.64966, 0.91]})
    experiment = types.SimpleNamespace(file=lambda *parts: str(tmp_path.joinpath(*parts)))
    assert report._plot_saliency(tmp_path / "saliency.png", experiment, {"threshold": 0.64977}, predictions) is None
    [(_, _, missed)] = drawn["false negatives (most confident)"]
    [(_, _, called)] = drawn["false positives (most confident)"]
    assert missed == "fn.jpeg\nP(PNEUMONIA) 0.6497" and called == "fp.jpeg\nP(PNEUMONIA) 0.9100"
    assert drawn["grid"] == "Grad-CAM at 2x2 cells, each 4 px"  # the gallery says how coarse its model's maps are


def test_the_progress_plot_names_the_criterion_and_the_set_that_decided(tmp_path, monkeypatch):
    """Its axis said "validation objective" over external balanced accuracy, or over Youden's J."""
    import pandas as pd
    from matplotlib.figure import Figure

    labels, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (labels.append(fig.axes[0].get_ylabel()), save(fig, *args, **kwargs)))
    history = {"a": pd.DataFrame({"epoch": [1, 2], "objective": [0.5, 0.6], "timestamp": [0.0, 60.0]})}
    for select, floor, deciding in (("balanced_accuracy", 0.0, "external"), ("youden", 0.9, "carved")):
        experiment = types.SimpleNamespace(options=types.SimpleNamespace(select=select, min_sensitivity=floor), deciding_set=deciding)
        report._plot_progress(tmp_path / "progress.png", history, report.objective_words(experiment))
    assert [" ".join(label.split()) for label in labels] == ["balanced accuracy on external validation (selection set)",
                                                             "youden with sensitivity >= 0.9 on carved validation (selection set)"]


def test_one_epoch_plots_show_whole_epochs_and_only_what_they_draw(tmp_path, monkeypatch):
    """A one-epoch search's learning curves had ticks at 0.96, 0.98, ... and its progress plot listed an invisible "best so far"."""
    import pandas as pd
    from matplotlib.figure import Figure

    figures, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (fig.canvas.draw(), figures.append(fig), save(fig, *args, **kwargs)))
    report._plot_learning(tmp_path / "learning.png", pd.DataFrame({"epoch": [1], "train_loss": [0.5], "val_loss": [0.6], "val_auc": [0.35],
                                                                   "val_balanced_accuracy": [0.51]}), "val")
    report._plot_progress(tmp_path / "progress.png", {"a": pd.DataFrame({"epoch": [1], "objective": [0.03], "timestamp": [0.0]})}, "youden")
    learning, progress = figures
    for ax in learning.axes:
        low, high = ax.get_xlim()
        assert [t for t in ax.get_xticks() if low <= t <= high] == [1]
    assert [t.get_text() for t in progress.axes[0].get_legend().get_texts()] == ["an epoch of a trial"]


def test_operating_points_at_one_place_are_one_marker_with_one_entry(tmp_path, monkeypatch):
    """balanced, spec90 and spec95 shared a threshold: six entries for three markers, and 0.0005 read "threshold 0.000"."""
    import pandas as pd
    from matplotlib.figure import Figure

    legends, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: (legends.append([t.get_text() for t in fig.axes[0].get_legend().get_texts()]),
                                                                         save(fig, *args, **kwargs)))
    predictions = pd.DataFrame({"label": [0, 0, 0, 1, 1, 1], "probability": [0.1, 0.4, 0.72, 0.3, 0.75, 0.9]})
    thresholds = {"balanced": 0.7132, "spec90": 0.7132, "spec95": 0.7132, "sens90": 0.35, "sens95": 0.0005, "sens98": 0.0005}
    rates = {name: {"sensitivity": 2 / 3, "specificity": 1.0} for name in ("balanced", "spec90", "spec95")}
    rates |= {"sens90": {"sensitivity": 1.0, "specificity": 1 / 3}, "sens95": {"sensitivity": 1.0, "specificity": 0.0}, "sens98": {"sensitivity": 1.0, "specificity": 0.0}}
    exported = {"operating_points": {name: {"threshold": t} for name, t in thresholds.items()}, "validation": {"operating_points": rates}}
    report._plot_operating_points(tmp_path / "points.png", exported, predictions, "validation")
    assert legends[0][1:] == ["balanced, spec90, spec95 (threshold 0.7132)", "sens90 (threshold 0.3500)", "sens95, sens98 (threshold 0.0005)"]



def _dead_pid() -> int:
    """The pid of a process that has ended (what a kill -9 leaves a folder named after)."""
    ended = subprocess.Popen([sys.executable, "-S", "-c", ""])
    ended.wait()
    return ended.pid


def test_plots_a_report_killed_while_drawing_left_are_removed_by_the_next_report(tmp_path, monkeypatch):
    # Before: the plots were drawn in a plain TemporaryDirectory, and a kill -9 meanwhile left $TMPDIR/tmpXXXXXXXX with them for good.
    import tempfile

    import pandas as pd

    left = tmp_path / f"cxr_tune-report-{_dead_pid()}-abcd1234"  # what a report killed while drawing leaves
    left.mkdir()
    (left / "progress.png").write_bytes(b"png")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    drawn_in = []

    def progress(path, *args):
        drawn_in.append(path.parent)
        raise SystemExit(0)  # the next report: its plots' folder is made, enough to see

    monkeypatch.setattr(report, "_plot_progress", progress)
    experiment = types.SimpleNamespace(options=types.SimpleNamespace(select="youden", min_sensitivity=0), info={}, deciding_set="carved",
                                       histories=lambda: (None, {}), checkpoint_for=lambda selected: str(tmp_path / "no-checkpoint"))
    with pytest.raises(SystemExit):
        report.write_report(experiment, pd.DataFrame({"rank": [1], "trial_id": ["a"], "best_epoch": [1], "val_threshold": [0.5]}), None)
    assert drawn_in[0].name.startswith(f"cxr_tune-report-{os.getpid()}-")  # named so that the report after a kill removes it
    assert list(tmp_path.iterdir()) == []


def _saved_figures(monkeypatch) -> list:
    """Every figure the report saves, kept (laid out, not rendered to a PNG: what is read here is its text)."""
    from matplotlib.figure import Figure

    figures = []
    monkeypatch.setattr(Figure, "savefig", lambda fig, *args, **kwargs: figures.append(fig))
    return figures


def test_roc_and_confusion_show_the_exported_models_threshold_not_the_search_trials(tmp_path, monkeypatch):
    """A final fit exported at 0.9128 while roc.png and confusion.png showed search trial 5a4e909c at its own 0.775 as
    "the chosen threshold": a reader took the trial's sensitivity and specificity for the model's."""
    import pandas as pd

    labels = [0, 0, 0, 0, 1, 1, 1, 1]
    trial = pd.DataFrame({"label": labels, "score": [0.1, 0.3, 0.8, 0.85, 0.5, 0.78, 0.9, 0.95]})
    best = pd.DataFrame({"label": labels, "probability": [0.2, 0.4, 0.85, 0.95, 0.6, 0.93, 0.92, 0.97]})
    selected = pd.Series({"trial_id": "5a4e909c", "ext_threshold": 0.775})
    figures = _saved_figures(monkeypatch)
    notes = report._decision_plots(tmp_path, {"threshold": 0.9128}, best, selected, trial, "ext")
    roc, confusion = figures
    assert "threshold 0.9128" in [t.get_text() for t in roc.axes[0].get_legend().get_texts()]
    assert roc.axes[0].get_title().startswith("Exported model (best/)")
    assert confusion.axes[0].get_title() == "Exported model (best/)\nexternal validation (selection set) at threshold 0.9128"
    assert [[t.get_text() for t in confusion.axes[0].texts]] == [["3", "1", "1", "3"]]  # at 0.9128: one false positive, one false negative
    assert notes["roc"] is None and notes["roc_caption"] == ("Exported model (`best/`, what predict runs): ROC curve on external validation "
                                                         "(selection set) and its decision threshold 0.9128.")


def test_without_the_exported_models_scores_roc_and_confusion_say_they_show_the_search_trial_at_its_own_threshold(tmp_path, monkeypatch):
    import pandas as pd

    trial = pd.DataFrame({"label": [0, 0, 1, 1], "score": [0.1, 0.8, 0.7, 0.9]})
    selected = pd.Series({"trial_id": "5a4e909c", "ext_threshold": 0.775})
    figures = _saved_figures(monkeypatch)
    notes = report._decision_plots(tmp_path, {"threshold": 0.9128}, None, selected, trial, "ext")
    assert [fig.axes[0].get_title().split("\n")[0] for fig in figures] == ["Search trial 5a4e909c (not the exported model)"] * 2
    assert "threshold 0.7750" in [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert notes["confusion_caption"] == ("Selected search trial `5a4e909c`: confusion matrix on external validation (selection set) at its own threshold "
                                         "0.7750 (not the exported model's 0.9128: `best/` holds no scores on external validation).")


def _report_text(exported: dict | None = None, *, prefix: str = "ext", unfinished: str = "", trial: dict | None = None,
                 others: tuple[dict, ...] = (), select: str = "balanced_accuracy", drawn: bool = False, **info) -> str:
    """report.md for a one-trial experiment with an external set and a test split, every plot replaced by a note (``drawn``:
    every plot drawn, the exported model's too); ``trial``: its trial table row's values that differ; ``others``: more trials,
    each the values that differ from that row's."""
    import pandas as pd

    options = types.SimpleNamespace(name="tiny", select=select, min_sensitivity=0.0, data=types.SimpleNamespace(val_fraction=0.15, split_seed=0))
    info = {"synthetic": False, "data_description": "chest_xray", "command": "python -m cxr_tune.search", "space_path": "smoke.yaml",
            "class_counts_train": [108, 348], "class_counts_val": [20, 61], "external": "/site", "class_counts_external": [22, 78],
            "has_test": True, "class_counts_test": [20, 43], **info}
    metrics = {f"{p}_{m}": 0.7 for p in ("val", "ext") for m in ("auc", "sensitivity", "specificity", "balanced_accuracy", "threshold", "loss")}
    row = {"trial_id": "a", "rank": 1, "tied": True, "stop_reason": "completed", "status": "TERMINATED", "best_epoch": 1,
           "epochs": 2, "objective": 0.7, **metrics, **(trial or {})}
    table = pd.DataFrame([row, *({**row, **other} for other in others)])
    notes = {key: None if drawn else "no plot" for key in ("progress", "importances", "pareto", "transfer", "roc", "confusion", "learning")}
    notes |= {"roc_caption": "roc", "confusion_caption": "confusion"}
    notes |= {key: None for key in ("reliability", "operating_points", "saliency")} if drawn else {}
    return report._markdown(info, options, table, table.iloc[0], prefix, exported, notes, [], [], "/runs/tiny/best", unfinished)


def test_the_report_gives_the_test_splits_size_where_it_gives_the_other_sets(tmp_path):
    """Its header counted training, carved validation and the external set (637 images of 700): the 63 test images were
    only in the model card and splits.csv."""
    [line] = [line for line in _report_text().splitlines() if line.startswith("- Distinct images:")]
    assert "held-out test 20 NORMAL, 43 PNEUMONIA" in line
    assert "held-out test" not in _report_text(has_test=False, class_counts_test=[0, 0])


def test_every_plot_that_shows_the_selection_set_says_so(tmp_path, monkeypatch):
    """The tables said "external validation (selection set)"; roc.png said "external validation (AUC 0.7343)", confusion.png
    "External validation at threshold 0.717", and the learning curves, Pareto front, progress and transfer plots likewise:
    a plot copied on its own lost it."""
    import pandas as pd

    from cxr_tune.search.transfer import plot_transfer

    selected = pd.Series({"trial_id": "a", "ext_threshold": 0.5, "ext_sensitivity": 0.8, "ext_specificity": 0.7})
    table = pd.DataFrame({"trial_id": ["a", "b", "c"], "rank": [1, 2, 3], "tied": [True, False, False], "ext_sensitivity": [0.8, 0.9, 0.6],
                          "ext_specificity": [0.7, 0.5, 0.8], "val_auc": [0.7, 0.8, 0.6], "ext_auc": [0.8, 0.6, 0.7],
                          "val_balanced_accuracy": [0.7, 0.6, 0.65], "ext_balanced_accuracy": [0.75, 0.6, 0.7]})
    history = pd.DataFrame({"epoch": [1, 2], "train_loss": [0.6, 0.5], **{f"{p}_{m}": [0.6, 0.7] for p in ("val", "ext")
                                                                          for m in ("loss", "auc", "balanced_accuracy")}})
    figures = _saved_figures(monkeypatch)
    report._decision_plots(tmp_path, None, None, selected, pd.DataFrame({"label": [0, 0, 1, 1], "score": [0.1, 0.6, 0.4, 0.9]}), "ext")
    report._plot_pareto(tmp_path / "pareto.png", table, selected, "ext")
    report._plot_learning(tmp_path / "learning.png", history, "ext")
    report._plot_progress(tmp_path / "progress.png", {"a": pd.DataFrame({"epoch": [1, 2], "objective": [0.5, 0.6], "timestamp": [0.0, 60.0]})},
                          "balanced accuracy on external validation")
    plot_transfer(tmp_path / "transfer.png", table, "external")
    named = []
    for fig in figures:
        texts = []  # transfer.png's suptitle, "Carved validation vs external set", names both sets, not a number on one
        for ax in fig.axes:
            texts += [ax.title, ax.xaxis.label, ax.yaxis.label, *(ax.get_legend().get_texts() if ax.get_legend() else [])]
        named += [" ".join(text.get_text().split()) for text in texts if "external" in text.get_text().lower()]
    assert len(figures) == 6 and len(named) >= 6
    assert [text for text in named if "(selection set)" not in text] == []


def test_the_selected_trials_table_labels_the_set_that_chose_as_the_export_table_does():
    """Its row said just "external validation" above the export table's "external validation (selection set)"; under carved
    selection its carved validation row was unlabelled too."""
    def rows(text: str) -> list[str]:
        start = text.index("## Selected trial")
        return [line.split("|")[1].strip() for line in text[start:].splitlines()[6:8]]

    assert rows(_report_text()) == ["carved validation", "external validation (selection set)"]
    assert rows(_report_text(prefix="val")) == ["carved validation (selection set)", "external validation"]


def test_the_selected_trials_table_gives_the_criterion_that_chose_it():
    """--select youden: the table gave auc, sensitivity, specificity and balanced accuracy, not the youden value that chose the trial."""
    def header(text: str) -> list[str]:
        start = text.index("## Selected trial")
        return [cell.strip() for cell in text[start:].splitlines()[4].split("|")[1:-1]]

    assert header(_report_text()) == ["set", "auc", "sensitivity", "specificity", "balanced_accuracy", "threshold", "loss"]
    youden = _report_text(select="youden", trial={"val_youden": 0.41, "ext_youden": 0.52})
    assert header(youden) == ["set", "auc", "sensitivity", "specificity", "balanced_accuracy", "youden", "threshold", "loss"]
    start = youden.index("## Selected trial")
    assert [line.split("|")[6].strip() for line in youden[start:].splitlines()[6:8]] == ["0.4100", "0.5200"]


def test_the_learning_curves_read_on_their_own(tmp_path, monkeypatch):
    """No y-axis labels; blue was train loss on the left and carved AUC on the right, orange carved validation on both
    and red the external balanced accuracy alone; no mark of the epoch exported; and "each at its own threshold" over AUC."""
    import pandas as pd

    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.6, 0.5, 0.45], **{f"{p}_{m}": [0.6, 0.7, 0.65] for p in ("val", "ext")
                                                                                  for m in ("loss", "auc", "balanced_accuracy")}})
    figures = _saved_figures(monkeypatch)
    report._plot_learning(tmp_path / "learning.png", history, "ext", (2, "best epoch 2 (selected, exported)"))
    left, right = figures[0].axes
    assert left.get_ylabel() and right.get_ylabel()
    assert right.get_title() == "AUC, and balanced accuracy at\na threshold chosen on each set"  # AUC needs no threshold
    colours = {}
    for ax in (left, right):
        for line in ax.get_lines():
            if line.get_label().startswith("best epoch 2"):
                assert list(line.get_xdata()) == [2, 2]  # a vertical line at the epoch, on both panels
                colours.setdefault("mark", []).append(ax)
            for name in ("carved validation", "external validation"):
                if line.get_label().startswith(name):
                    colours.setdefault(name, set()).add(line.get_color())
    assert colours["mark"] == [left, right]
    assert [len(colours[name]) for name in ("carved validation", "external validation")] == [1, 1]  # one colour per set, both panels
    assert colours["carved validation"] != colours["external validation"]
    assert [t.get_text() for t in right.get_legend().get_texts()][-1] == "best epoch 2 (selected, exported)"


def test_a_newcomer_reads_what_the_threshold_means_where_the_card_is_and_what_to_run_next():
    """The report gave "Decision threshold 0.7166 (middle (logit scale) of ...)" and no more: not which side of it is
    PNEUMONIA, not what "middle (logit scale)" means, no word of best/MODEL_CARD.md, and nothing on scoring the model
    on a withheld labelled folder."""
    rates = {"n": 100, "auc": 0.73, "sensitivity": 0.88, "specificity": 0.64, "balanced_accuracy": 0.76, "accuracy": 0.83}
    exported = {"members": [{"trial_id": "a", "epoch": 1}], "threshold": 0.7166,
                "threshold_rule": "middle (logit scale) of the thresholds within 0.005 of the best balanced_accuracy on the external validation set",
                "validation": {**rates, "selection_set": False}, "external": {**rates, "selection_set": True}}
    text = " ".join(_report_text(exported).split())
    assert ("An image whose probability of PNEUMONIA is 0.7166 or more is called PNEUMONIA, one below it NORMAL") in text
    assert "middle (logit scale: halfway between the range's ends in log-odds, log(p / (1 - p)))" in text
    assert "`/runs/tiny/best/MODEL_CARD.md`" in text
    assert "`python -m cxr_tune.predict --model /runs/tiny/best LABELLED_FOLDER --quiet --metrics metrics.json`" in text
    assert "`python -m cxr_tune.compare --model /runs/tiny/best --model OTHER_MODEL LABELLED_FOLDER`" in text


def test_every_image_in_the_report_has_an_alt_text_saying_what_it_shows():
    """The alt texts were one word or two ("![reliability](plots/reliability.png)", "![learning](...)"): a screen reader,
    or a viewer that cannot load the image, said no more than that."""
    rates = {"n": 100, "auc": 0.73, "sensitivity": 0.88, "specificity": 0.64, "balanced_accuracy": 0.76, "accuracy": 0.83,
             "calibration": {"ece": 0.05, "brier": 0.12, "bins": 10}}
    exported = {"members": [{"trial_id": "a", "epoch": 1}], "threshold": 0.7166, "threshold_rule": "best balanced_accuracy",
                "validation": {**rates, "selection_set": False}, "external": {**rates, "selection_set": True}}
    images = re.findall(r"!\[([^\]]*)\]\(([^)]*)\)", _report_text(exported, drawn=True))
    assert {path for _, path in images} == {f"plots/{name}.png" for name in ("progress", "importances", "pareto", "transfer", "roc", "confusion",
                                                                            "learning_curves", "reliability", "operating_points", "saliency")}
    assert all(len(alt.split()) >= 6 and alt.endswith(".") for alt, _ in images), images


def test_the_progress_plot_marks_the_selected_trial(tmp_path, monkeypatch):
    """The best-so-far line ended at another trial's 0.9282, and nothing showed that 5a4e909c (0.9179, tied, higher AUC) was selected."""
    import pandas as pd

    figures = _saved_figures(monkeypatch)
    histories = {"5a4e909c": pd.DataFrame({"epoch": [1, 2], "objective": [0.90, 0.9179], "timestamp": [0.0, 60.0]}),
                 "b": pd.DataFrame({"epoch": [1, 2], "objective": [0.91, 0.9282], "timestamp": [30.0, 90.0]})}
    report._plot_progress(tmp_path / "progress.png", histories, "balanced accuracy on external validation", ("5a4e909c", 2))
    ax = figures[0].axes[0]
    [legend] = [t.get_text() for t in ax.get_legend().get_texts() if t.get_text().startswith("selected")]
    [star] = [c for c in ax.collections if c.get_label() == legend]
    assert legend == "selected: trial 5a4e909c, best epoch 2" and star.get_offsets().tolist() == [[60.0, 0.9179]]  # seconds: a 90-second search


def test_no_plot_of_the_report_cuts_off_its_title_or_labels(tmp_path, monkeypatch):
    """confusion.png, 4.5 inches wide, was saved at that width under a longer title: "external validation (selection set) at
    threshold 0." lost the threshold it exists to show. Every saved PNG must hold everything its figure draws."""
    import pandas as pd
    from matplotlib.figure import Figure
    from PIL import Image

    from cxr_tune.calibration import plot_reliability
    from cxr_tune.search.transfer import plot_transfer

    saved, save = [], Figure.savefig  # each PNG with what its figure draws (every title, label, tick and legend), in inches
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, *args, **kwargs: (save(fig, path, *args, **kwargs),
                                                                            saved.append((path, kwargs["dpi"], fig.get_tightbbox()))))
    labels, scores = [0, 0, 0, 1, 1, 1], [0.1, 0.4, 0.6, 0.3, 0.7, 0.9]
    predictions = pd.DataFrame({"label": labels, "score": scores, "probability": scores})
    who = "Search trial 5a4e909c (not the exported model)"
    report._plot_confusion(tmp_path / "confusion.png", predictions, 0.9128, "external validation (selection set)", who)
    report._plot_roc(tmp_path / "roc.png", predictions, 0.9128, "external validation (selection set)", who)
    table = pd.DataFrame({"trial_id": ["a", "b"], "rank": [1, 2], "tied": True, "ext_sensitivity": [0.8, 0.9], "ext_specificity": [0.7, 0.5],
                          "val_auc": [0.7, 0.8], "ext_auc": [0.8, 0.6], "val_balanced_accuracy": [0.7, 0.6], "ext_balanced_accuracy": [0.75, 0.6]})
    report._plot_pareto(tmp_path / "pareto.png", table, table.iloc[0], "ext")
    plot_transfer(tmp_path / "transfer.png", table, "external")
    plot_reliability(tmp_path / "reliability.png", {"external validation (selection set)": {"predicted": [0.3, 0.7], "observed": [0.2, 0.8], "count": [5, 5]}})
    assert len(saved) == 5
    for path, dpi, drawn in saved:
        width, height = Image.open(path).size
        assert width / dpi >= drawn.width - 0.01 and height / dpi >= drawn.height - 0.01, (path.name, width / dpi, drawn.width)


def test_the_trial_tables_say_which_epoch_their_metrics_come_from():
    """"What transfers" and "Top N" gave `epochs` (8, the epochs run) beside metrics of the best epoch (7) and never said which."""
    text = _report_text(trial={"epochs": 8, "best_epoch": 7.0})  # a float column where a failed trial has none
    for heading in ("## What transfers", "## Top 1 trials"):
        lines = text[text.index(heading):].splitlines()
        header = next(line for line in lines if line.startswith("|"))
        cells = [[cell.strip() for cell in line.split("|")[1:-1]] for line in (header, lines[lines.index(header) + 2])]
        columns = dict(zip(*cells, strict=True))
        assert (columns["epochs"], columns.get("best_epoch")) == ("8", "7"), heading
        assert abs(cells[0].index("best_epoch") - cells[0].index("epochs")) == 1, heading  # side by side


def test_the_report_says_how_many_trials_were_tied_and_that_auc_ranked_them():
    """39 of 40 trials were tied on external balanced accuracy and AUC picked among them, yet the Pareto caption said only
    "the Pareto front and the selected trial": a reader saw the star off the front with no reason given."""
    import numpy as np

    others = ({"trial_id": "b", "rank": 2, "tied": True}, {"trial_id": "c", "rank": 3, "tied": False},
              {"trial_id": "d", "rank": np.nan, "tied": None, "status": "ERROR", "epochs": 0, "error": "out of memory"})
    text = " ".join(_report_text(others=others).split())
    said = ("1 of the 2 other trials ranked tied with the best (their 95 % intervals overlap its own), and the tied ones were ranked "
            "by AUC on external validation")  # others, as "1 other trial tied with it" counts them (it said "2 of the 3")
    [selection] = [line for line in text.split("- ") if line.startswith("Selection on")]
    assert said in selection
    assert f"the Pareto front and the selected trial. {said}: the selected trial has the highest AUC of them, so it need not lie on the front." in text
    alone = " ".join(_report_text(others=({"trial_id": "b", "rank": 2, "tied": False},)).split())
    assert "were tied with the best" not in alone and "the Pareto front and the selected trial.**" in alone


def test_a_failed_trial_is_left_out_of_top_n_and_its_section_names_its_traceback_file():
    """A failed trial sat in "Top 2 trials, in selection order" with a blank rank and tied <NA>, below the ranked one;
    the Failed trials section gave its error's last line and no file with the whole traceback."""
    import numpy as np

    failed = {"trial_id": "d", "rank": np.nan, "tied": None, "status": "ERROR", "epochs": 0, "error": "RuntimeError: out of memory"}
    text = _report_text(others=(failed,))
    top = text[text.index("## Top"):text.index("## Failed trials")]
    assert top.startswith("## Top 1 trials, in selection order") and "| d " not in top, top
    failures = text[text.index("## Failed trials"):].splitlines()
    [row] = [line for line in failures if line.startswith("| d ")]
    assert "RuntimeError: out of memory" in row and "`d/error.txt`" in row, row


def test_each_set_of_the_learning_curves_has_its_own_marker_and_line_style_in_colour_blind_safe_colours(tmp_path, monkeypatch):
    """Carved (C1) and external (C2) differed by colour alone, which protanopes and a greyscale print cannot tell apart,
    and train loss and external loss were both "-o"."""
    import pandas as pd
    from matplotlib import colors, style

    history = pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [0.6, 0.5, 0.45], **{f"{p}_{m}": [0.6, 0.7, 0.65] for p in ("val", "ext")
                                                                                  for m in ("loss", "auc", "balanced_accuracy")}})
    figures = _saved_figures(monkeypatch)
    report._plot_learning(tmp_path / "learning.png", history, "ext")
    left, right = figures[0].axes
    looks = {line.get_label(): (line.get_marker(), line.get_linestyle(), colors.to_hex(line.get_color())) for line in left.get_lines()}
    assert len(looks) == 3 and len({(marker, dash) for marker, dash, _ in looks.values()}) == 3  # apart without colour
    carved, external = (next(look for label, look in looks.items() if label.startswith(name)) for name in ("carved", "external"))
    assert len({marker for marker, _, _ in looks.values()}) == 3 and carved[:2] != external[:2] and carved[1] != external[1]
    safe = {colors.to_hex(c) for c in style.library["tableau-colorblind10"]["axes.prop_cycle"].by_key()["color"]}
    assert {colour for _, _, colour in looks.values()} <= safe
    shown = [(line.get_marker(), line.get_linestyle(), line.get_markerfacecolor()) for line in right.get_lines()]
    assert len(set(shown)) == len(shown) == 4  # each set's AUC and balanced accuracy apart without colour too


def test_each_operating_point_has_its_own_marker_with_a_black_edge(tmp_path, monkeypatch):
    """The points differed by colour alone and overlapped: in greyscale, which was which could not be read."""
    import pandas as pd

    figures = _saved_figures(monkeypatch)
    predictions = pd.DataFrame({"label": [0, 0, 0, 1, 1, 1], "probability": [0.1, 0.4, 0.72, 0.3, 0.75, 0.9]})
    names = ("balanced", "spec90", "spec95", "sens90", "sens95", "sens98")
    rates = {name: {"sensitivity": 0.5 + 0.08 * i, "specificity": 0.9 - 0.1 * i} for i, name in enumerate(names)}
    exported = {"operating_points": {name: {"threshold": 0.1 * (i + 1)} for i, name in enumerate(names)}, "validation": {"operating_points": rates}}
    report._plot_operating_points(tmp_path / "points.png", exported, predictions, "validation")
    points = [c for c in figures[0].axes[0].collections if len(c.get_offsets()) == 1]
    shapes = {tuple(map(tuple, c.get_paths()[0].vertices.round(3))) for c in points}
    assert len(points) == len(shapes) == 6
    assert all(tuple(c.get_edgecolor()[0][:3]) == (0.0, 0.0, 0.0) for c in points)
    assert len(figures[0].axes[0].get_legend().get_texts()) == 7  # the curve and each point


def test_a_search_of_under_two_minutes_plots_its_progress_in_seconds(tmp_path, monkeypatch):
    """A 1-minute search's axis read "minutes since the first result" from 0.0000 to 0.0175."""
    import pandas as pd

    figures = _saved_figures(monkeypatch)
    for span in (65.0, 600.0):
        report._plot_progress(tmp_path / "progress.png", {"a": pd.DataFrame({"epoch": [1, 2], "objective": [0.5, 0.6], "timestamp": [0.0, span]})}, "AUC")
    (short, long) = (figure.axes[0] for figure in figures)
    assert short.get_xlabel() == "seconds since the first result" and max(short.collections[0].get_offsets()[:, 0]) == 65.0
    assert long.get_xlabel() == "minutes since the first result" and max(long.collections[0].get_offsets()[:, 0]) == 10.0


def test_the_selected_trial_s_line_says_no_other_trial_tied_when_none_did():
    """"0 other trial(s) tied with it." under a selected trial that nothing tied with."""
    assert "Best epoch 1 of 2; no other trial tied with it." in _report_text(others=({"trial_id": "b", "rank": 2, "tied": False},))
    assert "Best epoch 1 of 2; 1 other trial tied with it." in _report_text(others=({"trial_id": "b", "rank": 2, "tied": True},))


def test_the_report_gives_a_command_that_reruns_the_search_into_a_new_experiment():
    """Before: only the saved command, which a rerun as written refused (its --name exists) and whose ``python`` needed the venv."""
    text = _report_text(command="python -m cxr_tune.search --name tiny --storage runs", command_cwd="/home/me",
                        options={"name": "tiny", "storage": "runs"}, trial_resources={"workers": 1, "threads": 4, "gpus_per_worker": 0.0})
    assert "- Command: `cd /home/me && python -m cxr_tune.search --name tiny --storage runs`" in text
    assert ("- To rerun it (with the project's .venv active; a new experiment, `runs/tiny-repro`): "
            "`cd /home/me && python -m cxr_tune.search --name tiny-repro --storage runs`. Bit for bit only on the same machine with the same "
            "image cache and thread count: this search ran 4 torch thread(s) per trial") in text
