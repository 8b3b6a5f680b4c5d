"""The end of a search: a search whose every trial failed leaves its table, and says why in one line."""

from __future__ import annotations

import types

import pandas as pd
import pytest

from cxr_tune.errors import UserError
from cxr_tune.search import finish


def test_a_search_whose_every_trial_failed_writes_its_table_and_names_the_first_error(tmp_path, monkeypatch):
    table = pd.DataFrame({"trial_id": ["a", "b"], "status": ["ERROR", "ERROR"], "stop_reason": ["error", "error"], "epochs": [0, 0],
                          "error": ["Traceback (most recent call last):\n  ...\nRuntimeError: CUDA out of memory", "Traceback\nRuntimeError: same"]})
    monkeypatch.setattr(finish, "Experiment", lambda path: _experiment_of(table, tmp_path))
    with pytest.raises(UserError, match=r"no trial of \S+ trained an epoch.*trials\.csv \(the first: RuntimeError: CUDA out of memory\)"):
        finish.finish_experiment(str(tmp_path))
    assert pd.read_csv(tmp_path / "trials.csv")["trial_id"].tolist() == ["a", "b"]


def test_the_export_flags_best_model_json_records_are_read_back_and_a_damaged_file_records_none(tmp_path):
    import json

    from tests.conftest import ROOT

    meta = json.loads((ROOT / "results/real/best/model.json").read_text())
    meta["export_options"] = {"ensemble": 3, "val_data": None, "tta": 1, "calibrate": "platt", "final_fit": False}
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.json").write_text(json.dumps(meta))
    experiment = types.SimpleNamespace(file=lambda *parts: str(tmp_path.joinpath(*parts)))
    assert finish.recorded_export_options(experiment) == {"ensemble": 3, "calibrate": "platt"}
    (tmp_path / "best" / "model.json").write_text("[1, 2]")
    assert finish.recorded_export_options(experiment) == {}


def test_a_search_whose_every_trial_diverged_writes_its_table_and_selects_nothing(tmp_path, monkeypatch):
    table = pd.DataFrame({"trial_id": ["a", "b"], "status": ["TERMINATED"] * 2, "stop_reason": ["diverged"] * 2, "epochs": [1, 1],
                          "val_objective": [0.5, 0.5], "val_auc": [0.5, 0.5], "val_loss": [0.69, 0.69], "val_non_finite": [28, 28], "error": ["", ""]})
    monkeypatch.setattr(finish, "Experiment", lambda path: _experiment_of(table, tmp_path, ranked_on="carved"))
    with pytest.raises(UserError, match=r"all 2 trial\(s\) that reported diverged.*nothing to select.*trials\.csv$"):
        finish.finish_experiment(str(tmp_path))
    assert pd.read_csv(tmp_path / "trials.csv")["stop_reason"].tolist() == ["diverged", "diverged"]


def test_a_search_whose_only_trained_trial_then_failed_selects_nothing_and_says_it_failed(tmp_path, monkeypatch):
    """A trial that errored after 2 epochs is FAIL in the study: it is not exported (it was), and the one line says it failed."""
    table = pd.DataFrame({"trial_id": ["a"], "status": ["ERROR"], "stop_reason": ["error"], "epochs": [2], "val_objective": [0.9],
                          "val_auc": [0.95], "val_loss": [0.4], "error": ["RuntimeError: out of memory"]})
    monkeypatch.setattr(finish, "Experiment", lambda path: _experiment_of(table, tmp_path, ranked_on="carved"))
    with pytest.raises(finish.NothingToSelect, match=r"1 trial\(s\) reported a validation result and then failed; nothing to select.*trials\.csv$"):
        finish.finish_experiment(str(tmp_path))
    assert pd.read_csv(tmp_path / "trials.csv")["stop_reason"].tolist() == ["error"]


def test_the_study_records_the_selected_trial_and_what_its_values_measure(tmp_path, monkeypatch):
    """Before: study.best_trial (the highest value) was not the selected trial in 5 of 6 committed studies (a tie goes to
    the higher AUC), and nothing in study.db said which trial the search selected or what its values measure."""
    import optuna

    database = _two_trial_study(tmp_path, monkeypatch)
    finish.finish_experiment(str(tmp_path), export=False)

    study = optuna.load_study(study_name="exp", storage=f"sqlite:///{database}")
    assert study.best_trial.user_attrs["tune_trial_id"] == "b"  # tied with a, which has the higher AUC
    assert {key: study.user_attrs.get(key) for key in ("selected_trial", "metric", "deciding_set")} == {
        "selected_trial": "a", "metric": "balanced accuracy on carved validation", "deciding_set": "carved"}
    assert "can differ from study.best_trial" in study.user_attrs["selected_by"]
    assert study.metric_names == ["balanced accuracy on carved validation"]


def test_a_study_that_cannot_be_annotated_still_leaves_best_and_the_report_with_one_note(tmp_path, monkeypatch, capsys):
    """Before: the selection was written into study.db first, unguarded: a read-only study.db ("attempt to write a readonly
    database"), one another Optuna refuses, or a missing study name printed a traceback, and no best/ and no report were written."""
    import optuna

    from cxr_tune.search import report

    _two_trial_study(tmp_path, monkeypatch)
    done = []
    monkeypatch.setattr(finish, "export_best", lambda experiment: done.append("export"))
    monkeypatch.setattr(report, "write_report", lambda *args, **kwargs: done.append("report") or str(tmp_path / "report.md"))

    def readonly(*args, **kwargs):
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit. attempt to write a readonly database")

    monkeypatch.setattr(optuna.study.Study, "set_user_attr", readonly)
    capsys.readouterr()
    finish.finish_experiment(str(tmp_path))
    assert done == ["export", "report"]
    assert capsys.readouterr().err == (
        "Note: study.db not annotated with the selected trial: An exception is raised during the commit. attempt to write a readonly database\n")


def _two_trial_study(folder, monkeypatch) -> object:
    """A finished two-trial search in ``folder`` with its Optuna study (``folder/study.db``, returned) and no report
    written: b has the higher value, a ties with it and has the higher AUC, so a is selected."""
    import optuna

    from cxr_tune.experiment import Experiment
    from cxr_tune.search import report
    from cxr_tune.search.options import SearchOptions

    database = folder / "study.db"
    study = optuna.create_study(study_name="exp", storage=f"sqlite:///{database}", direction="maximize")
    for trial_id, value in (("a", 0.90), ("b", 0.91)):
        trial = study.ask()
        trial.set_user_attr("tune_trial_id", trial_id)
        study.tell(trial, value)
    table = pd.DataFrame({"trial_id": ["a", "b"], "status": ["TERMINATED"] * 2, "stop_reason": ["completed"] * 2, "epochs": [3, 3],
                          "best_epoch": [3, 2], "objective": [0.90, 0.91], "val_objective": [0.90, 0.91], "val_objective_low": [0.86, 0.87],
                          "val_objective_high": [0.94, 0.95], "val_auc": [0.99, 0.95], "val_loss": [0.3, 0.3], "error": ["", ""]})
    experiment = _experiment_of(table, folder, ranked_on="carved")
    experiment.options = SearchOptions(name="exp", storage=str(folder.parent))
    experiment.synthetic, experiment.deciding_set, experiment.study_path = False, "carved", str(database)
    experiment.study = lambda: Experiment.study(experiment)
    monkeypatch.setattr(finish, "Experiment", lambda path: experiment)
    monkeypatch.setattr(report, "write_report", lambda *args, **kwargs: str(folder / "report.md"))
    return database


def _experiment_of(table: pd.DataFrame, folder, ranked_on: str | None = None) -> types.SimpleNamespace:
    """An experiment in ``folder`` whose trials are ``table``: ranked on the ``ranked_on`` set when asked,
    or, without one, never asked for ranked (nothing reported: ranking would raise before the table is written)."""
    from cxr_tune.experiment import ranked_table

    def trials(*, ranked: bool = True) -> pd.DataFrame:
        assert not ranked or ranked_on, "nothing reported: ranking would raise before the table is written"
        return ranked_table(table, ranked_on) if ranked else table

    return types.SimpleNamespace(path=str(folder), trials=trials, file=lambda *parts: str(folder.joinpath(*parts)), external="")


def test_the_dashboards_install_hint_works_outside_a_checkout(monkeypatch):
    """It said pip install -e '.[dashboard]', which fails anywhere but in a checkout (an install from the wheel)."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "optuna_dashboard" else find_spec(name, *args))
    line = finish.dashboard_command(types.SimpleNamespace(study_path="/results/s1/study.db"))
    assert line == "optuna-dashboard sqlite:////results/s1/study.db   (pip install 'cxr_tune[dashboard]' once)"


@pytest.mark.parametrize(("counts", "asked", "left"), [
    ((0, 0, 1), 4, "0 of its 4 trials ended, 1 unfinished"),  # a search killed in its first trial
    ((3, 1, 0), 4, "3 of its 4 trials ended"),  # its time budget ended a trial before its first epoch: --resume runs it again
    ((4, 0, 0), 4, ""),
])
def test_report_only_on_an_unfinished_search_says_so_on_the_console_and_in_the_report(tmp_path, monkeypatch, counts, asked, left):
    """Before: ``--report-only`` on a search whose driver was killed printed "=== Search finished" and exited 0, and report.md
    said only "Trials: 1 (1 unfinished)": nothing said the search asked for 4 trials or that --resume continues it."""
    # Every module the command imports that binds Experiment at its import, imported before Experiment is replaced below:
    # one first imported under the replacement kept it for good (runner, in a later test of another file: order-dependent).
    from cxr_tune.search import finalfit, report, results, runner, timing  # noqa: F401
    from cxr_tune.search.options import SearchOptions
    from cxr_tune.search.results import TrialCounts
    from tests.conftest import call_cli

    table = pd.DataFrame({"trial_id": ["a"], "status": ["PENDING" if counts[2] else "TERMINATED"], "epochs": [2], "best_epoch": [2],
                          "stop_reason": ["unfinished" if counts[2] else "completed"], "val_objective": [0.7],
                          **{f"val_{m}": [0.7] for m in ("auc", "sensitivity", "specificity", "balanced_accuracy", "threshold")},
                          "val_loss": [0.6], "error": [""]})
    folder = tmp_path / "ro"
    folder.mkdir()
    experiment = _experiment_of(table, folder, ranked_on="carved")
    experiment.options = SearchOptions(name="ro", storage=str(tmp_path), final_fit=False)
    experiment.space = lambda: types.SimpleNamespace(settings=types.SimpleNamespace(trials=asked, final_fit_top=0))
    experiment.synthetic, experiment.deciding_set, experiment.study_path = False, "carved", str(folder / "study.db")
    monkeypatch.setattr("cxr_tune.experiment.Experiment", lambda path: experiment)
    monkeypatch.setattr(finish, "Experiment", lambda path: experiment)
    monkeypatch.setattr(results, "trial_counts", lambda path: TrialCounts(*counts))
    written = []
    monkeypatch.setattr(report, "write_report", lambda *args, unfinished="": written.append(unfinished) or str(folder / "report.md"))

    done = call_cli("cxr_tune.search", "--name", "ro", "--storage", str(tmp_path), "--report-only", "--no-export")
    assert done.returncode == 0, done.stderr
    resume = f"python -m cxr_tune.search --name ro --storage {tmp_path} --resume"
    if left:
        assert "=== Search interrupted (what follows is its best so far): 1 trials" in done.stdout and "Search finished" not in done.stdout
        assert done.stderr.rstrip().endswith(f"The search is unfinished ({left}); continue it with:\n  {resume}")
        assert written == [f"{left[0].upper()}{left[1:]}; what follows is its best so far. Continue it with `{resume}`."]
    else:
        assert "=== Search finished: 1 trials" in done.stdout and "unfinished" not in done.stdout and written == [""]


def test_an_unfinished_searchs_report_says_so_at_its_head():
    from tests.search.test_report import _report_text

    text = _report_text(unfinished="1 of its 4 trials ended; what follows is its best so far. Continue it with `python -m cxr_tune.search`.")
    assert text.splitlines()[2] == ("> **Unfinished search.** 1 of its 4 trials ended; what follows is its best so far. Continue it with "
                                    "`python -m cxr_tune.search`.")
    assert "Unfinished" not in _report_text()


def test_the_console_summary_gives_the_criterion_that_chose_the_trial(capsys):
    """--select youden: the summary gave balanced accuracy for each set, not the youden value that chose the trial."""
    row = {"trial_id": "a", "best_epoch": 2, "epochs": 3, "tied": True, "stop_reason": "completed",
           **{f"{p}_{m}": 0.7 for p in ("val", "ext") for m in ("auc", "sensitivity", "specificity", "balanced_accuracy", "youden", "threshold")}}
    table = pd.DataFrame([row])
    for select, shown in (("youden", True), ("balanced_accuracy", False)):
        experiment = types.SimpleNamespace(synthetic=False, deciding_set="external", options=types.SimpleNamespace(select=select))
        finish._print_summary(experiment, table, table.iloc[0])
        lines = [line for line in capsys.readouterr().out.splitlines() if "validation" in line and "AUC" in line]
        assert len(lines) == 2 and all(("youden 0.7000" in line) == shown for line in lines)


def test_the_console_summary_names_metrics_as_the_export_lines_do(capsys):
    """"carved validation: auc 0.8775, ..." where every other console line (export's, predict's) says "AUC"."""
    row = {"trial_id": "a", "best_epoch": 2, "epochs": 3, "tied": True, "stop_reason": "completed",
           **{f"val_{m}": 0.7 for m in ("auc", "sensitivity", "specificity", "balanced_accuracy", "threshold")}}
    table = pd.DataFrame([row])
    experiment = types.SimpleNamespace(synthetic=False, deciding_set="carved", options=types.SimpleNamespace(select="balanced_accuracy"))
    finish._print_summary(experiment, table, table.iloc[0])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("  carved validation: "))
    assert line == ("  carved validation: AUC 0.7000, sensitivity 0.7000, specificity 0.7000, balanced accuracy 0.7000, "
                    "threshold 0.7000")


def test_the_console_summary_of_a_synthetic_search_is_plain_ascii(capsys):
    """"[SYNTHETIC DATA — not real patients]": a console that prints ASCII only showed its em dash as "\\u2014"."""
    row = {"trial_id": "a", "best_epoch": 2, "epochs": 3, "tied": True, "stop_reason": "completed",
           **{f"val_{m}": 0.7 for m in ("auc", "sensitivity", "specificity", "balanced_accuracy", "threshold")}}
    table = pd.DataFrame([row])
    experiment = types.SimpleNamespace(synthetic=True, deciding_set="carved", options=types.SimpleNamespace(select="balanced_accuracy"))
    finish._print_summary(experiment, table, table.iloc[0])
    out = capsys.readouterr().out
    assert "[SYNTHETIC DATA - not real patients]" in out and out.isascii()


def test_the_console_summary_says_no_other_trial_tied_when_none_did(capsys):
    """"0 other trial(s) tied with it on carved validation, ties broken by AUC": a tie-break where nothing tied."""
    row = {"trial_id": "a", "best_epoch": 2, "epochs": 3, "tied": True, "stop_reason": "completed",
           **{f"val_{m}": 0.7 for m in ("auc", "sensitivity", "specificity", "balanced_accuracy", "threshold")}}
    experiment = types.SimpleNamespace(synthetic=False, deciding_set="carved", options=types.SimpleNamespace(select="balanced_accuracy"))
    alone = pd.DataFrame([row, {**row, "trial_id": "b", "tied": False}])
    finish._print_summary(experiment, alone, alone.iloc[0])
    assert "(best epoch 2 of 3; no other trial tied with it on carved validation; each set at a threshold chosen on it):" in capsys.readouterr().out
    tied = pd.DataFrame([row, {**row, "trial_id": "b"}, {**row, "trial_id": "c"}])
    finish._print_summary(experiment, tied, tied.iloc[0])
    assert "; 2 other trials tied with it on carved validation, ties broken by AUC; each set" in capsys.readouterr().out


def test_a_search_stopped_before_any_trial_trained_writes_the_columns_a_finished_one_does(tmp_path, monkeypatch):
    """Before: its trials.csv had the 19 columns Tune's state gave (ids, parameters, checkpoint, error, start), where a finished
    search's has 47: a pipeline that reads the table by column broke on the one a stop wrote. Now the same columns, blank."""
    # The header of a finished search on the smoke space (2 trials, no external set), as a reviewer's run wrote it.
    finished = ("trial_id,status,stop_reason,epochs,best_epoch,run_seconds,depth,filters_0,filters_1,filters_2,lr,dropout,class_weighting,"
                "image_size,batch_size,intensity,objective,objective_low,objective_high,val_objective,val_objective_low,val_objective_high,"
                "val_auc,val_sensitivity,val_specificity,val_balanced_accuracy,val_youden,val_gmean,val_min_sens_spec,val_threshold,"
                "val_loss,val_brier,val_accuracy,val_sensitivity_at_0.5,val_specificity_at_0.5,val_non_finite,train_loss,"
                "train_images_per_s,precision,channels_last,worker_nodes,worker_images,checkpoint_path,error,started,rank,tied").split(",")
    params = finished[6:16]
    table = pd.DataFrame({"trial_id": ["a", "b"], "status": ["PENDING", "PENDING"], **{p: [1, 2] for p in params},
                          "epochs": [0, 0], "best_epoch": [float("nan")] * 2, "run_seconds": [float("nan")] * 2,
                          "checkpoint_path": [None, None], "error": ["", ""], "stop_reason": ["unfinished"] * 2, "started": [1.0, 2.0]})
    monkeypatch.setattr(finish, "Experiment", lambda path: _experiment_of(table, tmp_path))
    with pytest.raises(finish.NothingToSelect, match=r"trained an epoch, so there is nothing to select or export; every trial: \S+trials\.csv$") as stopped:
        finish.finish_experiment(str(tmp_path), interrupted=True)
    assert stopped.value.untrained
    written = pd.read_csv(tmp_path / "trials.csv")
    assert list(written.columns) == finished
    assert written["trial_id"].tolist() == ["a", "b"] and written["val_auc"].isna().all() and written["rank"].isna().all()
    assert list(pd.read_parquet(tmp_path / "trials.parquet").columns) == finished
