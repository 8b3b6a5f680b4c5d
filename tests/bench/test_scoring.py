"""The scoring benchmark's summary: each way's medians against the loop before, and whether all runs agreed."""

from __future__ import annotations

import pandas as pd

from cxr_tune.bench.scoring import summary, ways
from cxr_tune.train.hparams import HParams


def frame(aucs_of_last: list[float]) -> pd.DataFrame:
    names = list(ways())
    order = [*names, *reversed(names)]
    seconds = {names[0]: (2.0, 6.0), names[1]: (1.8, 5.8), names[2]: (1.5, 5.5), names[3]: (1.0, 5.0)}
    return pd.DataFrame([{"run": i + 1, "way": way, "score_s": seconds[way][0], "epoch_s": seconds[way][1], "scored": 40,
                          "aucs": [0.9, aucs_of_last[i]]} for i, way in enumerate(order)])


def test_the_loop_now_is_compared_with_the_loop_before_and_the_aucs_must_agree():
    lines = "\n".join(summary(frame([0.95] * 8), HParams(image_size=64), images=100, epochs=4, cpus=1.0, data="d"))
    assert list(ways())[0] == "batch 256, streamed" and list(ways())[-1] == "batch 32, kept"
    assert "scoring **0.50**, epoch **0.83** (1.000 s saved per epoch)" in lines
    assert "40 images scored every epoch" in lines and "all 8 runs: yes" in lines
    assert "all 8 runs: NO" in "\n".join(summary(frame([0.95] * 7 + [0.96]), HParams(image_size=64), images=100, epochs=4, cpus=1.0, data="d"))


def test_the_summary_names_the_data_it_ran_on():
    """A run on a SYNTHETIC folder read as the committed real-data result: nothing named the data."""
    data = "SYNTHETIC chest X-rays (generated, not real patients) at /d/syn; external set: `/d/syn/val`"
    lines = summary(frame([0.95] * 8), HParams(image_size=64), images=100, epochs=4, cpus=1.0, data=data)
    assert lines[0].startswith(f"Data: {data}.")
