"""Where a search's trial time went, from per-epoch records shaped like Tune's (Ray-free)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from cxr_tune.search.timing import time_section, time_split


def records(startup: float, epochs: list[tuple[float, float, float]], start_epoch: int = 0, gap: float = 0.1) -> pd.DataFrame:
    """A run's history: each epoch's (epoch, train, score) seconds; Tune's clock adds the start-up to the first."""
    return pd.DataFrame([{"epoch": start_epoch + i + 1, "start_epoch": start_epoch, "epoch_seconds": e, "train_seconds": tr, "score_seconds": sc,
                          "time_this_iter_s": e + (startup if i == 0 else gap)} for i, (e, tr, sc) in enumerate(epochs)])


def test_split_sums_and_medians_over_every_run():
    histories = {"a": records(9.0, [(6.0, 5.0, 0.5), (6.0, 5.0, 0.5)]), "b": records(7.0, [(4.0, 3.0, 0.5)]),
                 "c": records(5.0, [(4.0, 3.0, 0.5)], start_epoch=3), "never": pd.DataFrame()}
    split = time_split(histories)
    assert (split.runs, split.epochs) == (3, 4)
    assert sorted(split.startup_seconds) == pytest.approx([5.0, 7.0, 9.0])  # a resumed run's start-up counts too
    assert split.trial_seconds == pytest.approx(21.0 + 20.0 + 0.1)
    assert sum(split.parts["score_seconds"]) == pytest.approx(2.0)
    section = re.sub(r" +", " ", "\n".join(time_section(split, {"search": 1.5, "final fit": 0.0})))  # the table pads its columns
    assert "## Where the time went" in section and "search 1.5 min wall" in section and "final fit 0.0" not in section  # a stage that has not run
    assert "| 7.00 per run | 51 % |" in section  # start-up 21 of 41.1 trial-seconds
    assert "scoring carved validation and the external set | 0.50 per epoch" in section
    assert "the rest (gathering scores" in section and "its checkpoint, the report to Tune" in section
    assert "never ended" not in section
    killed = "\n".join(time_section(split, {"search": 1.5}, cut_short=1))
    assert "search 1.5 min wall, with 1 run(s) that never ended (killed or crashed) counted to their last record" in killed


def test_records_from_before_a_field_leave_its_row_out():
    old = records(9.0, [(6.0, 5.0, 0.5)]).drop(columns=["train_seconds", "score_seconds", "start_epoch"])
    section = "\n".join(time_section(time_split({"a": old}), {}))
    assert "9.00 per run" in section and "6.00 per epoch" in section
    assert "training" not in section and "scoring" not in section and "the rest" not in section
    assert time_split({"a": pd.DataFrame()}) is None and time_section(None, {}) == []
