"""The final fit's estimated time, which a whole-job budget (``--job-budget``) leaves free: it
follows the configurations the selection rule would hand the final fit now, and their own epoch times."""

from __future__ import annotations

import math
import time

import pytest

from cxr_tune.search.pace import FinalFitShape, TrialPace, cost_ratio, final_fit_seconds
from cxr_tune.selection import best_epoch

SHAPE = FinalFitShape(top=2, seeds=2, epochs=32, concurrency=2, deciding="external")  # 4 runs, 2 at a time: 2 rounds


def result(epoch: int, objective: float, seconds: float, size: int, auc: float = 0.9) -> dict:
    """One epoch's Tune result as the stopper gets it (the external set decides)."""
    return {"epoch": epoch, "objective": objective, "ext_objective": objective, "ext_auc": auc, "ext_loss": 0.3,
            "val_objective": 1.0, "val_auc": 1.0, "val_loss": 0.0, "epoch_seconds": seconds, "deciding_set": "external",
            "config": {"image_size": size, "lr": 1e-3}}


def pace(size: int, results: list[tuple[float, float]]) -> TrialPace:
    """A trial's pace from its (objective, epoch_seconds) epochs."""
    out = TrialPace()
    for epoch, (objective, seconds) in enumerate(results, start=1):
        out.add(result(epoch, objective, seconds, size))
    return out


def test_nothing_is_estimated_before_an_epoch_and_nothing_is_needed_without_a_final_fit():
    assert final_fit_seconds({}, SHAPE) is None
    assert final_fit_seconds({"a": TrialPace()}, SHAPE) is None  # started, no epoch reported yet
    assert final_fit_seconds({"a": pace(64, [(0.9, 10.0)])}, FinalFitShape(top=0, seeds=2, epochs=32, concurrency=2, deciding="external")) == 0.0


def test_the_estimate_follows_the_leaders_image_size():
    paces = {"small": pace(64, [(0.80, 10.0), (0.90, 10.0)]), "large": pace(96, [(0.85, 30.0)])}
    # the 64-px trial leads; the ensemble rule keeps only trials at its size: 1 configuration x 2 seeds, 2 at a time
    assert final_fit_seconds(paces, SHAPE) == pytest.approx(1 * 32 * 10.0)
    paces["large"].add(result(2, 0.95, 30.0, 96))
    assert final_fit_seconds(paces, SHAPE) == pytest.approx(1 * 32 * 30.0)  # now the 96-px one does
    paces["large"].add(result(2, 0.95, 30.0, 96))  # Tune repeats a trial's last result when it ends: no new epoch
    assert len(paces["large"].epochs) == 2


def test_the_estimate_follows_the_selection_rule_not_the_highest_objective():
    # Objectives whose intervals overlap are a tie, which the rule breaks by AUC: the slower trial's higher AUC wins.
    paces = {"higher objective": TrialPace(), "higher auc": TrialPace()}
    paces["higher objective"].add({**result(1, 0.92, 10.0, 64, auc=0.95), "ext_objective_low": 0.88, "ext_objective_high": 0.95,
                                   "val_objective": 0.99})
    paces["higher auc"].add({**result(1, 0.91, 30.0, 96, auc=0.97), "ext_objective_low": 0.87, "ext_objective_high": 0.94,
                             "val_objective": 0.50})  # on carved validation it is far behind
    assert final_fit_seconds(paces, FinalFitShape(top=1, seeds=1, epochs=10, concurrency=1, deciding="external")) == pytest.approx(300.0)
    assert final_fit_seconds(paces, FinalFitShape(top=1, seeds=1, epochs=10, concurrency=1, deciding="carved")) == pytest.approx(100.0)


def test_the_slowest_of_the_top_configurations_sets_the_pace_and_a_slow_first_epoch_does_not():
    paces = {
        "first": pace(64, [(0.90, 40.0), (0.92, 10.0), (0.93, 10.0)]),  # its first epoch includes the trial's start-up
        "second": pace(64, [(0.91, 12.0), (0.91, 12.0)]),
        "third": pace(64, [(0.50, 99.0)]),  # not among the top 2: the final fit will not train it
    }
    assert final_fit_seconds(paces, SHAPE) == pytest.approx(2 * 32 * 12.0)


def test_runs_beyond_the_concurrency_wait_for_a_free_slot():
    paces = {name: pace(96, [(0.9 - k / 100, 33.0)]) for k, name in enumerate("abc")}
    one_at_a_time = FinalFitShape(top=3, seeds=2, epochs=32, concurrency=1, deciding="external")
    assert final_fit_seconds(paces, FinalFitShape(top=3, seeds=2, epochs=32, concurrency=2, deciding="external")) == pytest.approx(3 * 32 * 33.0)
    assert final_fit_seconds(paces, one_at_a_time) == pytest.approx(6 * 32 * 33.0)
    del paces["c"]  # two configurations so far: the final fit would train 2 x 2 seeds, not the space's 3 x 2
    assert final_fit_seconds(paces, one_at_a_time) == pytest.approx(4 * 32 * 33.0)


def test_the_job_budget_ends_the_search_when_what_is_left_would_not_hold_the_final_fit(monkeypatch):
    import ray.cloudpickle as cloudpickle

    from cxr_tune.search.budget import EXPORT_RESERVE_SECONDS, SessionBudget

    monkeypatch.setattr(SessionBudget, "minutes", None)
    monkeypatch.setattr(SessionBudget, "final_fit", FinalFitShape(top=1, seeds=2, epochs=10, concurrency=2, deciding="external"))
    monkeypatch.setattr(SessionBudget, "ended", "")
    monkeypatch.setattr(SessionBudget, "settled_after", (2, 1))  # two trials must have reported an epoch first
    # 880 s left after the reserve: room for a final fit of 10 epochs of 50 s (500 s), not for one of 100-s epochs.
    monkeypatch.setattr(SessionBudget, "job_deadline", time.time() + EXPORT_RESERVE_SECONDS + 880)
    budget = SessionBudget()
    assert not budget.stop_all()  # no epoch yet: nothing to estimate
    budget("slow", result(1, 0.95, 100.0, 96))
    assert not budget.stop_all() and SessionBudget.estimate_seconds == pytest.approx(1000.0)  # one early draw decides nothing
    budget("fast", result(1, 0.90, 50.0, 64))
    assert budget.stop_all() and SessionBudget.ended == "job budget"  # two trials in, the slow one still leads
    monkeypatch.setattr(SessionBudget, "ended", "")
    budget("fast", result(2, 0.97, 50.0, 64))  # the fast trial takes the lead: its final fit fits
    assert not budget.stop_all() and SessionBudget.estimate_seconds == pytest.approx(500.0)
    monkeypatch.setattr(SessionBudget, "settled_after", (5, 1))
    monkeypatch.setattr(SessionBudget, "job_deadline", time.time() + EXPORT_RESERVE_SECONDS - 1)
    assert budget.stop_all() and SessionBudget.ended == "job budget"  # a spent budget ends the search, settled or not

    restored = cloudpickle.loads(cloudpickle.dumps(budget))  # as Tune brings it back on --resume
    monkeypatch.setattr(SessionBudget, "ended", "")
    monkeypatch.setattr(SessionBudget, "settled_after", (2, 1))
    monkeypatch.setattr(SessionBudget, "job_deadline", time.time() + EXPORT_RESERVE_SECONDS + 400)  # the resumed command's budget
    assert restored.stop_all()  # the leaders it saw before still set the pace, though they may never report again
    monkeypatch.setattr(SessionBudget, "job_deadline", None)  # resumed without --job-budget: no limit
    assert not restored.stop_all()


def test_a_costlier_final_fit_network_lengthens_the_estimate_by_its_flops():
    config = {"image_size": 64, "depth": 5, "filters": 16, "width_growth": 2.0}
    doubled = (("convs_per_block", 2),)
    ratio = cost_ratio(config, doubled)
    assert 3.0 < ratio < 4.0  # a second 3x3 convolution per block, each as wide as the block: about 3.4x the FLOPs
    assert cost_ratio(config, ()) == 1.0 and cost_ratio({}, doubled) == 1.0  # no change, or a trial never seen: as measured
    paces = {"a": TrialPace()}
    for epoch in (1, 2):
        paces["a"].add({**result(epoch, 0.9, 10.0, 64), "config": config})
    plain = FinalFitShape(top=1, seeds=2, epochs=32, concurrency=2, deciding="external")
    assert final_fit_seconds(paces, plain) == pytest.approx(32 * 10.0)
    assert final_fit_seconds(paces, FinalFitShape(**{**plain.__dict__, "changes": doubled})) == pytest.approx(32 * 10.0 * ratio)


def from_scratch(paces: dict[str, TrialPace], shape: FinalFitShape) -> float | None:
    """The estimate worked out from every epoch each time (as before the paces kept their best epochs): the oracle."""
    import math
    import statistics

    import pandas as pd

    from cxr_tune.selection import best_epoch, ensemble_members, prefix_of, ranked_trials

    objective, rows, seconds = f"{prefix_of(shape.deciding)}_objective", [], {}
    for trial_id, trial in paces.items():
        scored = [row for row in trial.epochs if math.isfinite(row.get(objective, math.nan))]
        times = [row["epoch_seconds"] for row in trial.epochs if row.get("epoch_seconds", 0) > 0]
        if scored and times:
            seconds[trial_id] = statistics.median(times)
            rows.append({**best_epoch(pd.DataFrame(scored), shape.deciding).to_dict(), "trial_id": trial_id, "image_size": trial.image_size,
                         "epochs": len(scored)})
    if not rows:
        return None
    members = ensemble_members(ranked_trials(pd.DataFrame(rows), shape.deciding), shape.top)
    return shape.rounds(len(members)) * shape.epochs * max(seconds[t] for t in members["trial_id"])


def test_the_estimate_kept_up_to_date_equals_the_one_worked_out_from_every_epoch():
    import pickle

    import numpy as np

    rng = np.random.default_rng(7)
    shapes = [FinalFitShape(top=3, seeds=2, epochs=32, concurrency=2, deciding=d) for d in ("external", "carved")]
    paces: dict[str, TrialPace] = {}
    for step in range(100):
        trial_id = f"t{rng.integers(0, 10)}"
        trial = paces.setdefault(trial_id, TrialPace())
        epoch = len(trial.epochs) + 1 - int(rng.random() < 0.1)  # now and then Tune repeats the last result
        coarse = lambda: float(rng.choice([0.8, 0.85, 0.9]))  # noqa: E731 - few values: ties on objective and AUC
        row = {"epoch": epoch, "epoch_seconds": float(rng.choice([0.0, 9.0, 10.0, 30.0])), "config": {"image_size": int(rng.choice([64, 96]))}}
        for prefix in ("ext", "val"):
            row |= {f"{prefix}_objective": math.nan if rng.random() < 0.1 else coarse(), f"{prefix}_auc": math.nan if rng.random() < 0.1 else coarse(),
                    f"{prefix}_loss": float(rng.choice([0.2, 0.3])), f"{prefix}_objective_low": 0.7, f"{prefix}_objective_high": coarse(),
                    f"{prefix}_non_finite": float(rng.random() < 0.05)}
        trial.add(row)
        if step == 50:  # as a resumed search brings its stopper back
            paces = pickle.loads(pickle.dumps(paces))
        for shape in shapes:
            assert final_fit_seconds(paces, shape) == from_scratch(paces, shape)


def test_the_work_per_result_does_not_grow_with_the_search(monkeypatch):
    import cxr_tune.search.pace as pace_module

    calls = []
    monkeypatch.setattr(pace_module, "best_epoch", lambda *a: calls.append(1) or best_epoch(*a))
    paces = {f"t{k}": pace(64, [(0.9 - k / 1000, 10.0)] * 3) for k in range(50)}
    final_fit_seconds(paces, SHAPE)
    calls.clear()
    paces["t7"].add(result(4, 0.95, 10.0, 64))
    assert final_fit_seconds(paces, SHAPE) == pytest.approx(2 * 32 * 10.0) and len(calls) == 1  # for the one trial that reported
