"""The end of a search: a search whose every trial failed leaves its table, and says why in one line."""

from __future__ import annotations

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
