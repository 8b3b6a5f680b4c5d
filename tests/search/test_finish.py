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


def _experiment_of(table: pd.DataFrame, folder, ranked_on: str | None = None) -> types.SimpleNamespace:
    """An experiment in ``folder`` whose trials are ``table``: ranked on the ``ranked_on`` set when asked,
    or, without one, never asked for ranked (nothing reported: ranking would raise before the table is written)."""
    from cxr_tune.experiment import ranked_table

    def trials(*, ranked: bool = True) -> pd.DataFrame:
        assert not ranked or ranked_on, "nothing reported: ranking would raise before the table is written"
        return ranked_table(table, ranked_on) if ranked else table

    return types.SimpleNamespace(path=str(folder), trials=trials, file=lambda *parts: str(folder.joinpath(*parts)))


def test_the_dashboards_install_hint_works_outside_a_checkout(monkeypatch):
    """It said pip install -e '.[dashboard]', which fails anywhere but in a checkout (an install from the wheel)."""
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "optuna_dashboard" else find_spec(name, *args))
    line = finish.dashboard_command(types.SimpleNamespace(study_path="/results/s1/study.db"))
    assert line == "optuna-dashboard sqlite:////results/s1/study.db   (pip install 'cxr_tune[dashboard]' once)"
