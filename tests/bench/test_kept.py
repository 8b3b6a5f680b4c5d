"""A benchmark's finished runs survive Ctrl-C and a crash; the same command again trains only the rest, another command none of them."""

from __future__ import annotations

import pytest

from cxr_tune.bench.external_scoring import train_external_scores
from cxr_tune.bench.kept import KeptRuns, kept_runs

PLAN = {"experiment": "results/real/external", "runs": [{"member": "a", "epochs": 32}, {"member": "b", "epochs": 32}]}


def test_ctrl_c_keeps_the_finished_runs_for_the_same_command_and_only_for_it(capsys):
    with pytest.raises(KeyboardInterrupt), kept_runs("epochs", PLAN) as kept:
        kept.put("run0", {"scores": {"h1": 0.25, "h2": 0.75}, "cpu_minutes": 6.5})
        (kept.folder / "train" / "run1" / "checkpoint_1").mkdir(parents=True)  # run1 was training
        raise KeyboardInterrupt
    assert f"Stopped; 1 finished run(s) are kept in {kept.folder}: the same command again trains only the rest" in capsys.readouterr().out

    with kept_runs("epochs", PLAN) as again:
        assert again.folder == kept.folder and again.names() == ["run0"] and again.has("run0") and not again.has("run1")
        # A kept run comes back as it was, and nothing trains it (no experiment, no Ray, no datasets here).
        scores, minutes, earlier = train_external_scores(None, None, {}, (0, 0), 2.0, again, "run0")
        assert scores.to_dict() == {"h1": 0.25, "h2": 0.75} and minutes == 6.5 and earlier
        # The interrupted run starts again from its first epoch (Train would resume from its checkpoint): one measured piece.
        assert again.fresh("run1") == str(kept.folder / "train") and not (kept.folder / "train" / "run1").exists()
    assert f"1 finished run(s) kept by an earlier try of this command ({kept.folder}): not trained again" in capsys.readouterr().out

    other = KeptRuns.for_plan("epochs", {**PLAN, "experiment": "results/real/carved"})
    assert other.folder != kept.folder and other.names() == [] and KeptRuns.for_plan("value", PLAN).folder != kept.folder
    again.remove()  # the result was written: run again, the benchmark measures again
    assert KeptRuns.for_plan("epochs", PLAN).names() == [] and not kept.folder.exists()


def test_a_crash_keeps_the_finished_runs_too(capsys):
    with pytest.raises(RuntimeError), kept_runs("ablation", PLAN) as kept:
        kept.put("selected_configuration", {"run": "selected configuration", "best epoch": 3})
        raise RuntimeError("a worker died")
    assert f"Failed; 1 finished run(s) are kept in {kept.folder}" in capsys.readouterr().out
    assert kept.get("selected_configuration") == {"run": "selected configuration", "best epoch": 3}
    kept.remove()
