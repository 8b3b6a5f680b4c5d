"""The selection rules: the deciding set (always passed in), bootstrap ties, the tie-break, best epochs, ensembles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_tune.selection import (best_epoch, checkpoint_score, choose_threshold, ensemble_members, final_fit_kept, floor_threshold, objective_interval,
                                ranked_trials, select_best)


def trials(**columns) -> pd.DataFrame:
    base = {"trial_id": ["a", "b", "c", "d"], "epochs": [5, 5, 5, 0], "image_size": [64, 64, 96, 64]}
    return pd.DataFrame({**base, **columns})


def carved_and_external() -> pd.DataFrame:
    """Carved validation prefers a, the external set prefers c, with intervals that do not overlap."""
    return trials(
        val_objective=[0.99, 0.95, 0.90, np.nan], val_auc=[0.999, 0.99, 0.98, np.nan], val_loss=[0.05, 0.1, 0.2, np.nan],
        ext_objective=[0.70, 0.80, 0.92, np.nan], ext_objective_low=[0.64, 0.75, 0.88, np.nan], ext_objective_high=[0.76, 0.85, 0.96, np.nan],
        ext_auc=[0.80, 0.88, 0.97, np.nan], ext_loss=[0.9, 0.5, 0.3, np.nan],
        objective=[0.70, 0.80, 0.92, np.nan], objective_low=[0.64, 0.75, 0.88, np.nan], objective_high=[0.76, 0.85, 0.96, np.nan],
    )


def test_selection_follows_the_external_set_when_the_two_disagree():
    table = carved_and_external()
    assert select_best(table, "external")["trial_id"] == "c"
    assert select_best(table, "carved")["trial_id"] == "a"  # what carved validation alone would pick
    assert list(ranked_trials(table, "external")["trial_id"]) == ["c", "b", "a"]  # d never reported


def test_overlapping_intervals_tie_and_the_tie_goes_to_the_higher_auc():
    table = carved_and_external()
    table.loc[1, ["ext_objective", "ext_objective_low", "ext_objective_high"]] = [0.90, 0.86, 0.94]  # b now overlaps c
    table.loc[1, "ext_auc"] = 0.99
    ranked = ranked_trials(table, "external")
    assert list(ranked["trial_id"][:2]) == ["b", "c"] and ranked["tied"].tolist() == [True, True, False]


def test_a_trial_that_failed_after_training_epochs_is_not_ranked_as_optuna_records_it_failed():
    """Before: a trial that trained 2 epochs and then errored was a candidate (here it ranked first, so the search
    exported it), while the study told Optuna it FAILed and the docstring said failed trials are not candidates."""
    table = pd.DataFrame({"trial_id": ["ok", "err"], "status": ["TERMINATED", "ERROR"], "stop_reason": ["completed", "error"], "epochs": [3, 2],
                          "val_objective": [.8, .9], "val_auc": [.85, .95], "val_loss": [.5, .4], "val_objective_low": [.78, .88],
                          "val_objective_high": [.82, .92]})
    assert ranked_trials(table, "carved")["trial_id"].tolist() == ["ok"]
    with pytest.raises(ValueError, match="1 trial\\(s\\) reported a validation result and then failed; nothing to select"):
        ranked_trials(table.iloc[1:], "carved")


def test_without_an_external_set_carved_validation_decides():
    table = trials(objective=[0.90, 0.95, 0.80, np.nan], val_objective=[0.90, 0.95, 0.80, np.nan],
                   val_auc=[0.9, 0.9, 0.9, np.nan], val_loss=[0.2, 0.5, 0.1, np.nan])
    assert select_best(table, "carved")["trial_id"] == "b"  # no intervals recorded: only exact ties tie
    with pytest.raises(ValueError, match="no trial has reported"):
        select_best(table.assign(epochs=0), "carved")
    with pytest.raises(ValueError, match="deciding set"):
        select_best(table, "val")


def test_the_ensemble_takes_the_best_trials_at_the_selected_image_size():
    ranked = ranked_trials(carved_and_external(), "external")
    assert list(ensemble_members(ranked, 3)["trial_id"]) == ["c"]  # b and a are 64 px, c is 96 px
    table = carved_and_external().assign(image_size=64)
    assert list(ensemble_members(ranked_trials(table, "external"), 2)["trial_id"]) == ["c", "b"]


def test_the_final_fit_is_exported_only_where_it_scores_no_lower_than_the_search_s_ensemble():
    assert final_fit_kept(0.97, 0.96) and final_fit_kept(0.96, 0.96)
    assert not final_fit_kept(0.9535, 0.9722)  # results/real/external-v5
    assert not final_fit_kept(0.9599, 0.96)  # no lower means no lower: 0.0001 short loses, no margin in the final fit's favour
    # Where a model stored no scores to compare, the final fit is kept, as before the rule.
    assert final_fit_kept(None, 0.97) and final_fit_kept(0.5, None) and final_fit_kept(float("nan"), 0.97)


def test_best_epoch_uses_the_deciding_set_and_breaks_ties_by_auc_then_loss_then_earlier():
    history = pd.DataFrame({
        "epoch": [1, 2, 3, 4], "objective": [0.8, 0.9, 0.9, 0.9], "ext_objective": [0.8, 0.9, 0.9, 0.9],
        "ext_auc": [0.9, 0.95, 0.97, 0.97], "ext_loss": [0.4, 0.3, 0.35, 0.3], "val_auc": [1.0, 0.9, 0.9, 0.9], "val_loss": [0.0] * 4,
    })
    assert int(best_epoch(history, "external")["epoch"]) == 4


def test_objective_interval_brackets_the_value_and_narrows_with_more_images():
    rng = np.random.default_rng(0)

    def interval(n: int) -> tuple[float, float, float]:
        labels = np.r_[np.zeros(n), np.ones(n)].astype(int)
        scores = np.clip(labels * 0.3 + rng.random(2 * n) * 0.7, 0, 1)
        threshold = choose_threshold(labels, scores)
        predicted = scores >= threshold
        value = (predicted[labels == 1].mean() + 1 - predicted[labels == 0].mean()) / 2
        low, high = objective_interval(labels, scores, threshold)
        return low, value, high

    low, value, high = interval(50)
    assert low <= value <= high
    small, large = interval(50), interval(2000)
    assert large[2] - large[0] < (small[2] - small[0]) / 3
    assert all(np.isnan(objective_interval(np.ones(5), np.ones(5) * 0.7, 0.5)))  # one class: no balance to bound


def test_a_run_selected_on_carved_validation_never_breaks_ties_on_the_external_set():
    table = carved_and_external()
    table["objective"], table["objective_low"], table["objective_high"] = table["val_objective"], table["val_objective"] - 0.05, table["val_objective"] + 0.05
    table["val_objective_low"], table["val_objective_high"] = table["objective_low"], table["objective_high"]
    table["val_loss"] = [0.3, 0.1, 0.2, np.nan]
    table["val_auc"] = [0.990, 0.999, 0.995, np.nan]  # a and b tie on carved; b has the higher carved AUC, c the higher external AUC
    assert select_best(table, "carved")["trial_id"] == "b"
    history = pd.DataFrame({"epoch": [1, 2], "objective": [0.9, 0.9], "val_objective": [0.9, 0.9], "ext_objective": [0.7, 0.8],
                            "val_auc": [0.99, 0.98], "val_loss": [0.1, 0.1], "ext_auc": [0.8, 0.95], "ext_loss": [0.5, 0.2]})
    assert int(best_epoch(history, "carved")["epoch"]) == 1  # the carved AUC breaks the tie, not the external one


def _equal_objectives_history(val_auc: list[float], ext_auc: list[float]) -> list[dict]:
    """A constant-output or saturated trial: carved and external objectives equal at every epoch."""
    return [{"epoch": e + 1, "objective": 0.5, "val_objective": 0.5, "ext_objective": 0.5, "val_auc": v, "ext_auc": x,
             "val_loss": 0.69, "ext_loss": 0.69} for e, (v, x) in enumerate(zip(val_auc, ext_auc, strict=True))]


def test_equal_carved_and_external_objectives_never_hand_the_choice_to_external_labels():
    """The deciding set is a recorded fact passed in, not guessed from equal columns: under carved,
    a trial whose two objectives coincide at every epoch is judged by carved AUC alone."""
    history = _equal_objectives_history(val_auc=[0.60, 0.70, 0.65], ext_auc=[0.90, 0.50, 0.55])
    assert int(best_epoch(pd.DataFrame(history), "carved")["epoch"]) == 2  # carved AUC; the external AUC would say 1
    assert int(best_epoch(pd.DataFrame(history), "external")["epoch"]) == 1
    kept = [checkpoint_score(history[: e + 1], "carved") for e in range(len(history))]
    assert _kept_by_train(kept) == 2  # the checkpoint Ray Train keeps
    table = pd.DataFrame([{"trial_id": t, "epochs": 3, "objective": 0.5, "objective_low": 0.45, "objective_high": 0.55,
                           **{f"{p}_{k}": v for p in ("val", "ext") for k, v in (("objective", 0.5), ("objective_low", 0.45), ("objective_high", 0.55), ("loss", 0.69))},
                           "val_auc": va, "ext_auc": xa} for t, va, xa in (("x", 0.70, 0.50), ("y", 0.60, 0.95))])
    assert ranked_trials(table, "carved")["trial_id"].tolist() == ["x", "y"]  # the external AUC would rank y first
    assert ranked_trials(table.drop(columns=[c for c in table if c.startswith("ext_")]), "carved")["trial_id"].tolist() == ["x", "y"]


def _kept_by_train(scores: list[float]) -> int:
    """The epoch whose checkpoint Ray Train keeps as its best (num_to_keep=1, highest score; of equal
    scores the later report ranks higher)."""
    return max(range(len(scores)), key=lambda i: (scores[i], i)) + 1


def _history(objective, auc, loss) -> list[dict]:
    return [{"epoch": e + 1, "objective": o, "val_objective": o, "val_auc": a, "val_loss": lo} for e, (o, a, lo) in enumerate(zip(objective, auc, loss))]


def test_the_checkpoint_train_keeps_is_the_best_epoch_even_when_objectives_tie():
    history = _history(objective=[0.80, 0.70, 0.80, 0.75], auc=[0.90, 0.85, 0.88, 0.95], loss=[0.4, 0.5, 0.3, 0.2])
    scores = [checkpoint_score(history[: e + 1], "carved") for e in range(len(history))]
    assert int(best_epoch(pd.DataFrame(history), "carved")["epoch"]) == 1  # epoch 3 ties on the objective, epoch 1 has the higher AUC
    assert _kept_by_train(scores) == 1
    assert _kept_by_train([h["objective"] for h in history]) == 3  # what scoring by the objective kept


def test_the_kept_checkpoint_follows_the_rule_on_any_history():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(1, 9))
        history = _history(objective=rng.choice([0.7, 0.8, 0.9], n), auc=rng.choice([0.8, 0.9, np.nan], n), loss=rng.choice([0.2, 0.3], n))
        scores = [checkpoint_score(history[: e + 1], "carved") for e in range(n)]
        assert _kept_by_train(scores) == int(best_epoch(pd.DataFrame(history), "carved")["epoch"])


def _logit(p):
    return np.log(p / (1 - p))


def test_the_tolerance_moves_the_threshold_off_a_near_best_cut_pressed_against_the_images():
    # One PNEUMONIA image (logit -0.9) sits just above the top NORMAL one (-1): the only perfect cut leaves a
    # 0.05-logit margin. Cuts costing one image (0.05 balanced accuracy) are within the tolerance: from
    # just above the next NORMAL (-1.44) up to the next PNEUMONIA (2), whose middle is over a logit from any image.
    labels = np.r_[np.zeros(10), np.ones(10)].astype(int)
    scores = 1 / (1 + np.exp(-np.r_[np.linspace(-5, -1, 10), -0.9, np.linspace(2, 4, 9)]))
    margin = lambda t: np.min(np.abs(_logit(scores) - _logit(t)))  # noqa: E731
    strict, tolerant = choose_threshold(labels, scores), choose_threshold(labels, scores, tolerance=0.06)
    assert margin(strict) == pytest.approx(0.05)
    assert _logit(tolerant) == pytest.approx((2 - 1 - 4 / 9) / 2) and margin(tolerant) > 1.1
    called = scores >= tolerant
    assert (called[labels == 1].mean() + 1 - called[labels == 0].mean()) / 2 >= 1 - 0.06


def test_a_specificity_floor_holds_when_a_normal_image_is_one_float_step_below_a_pneumonia_one():
    # The mirrored problem's cut is the middle, in logit space, of 0.7 and the next float; back on the probability scale
    # it rounds to 0.7 itself, and ``score >= threshold`` would call that NORMAL image PNEUMONIA (specificity 0.5); the
    # threshold moves one float step above it. (At 0.6 the round trip lands above 0.6 and this case tested nothing.)
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.2, 0.7, np.nextafter(0.7, 1), 0.95])
    threshold = floor_threshold(labels, scores, "specificity", 1.0)
    assert threshold == np.nextafter(0.7, 1)  # the one threshold keeping both NORMAL images below and every PNEUMONIA above
    assert (scores[labels == 0] < threshold).all() and (scores[labels == 1] >= threshold).all()



def test_a_specificity_floor_keeps_the_order_of_scores_below_1e_16():
    """1 - p rounds every score below about 1e-16 to 1.0: the mirrored problem tied the two PNEUMONIA images at 1e-18 and
    1e-17 with the NORMAL ones at 1e-20, and the floor gave up both (sensitivity 0.8 at 0.00095)."""
    labels = np.array([0] * 10 + [1] * 10)
    scores = np.array([1e-20] * 10 + [1e-18, 1e-17] + [0.9] * 8, dtype=np.float32)
    threshold = floor_threshold(labels, scores, "specificity", 0.9)
    assert (scores[labels == 0] < threshold).all() and (scores[labels == 1] >= threshold).all()  # sensitivity and specificity 1.0
    assert threshold == pytest.approx(choose_threshold(labels, scores), rel=1e-6)  # about 5e-19, as the balanced rule finds


def _hand_bootstrap(positive: np.ndarray, negative: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """Balanced accuracy on stratified resamples, one resample at a time."""
    rng = np.random.default_rng(seed)
    return np.array([(rng.choice(positive, len(positive)).mean() + 1 - rng.choice(negative, len(negative)).mean()) / 2
                     for _ in range(resamples)])


def test_objective_interval_is_the_95_percent_percentile_bootstrap_and_the_same_on_every_call():
    labels = np.r_[np.ones(100), np.zeros(80)].astype(int)
    scores = np.r_[np.repeat([0.9, 0.3], [70, 30]), np.repeat([0.9, 0.3], [16, 64])]  # sensitivity 0.7, specificity 0.8 at 0.5
    by_hand = _hand_bootstrap(scores[:100] >= 0.5, scores[100:] >= 0.5, 20_000, seed=1)
    low, high = objective_interval(labels, scores, 0.5, resamples=20_000)
    assert low == pytest.approx(np.percentile(by_hand, 2.5), abs=0.004) and high == pytest.approx(np.percentile(by_hand, 97.5), abs=0.004)
    assert high - low > 0.11  # a 90 % interval would be about 0.105 wide
    assert objective_interval(labels, scores, 0.5) == objective_interval(labels, scores, 0.5)  # seeded


def test_of_epochs_tied_on_everything_the_earlier_one_is_the_best():
    history = pd.DataFrame({"epoch": [1, 2, 3, 4], "val_objective": [0.8, 0.9, 0.9, 0.9], "val_auc": [0.9, 0.95, 0.95, 0.95],
                            "val_loss": [0.4, 0.3, 0.3, 0.3]})
    assert int(best_epoch(history, "carved")["epoch"]) == 2


def test_tied_trials_with_equal_auc_go_by_the_lower_log_loss():
    table = trials(ext_objective=[0.90, 0.88, 0.70, np.nan], ext_objective_low=[0.85, 0.83, 0.65, np.nan],
                   ext_objective_high=[0.95, 0.93, 0.75, np.nan], ext_auc=[0.95, 0.95, 0.99, np.nan], ext_loss=[0.4, 0.2, 0.1, np.nan])
    ranked = ranked_trials(table, "external")
    assert ranked["trial_id"].tolist() == ["b", "a", "c"] and ranked["tied"].tolist() == [True, True, False]


def test_a_diverged_epoch_is_never_a_run_s_best_while_another_epoch_is_finite():
    """NaN scores count as 0.5: a diverged epoch's log loss (0.693) beat a saturated finite epoch's (11.8) on the tie-break."""
    history = pd.DataFrame({"epoch": [1, 2], "val_objective": [0.5, 0.5], "val_auc": [0.5, 0.5], "val_loss": [11.77, 0.693],
                            "val_non_finite": [0, 89], "diverged": [False, True]})
    assert int(best_epoch(history, "carved")["epoch"]) == 1
    assert checkpoint_score(history.to_dict("records"), "carved") == 0.0  # Train keeps epoch 1's checkpoint, not the diverged one
    assert int(best_epoch(history.iloc[1:], "carved")["epoch"]) == 2  # a run that diverged at every epoch still has a row


def test_a_trial_that_diverged_at_every_epoch_ranks_last_and_is_never_selected_nor_a_member():
    """The reviewer's search: three trials scored NaN (a coin toss, [0.5, 0.5], AUC 0.5) and overlapped the real trial's wide
    interval, so they tied with it and won the AUC tie-break against its 0.449."""
    table = trials(ext_objective=[0.5, 0.571, 0.5, 0.5], ext_objective_low=[0.5, 0.380, 0.5, 0.5], ext_objective_high=[0.5, 0.786, 0.5, 0.5],
                   ext_auc=[0.5, 0.449, 0.5, 0.5], ext_loss=[0.693, 0.8, 0.693, 0.693], ext_non_finite=[89, 0, 89, 89],
                   image_size=64).assign(epochs=[1, 3, 1, 1])
    ranked = ranked_trials(table, "external")
    assert ranked["trial_id"].tolist()[0] == "b" and ranked["tied"].tolist() == [True, False, False, False]
    assert select_best(table, "external")["trial_id"] == "b"
    assert ensemble_members(ranked, 3)["trial_id"].tolist() == ["b"]
    with pytest.raises(ValueError, match="diverged"):
        select_best(table.assign(ext_non_finite=5), "external")


def test_the_selection_note_of_a_model_without_image_hashes_follows_each_scored_file_once(tmp_path, monkeypatch):
    """predict on 20,000 files with a model.json naming its external set by folder only spent 2.1 s deciding the note:
    three real paths per file (the set's own again for each), and all of them where the input is or holds the set."""
    import os

    from cxr_tune.selection import selection_note

    site, other = tmp_path / "val", tmp_path / "site"
    (site / "NORMAL").mkdir(parents=True)
    other.mkdir()
    files = [site / "NORMAL" / f"{i}.png" for i in range(50)]
    for file in files:
        file.write_bytes(b"x")
    (other / "link.png").symlink_to(files[0])  # a link into the set: counted by its real path
    model = {"deciding_set": "external", "external": {"source": str(site), "selection_set": True}}
    real, calls = os.path.realpath, []
    monkeypatch.setattr(os.path, "realpath", lambda path, *a, **k: calls.append(path) or real(path, *a, **k))
    scored = [str(other / "link.png"), str(tmp_path / "elsewhere.png"), *map(str, files)]
    note = selection_note(model, [str(other), str(tmp_path / "elsewhere.png"), str(site / "NORMAL")], paths=scored)
    assert note.startswith(f"51 of 52 scored images lie in this model's external validation set (model.json external.source), which chose "
                           f"the model (the first: {other / 'link.png'})") and "these numbers include selection-set images" in note
    assert len(calls) < 2 * len(scored)  # one per file and a few per input; before: 3 per file
    for inputs, said in (([str(site)], ("is", "these are selection-set numbers")), ([str(tmp_path)], ("holds", "these numbers include selection-set images"))):
        calls.clear()
        note = selection_note(model, inputs, paths=list(map(str, files)))
        assert note == (f"{inputs[0]} {said[0]} this model's external validation set (model.json external.source), which chose the model: "
                        f"{said[1]} for this model, optimistic, not an independent test")
        assert len(calls) < 10  # before: 150, the answer file by file unused


def test_which_scored_images_chose_the_model_is_the_notes_rule_for_each_file_decided_at_once(tmp_path, monkeypatch):
    """An --explain caption marks each image that chose the model: it asked selection_note once per image, which read
    model.json's recorded hashes again for each (a site's 100,000 split per figure)."""
    from cxr_tune import selection
    from cxr_tune.selection import image_hashes, selection_images, selection_note

    site = tmp_path / "val"
    site.mkdir()
    (site / "a.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(site / "a.png")
    by_folder = {"deciding_set": "external", "external": {"source": str(site), "selection_set": True}}
    by_content = {"deciding_set": "external", "external": {"source": "gone", "selection_set": True, "image_hashes": image_hashes(["abc123def456"])}}
    hashes, paths = ["abc123def456", "fff000"], [str(tmp_path / "link.png"), str(tmp_path / "other.png")]
    for meta in (by_folder, by_content):
        one_by_one = [selection_note(meta, (), [digest], [path]) is not None for digest, path in zip(hashes, paths, strict=True)]
        assert selection_images(meta, hashes, paths) == one_by_one == [True, False]
    read, reads = selection._hash_set, []
    monkeypatch.setattr(selection, "_hash_set", lambda record: reads.append(1) or read(record))
    selection_images(by_content, hashes * 50, paths * 50)
    assert len(reads) == 1
