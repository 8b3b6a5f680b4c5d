"""bench replay: early-stopping rules replayed on full learning curves (no Ray started, nothing trained)."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from cxr_tune.bench import replay
from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from cxr_tune.search.space import SearchSettings
from tests.conftest import ROOT, call_cli, table_rows

SETTINGS = SearchSettings(max_epochs=9, grace_period=1, reduction_factor=3)
RUNGS = (1, 3)


def curves(qualities: list[float], epochs: int = 9) -> list[replay.Curve]:
    """One trial per quality, started in list order; each learns a little every epoch (10 s each)."""
    return [replay.Curve(f"t{i:02d}", float(i), pd.DataFrame({
        "epoch": range(1, epochs + 1), "objective": [q + 0.01 * e for e in range(1, epochs + 1)],
        "auc": [q + 0.05 + 0.01 * e for e in range(1, epochs + 1)], "elapsed": [10.0 * e for e in range(1, epochs + 1)]}))
        for i, q in enumerate(qualities)]


def test_synchronous_halving_keeps_the_best_third_at_each_rung():
    trials = curves([0.5, 0.8, 0.6, 0.7, 0.55, 0.65, 0.75, 0.52, 0.58])
    row = replay.summarize(replay.synchronous_halving(trials, RUNGS, 9, 3), trials, 81, 9)
    assert row["trial_epochs"] == 9 * 1 + 3 * 2 + 1 * 6  # 9 reach epoch 1, 3 epoch 3, 1 the end
    assert row["trials_to_the_end"] == 1 and row["best_trial"] == "t01 @ 9" and row["best_objective"] == pytest.approx(0.89)


def test_asynchronous_rules_let_improving_proposals_through_and_stop_worse_ones():
    """Why TPE + ASHA saves less than halving promises: when each new trial is at least as good as
    the ones before it (as TPE's proposals tend to be), no asynchronous cutoff stops it."""
    improving = curves([0.5 + 0.02 * i for i in range(9)])
    for rule in (replay.ray_asha(improving, 1, 9, SETTINGS), replay.optuna_halving(improving, 1, 9, SETTINGS)):
        assert replay.summarize(rule, improving, 81, 9)["trial_epochs"] == 81, rule.rule
    worsening = curves([0.7 - 0.02 * i for i in range(9)])
    for rule in (replay.ray_asha(worsening, 1, 9, SETTINGS), replay.optuna_halving(worsening, 1, 9, SETTINGS)):
        row = replay.summarize(rule, worsening, 81, 9)
        assert row["trials_to_the_end"] == 1 and row["trial_epochs"] == 9 + 8 and row["best_trial"] == "t00 @ 9", rule.rule


def test_slots_set_the_order_results_arrive_and_the_simulated_minutes():
    trials = curves([0.6, 0.6, 0.6, 0.6], epochs=3)
    assert replay.slots_of(trials) == 4  # started a second apart, each 30 s long: all overlap
    one, two = (replay.simulate(trials, slots, "all", lambda t: t, lambda *_: False) for slots in (1, 2))
    assert one.minutes == pytest.approx(4 * 30 / 60) and two.minutes == pytest.approx(2 * 30 / 60)
    assert one.order[:3] == [("t00", 1), ("t00", 2), ("t00", 3)] and two.order[:2] == [("t00", 1), ("t01", 1)]
    assert replay.anytime(one, trials).iloc[-1] == pytest.approx(0.63) and len(replay.anytime(one, trials)) == 12


def test_replay_writes_its_table_and_plot_for_a_search_run_to_the_end(tmp_path, monkeypatch):
    folder = tmp_path / "random-full"
    folder.mkdir()
    info = json.loads((ROOT / "results/real/external/experiment.json").read_text())
    info["options"].update(sampler="random", early_stopping=False, space="bench", name="random-full")
    (folder / "experiment.json").write_text(json.dumps(info))
    shutil.copy(ROOT / "search_spaces/bench.yaml", folder / "space.yaml")
    histories = {c.trial_id: pd.DataFrame({"epoch": c.epochs["epoch"], "objective": c.epochs["objective"], "ext_auc": c.epochs["auc"],
                                           "time_total_s": c.epochs["elapsed"], "timestamp": c.start + c.epochs["elapsed"]})
                 for c in curves([0.5, 0.8, 0.6, 0.7, 0.55, 0.65])}
    monkeypatch.setattr(Experiment, "histories", lambda self: ([], histories))
    out = replay.run(str(folder), folder=tmp_path / "out")  # a folder that does not exist yet
    text = out.read_text()
    for rule in ("none (as the search ran)", "Ray's asynchronous ASHA", "Optuna's asynchronous", "synchronous successive halving"):
        assert rule in text
    assert "selection set" in text
    assert "best_auc (of any epoch run)" in table_rows(text)[0]  # not bench search's best AUC, taken at each trial's best epoch
    assert "trial minutes" in table_rows(text)[0] and "first trial's start to the last report" in text  # not bench search's command minutes
    assert (tmp_path / "out" / "search_stopping_replay_external_6trials.png").read_bytes()[:4] == b"\x89PNG"
    record = json.loads((tmp_path / "out" / "search_stopping_replay_external_6trials.json").read_text())
    assert record["minutes_clock"].startswith("trial minutes") and "minutes" in record["rows"][0]  # the key kept, its clock named
    assert [r["trial_epochs"] for r in record["rows"]][0] == 54 and record["rows"][-1]["trial_epochs"] == 6 + 2 * 2 + 6

    # Another seed's search (bench search --seed 1) gets files of its own beside seed 0's, never over them.
    info["options"]["seed"] = 1
    (folder / "experiment.json").write_text(json.dumps(info))
    assert replay.run(str(folder), folder=tmp_path / "out") == tmp_path / "out" / "search_stopping_replay_external_6trials_seed1.md"
    assert (tmp_path / "out" / "search_stopping_replay_external_6trials.md").read_text() == text


def test_replay_refuses_a_search_that_stopped_trials_early_in_one_line(tmp_path):
    asha = call_cli("cxr_tune.bench", "replay", "results/real/external")
    assert asha.returncode == 2 and "--no-early-stopping" in asha.stderr and "Traceback" not in asha.stderr
    nothing = call_cli("cxr_tune.bench", "replay", str(tmp_path))
    assert nothing.returncode == 2 and str(tmp_path) in nothing.stderr and len(nothing.stderr.strip().splitlines()) == 1


def test_a_diverged_epoch_is_never_the_replay_s_best():
    trials = curves([0.6, 0.7], epochs=2)
    trials[1].epochs["diverged"] = [False, True]
    trials[1].epochs.loc[1, ["objective", "auc"]] = [0.9, 0.9]  # NaN scores counted as 0.5 can still measure high
    row = replay.summarize(replay.full_run(trials), trials, 4, 2)
    assert row["best_trial"] == "t01 @ 1" and row["best_objective"] == pytest.approx(0.71)
    assert replay.anytime(replay.full_run(trials), trials).max() == pytest.approx(0.71)


def full_search(tmp_path, name: str, epochs: int = 9, **options) -> str:
    """An experiment folder of a random search run to the end (``options`` over results/real/external's)."""
    folder = tmp_path / name
    folder.mkdir()
    info = json.loads((ROOT / "results/real/external/experiment.json").read_text())
    info["options"].update(sampler="random", early_stopping=False, space="bench", name=name, max_epochs=epochs, **options)
    info["deciding_set"] = info["options"]["select_on"]  # as the search records it
    (folder / "experiment.json").write_text(json.dumps(info))
    shutil.copy(ROOT / "search_spaces/bench.yaml", folder / "space.yaml")
    return str(folder)


def histories_of(qualities: list[float], epochs: int = 9, prefix: str = "ext") -> dict[str, pd.DataFrame]:
    return {c.trial_id: pd.DataFrame({"epoch": c.epochs["epoch"], "objective": c.epochs["objective"], f"{prefix}_auc": c.epochs["auc"],
                                      "time_total_s": c.epochs["elapsed"], "timestamp": c.start + c.epochs["elapsed"]})
            for c in curves(qualities, epochs)}


def test_replay_names_the_searchs_own_criterion_and_says_when_no_rung_can_stop_a_trial(tmp_path, monkeypatch):
    """A --select youden search read "Objective: balanced accuracy" over Youden's J, and a 1-epoch one "Rungs at epochs , ..."."""
    monkeypatch.setattr(Experiment, "histories", lambda self: ([], histories_of([0.5, 0.6], epochs=1)))
    text = replay.run(full_search(tmp_path, "youden", epochs=1, select="youden"), folder=tmp_path / "out").read_text()
    assert "Objective: youden on external validation" in text and "balanced accuracy" not in text
    assert "Rungs at epochs ," not in text and "No rung before the last of 1 epoch(s)" in text


def test_replay_refuses_to_compare_a_search_that_selected_on_another_set_or_criterion(tmp_path, monkeypatch):
    """A carved-validation replay compared with an external-set search put external numbers in the carved column."""
    monkeypatch.setattr(Experiment, "histories", lambda self: ([], histories_of([0.5, 0.6, 0.7], prefix="val" if "carved" in str(self.path) else "ext")))
    carved = full_search(tmp_path, "carved", select_on="carved")
    for other in (full_search(tmp_path, "external"), full_search(tmp_path, "carved-youden", select_on="carved", select="youden")):
        with pytest.raises(UserError, match="its objective is .* the replayed search's is balanced accuracy on carved validation"):
            replay.run(carved, compare=other, folder=tmp_path / "out")
    text = replay.run(carved, compare=full_search(tmp_path, "carved-too", select_on="carved"), folder=tmp_path / "out").read_text()
    assert "ran: carved-too (random sampler, no early stopping, 3 trials)" in text


def test_identical_replay_curves_and_a_single_point_all_show_on_the_plot(tmp_path, monkeypatch):
    """Ray's ASHA hid behind Optuna's identical line, and a one-epoch replay drew an empty plot with four legend entries."""
    import matplotlib.colors
    import numpy as np
    from matplotlib.figure import Figure

    pixels, save = [], Figure.savefig

    def keep(fig, *args, **kwargs):
        save(fig, *args, **kwargs)
        fig.axes[0].get_legend().remove()  # what the curves themselves show
        fig.canvas.draw()
        pixels.append((np.asarray(fig.canvas.buffer_rgba())[..., :3], [matplotlib.colors.to_rgb(line.get_color()) for line in fig.axes[0].lines]))

    monkeypatch.setattr(Figure, "savefig", keep)
    same = pd.Series([0.6, 0.7, 0.7, 0.8], index=range(1, 5))
    replay.plot_anytime(tmp_path / "same.png", {"none": same, "ray": same, "optuna": same, "synchronous": same.iloc[:2]}, "same")
    replay.plot_anytime(tmp_path / "one.png", {"none": same.iloc[:1], "ray": same.iloc[:1], "optuna": same.iloc[:1]}, "one")
    for image, colours in pixels:
        for colour in colours:
            assert (np.abs(image.astype(int) - np.round(np.array(colour) * 255)).max(axis=-1) <= 30).sum() > 20, colour
