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

    class Failed:
        path = str(tmp_path)

        def trials(self, *, ranked: bool = True) -> pd.DataFrame:
            assert not ranked, "nothing reported: ranking would raise before the table is written"
            return table

        def file(self, *parts: str) -> str:
            return str(tmp_path.joinpath(*parts))

    monkeypatch.setattr(finish, "Experiment", lambda path: Failed())
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
    from cxr_tune.experiment import ranked_table

    table = pd.DataFrame({"trial_id": ["a", "b"], "status": ["TERMINATED"] * 2, "stop_reason": ["diverged"] * 2, "epochs": [1, 1],
                          "val_objective": [0.5, 0.5], "val_auc": [0.5, 0.5], "val_loss": [0.69, 0.69], "val_non_finite": [28, 28], "error": ["", ""]})

    class Diverged:
        path = str(tmp_path)

        def trials(self, *, ranked: bool = True) -> pd.DataFrame:
            return ranked_table(table, "carved") if ranked else table

        def file(self, *parts: str) -> str:
            return str(tmp_path.joinpath(*parts))

    monkeypatch.setattr(finish, "Experiment", lambda path: Diverged())
    with pytest.raises(UserError, match=r"all 2 trial\(s\) that reported diverged.*nothing to select.*trials\.csv$"):
        finish.finish_experiment(str(tmp_path))
    assert pd.read_csv(tmp_path / "trials.csv")["stop_reason"].tolist() == ["diverged", "diverged"]
