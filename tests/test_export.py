"""export_trial's refusals that need no trained model, and what its console summary says."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from cxr_tune import export
from cxr_tune.errors import UserError


def test_a_trial_that_diverged_at_every_epoch_is_refused_in_one_line_naming_it(monkeypatch):
    table = pd.DataFrame({"trial_id": ["good", "lost"], "epochs": [3, 1], "val_objective": [0.9, 0.5], "val_non_finite": [0, 89],
                          "status": ["TERMINATED", "TERMINATED"], "stop_reason": ["completed", "completed"]})
    experiment = SimpleNamespace(path="exps/div", splits=None, cache_dir=None, deciding_set="carved", trials=lambda ranked=True: table,
                                 options=SimpleNamespace(trials=2))
    monkeypatch.setattr("cxr_tune.experiment.Experiment", lambda path: experiment)  # export reads it where it is used
    with pytest.raises(UserError, match=r"^trial lost in exps/div diverged at every epoch") as refused:
        export.export_trial("exps/div", "lost")
    assert "\n" not in str(refused.value)


def test_the_console_summary_says_which_interval_is_which():
    """Sensitivity and specificity have Wilson intervals, AUC and balanced accuracy bootstrap ones: the summary says so, as the card does."""
    import json

    from cxr_tune.export import summary
    from tests.conftest import ROOT

    text = summary(json.loads((ROOT / "results/real/best/model.json").read_text()), "results/real/best")
    assert "Wilson score for sensitivity, specificity and accuracy" in text.splitlines()[1]
    assert "specificity 1.0000 [0.981, 1.000]" in text  # carved validation: 201 of 201 NORMAL images
    # the calibration line names the sets as every other line does (it said "external", then "external validation" for the selection set)
    assert "ECE / Brier: carved validation 0." in text and "; external validation (selection set) 0." in text


def test_a_model_that_gives_every_image_of_its_deciding_set_one_score_is_exported_with_a_warning_on_the_console_and_in_its_card(tmp_path):
    """Before: a trial whose lr blew it up (every image scored 1.0: AUC 0.5000, sensitivity 1, specificity 0) was selected and exported
    without a word. Selection is unchanged; the export says so."""
    from cxr_tune.export import summary
    from tests.model_exports import export_folder

    said = "the model gives every image of the carved validation set the same score: it learned nothing; check the learning rate"
    flat = export_folder(tmp_path / "flat", external=False, gain=0.0)
    assert f"  Warning: {said}" in summary(flat, str(tmp_path / "flat")).splitlines()
    assert f"> **Warning.** {said[0].upper()}{said[1:]}." in (tmp_path / "flat" / "MODEL_CARD.md").read_text().splitlines()
    ranking = export_folder(tmp_path / "ranking", external=False)  # scores that follow the images: nothing to say
    assert "learned nothing" not in summary(ranking, str(tmp_path / "ranking")) + (tmp_path / "ranking" / "MODEL_CARD.md").read_text()


def test_model_json_names_every_precision_a_member_trained_in_after_a_resume_elsewhere(tmp_path):
    """A trial resumed where --precision auto means fp32 after bf16 epochs: model.json's trained_in named the precision of the
    checkpoint's last epoch alone (fp32) for weights that trained 3 of their 4 epochs in bf16."""
    from tests.model_exports import INFO, brightness_members, kermany_set

    history = [{"epoch": e, "precision": "bf16" if e <= 3 else "fp32", "channels_last": True} for e in range(1, 5)]
    state = {"epoch": 3, "history": history, "run": {"precision": "fp32", "channels_last": True, "precision_reason": "auto"}}
    meta = export.write_export(brightness_members(), str(tmp_path / "model"), ["trial_a"], [state], {"val": kermany_set(60, 1)}, "val", {},
                               INFO, None)
    assert meta["members"][0]["trained_in"] == {"precision": "bf16 (epochs 1-3), fp32 (epoch 4)", "channels_last": True}
    old = {"epoch": 3, "run": {"precision": "bf16", "channels_last": True}}  # a checkpoint whose history does not record it: its run's record
    meta = export.write_export(brightness_members(), str(tmp_path / "old"), ["trial_a"], [old], {"val": kermany_set(60, 1)}, "val", {}, INFO, None)
    assert meta["members"][0]["trained_in"] == {"precision": "bf16", "channels_last": True}


def test_a_train_run_s_folder_is_refused_saying_what_gives_an_exportable_model_of_its_configuration(tmp_path):
    """Before: export said only "is not a cxr_tune experiment (no experiment.json)", while predict --model on the same folder
    said "no model.json; export one with python -m cxr_tune.export EXPERIMENT": a circle, with no way out named."""
    run = tmp_path / "one"
    (run / "checkpoint_000").mkdir(parents=True)
    (run / "run.json").write_text('{"data": "400 images, sha256 0123456789ab", "deciding_set": "carved"}')
    with pytest.raises(UserError, match=rf"^'{run}' holds a `train` run \(run.json\), not a search's experiment \(no experiment.json\); "
                                        r"for an exportable model of that configuration, run python -m cxr_tune.search "
                                        r"--space FILE.yaml with a space file whose search: holds trials: 1, max_epochs: its epochs and grace_period: 1, and whose "
                                        r"fixed: holds its other hyperparameters$"):
        export.main([str(run)])
    with pytest.raises(UserError, match=rf"^'{tmp_path}' is not a cxr_tune experiment \(no experiment.json\)$"):  # any other folder
        export.main([str(tmp_path)])


def test_an_export_of_a_search_that_had_not_trained_every_trial_counts_them_and_says_so():
    from cxr_tune.export import trials_so_far, unfinished_note

    table = pd.DataFrame({"trial_id": list("abcde"), "epochs": [3, 2, 1, 0, 0],
                          "stop_reason": ["completed", "ASHA stopped", "unfinished", "never trained (the search ended first)", "unfinished"]})
    counts = trials_so_far(table)
    assert counts == {"trials_trained": 3, "trials_unfinished": 2, "trials_failed": 0}
    assert unfinished_note("exps/cut", 8, counts) == ("Note: exps/cut is unfinished: 3 of its 8 requested trials trained, 2 had not ended (--resume continues them); "
                                                      "this model is the best of those 3, and the model card says so")
    assert unfinished_note("exps/budget", 8, {"trials_trained": 5, "trials_unfinished": 0}) == (
        "Note: exps/budget ended before every trial trained: 5 of its 8 requested trials trained; this model is the best of those 5, "
        "and the model card says so")
    assert unfinished_note("exps/done", 5, {"trials_trained": 5, "trials_unfinished": 0}) is None
    # A trial that failed before its first epoch read as a search cut short ("ended before every trial trained").
    failed = trials_so_far(pd.DataFrame({"trial_id": ["a", "b"], "epochs": [1, 0], "stop_reason": ["completed", "error"]}))
    assert failed == {"trials_trained": 1, "trials_unfinished": 0, "trials_failed": 1}
    assert unfinished_note("exps/one", 2, failed) == (
        "Note: exps/one had 1 of its 2 requested trials fail (a failed trial is not a candidate, even after training epochs; report.md's "
        "Failed trials section has each error): 1 trained and did not fail; this model is the best of those 1, and the model card says so")
    # A trial that failed after training epochs is not ranked (selection.ranked_trials): it was counted trained, and the note
    # was left out ("all 2 trained" on the card) for a model chosen from 1.
    late = trials_so_far(pd.DataFrame({"trial_id": ["a", "b"], "epochs": [3, 2], "stop_reason": ["completed", "error"]}))
    assert late == {"trials_trained": 1, "trials_unfinished": 0, "trials_failed": 1}
    assert unfinished_note("exps/late", 2, late) == unfinished_note("exps/one", 2, failed).replace("exps/one", "exps/late")


def test_predict_on_a_copy_of_the_set_that_chose_the_model_says_so_by_its_images_not_its_path(tmp_path, capsys):
    """The external set copied elsewhere (its NORMAL/ and PNEUMONIA/ folders) was scored with no selection-set note:
    model.json named the set only by its folder. The export now records its images' content hashes."""
    import shutil

    from cxr_tune.data.sources import content_hash
    from cxr_tune.predict import main as predict
    from tests.model_exports import INFO, brightness_members, kermany_set, save_images

    chose, other = kermany_set(40, 2), kermany_set(40, 3)
    site = save_images(chose, tmp_path / "site")
    hashes = [content_hash((site / Path(path).with_suffix(".png")).read_bytes()) for path in chose.rows["path"]]
    chose = export.Scored(chose.rows.assign(content_hash=hashes), chose.images)  # as the splits record the files
    model = tmp_path / "best"
    meta = export.write_export(brightness_members(), str(model), ["trial_a"], [{"epoch": 2}], {"val": other, "ext": chose}, "ext", {}, INFO, str(site))
    assert len(meta["external"]["image_hashes"]) == 40 * 11 - 1  # 10 hex digits each, space-separated: 3.5 KB for 315 images
    copy = tmp_path / "elsewhere"
    for folder in ("NORMAL", "PNEUMONIA"):
        shutil.copytree(site / folder, copy / folder)
    predict(["--model", str(model), str(copy), "--quiet"])
    assert (f"Note: 40 of 40 scored images chose this model (selection set: its external validation set, by content: model.json "
            "external.image_hashes): these are selection-set numbers for this model, optimistic, not an independent test.") in capsys.readouterr().out
    save_images(other, copy)  # images that chose nothing beside them
    predict(["--model", str(model), str(copy), "--quiet"])
    assert ("Note: 40 of 80 scored images chose this model (selection set: its external validation set, by content: model.json "
            "external.image_hashes): these numbers include selection-set images") in capsys.readouterr().out


def _one_trial_experiment(monkeypatch, splits: pd.DataFrame) -> dict:
    """An experiment of one trained trial, ``t1``, with these ``splits``, exported without reading a checkpoint: the dict
    returned fills, at export, with what ``write_export`` was given (``export_options`` and ``info``)."""
    from cxr_tune import storage

    table = pd.DataFrame({"trial_id": ["t1"], "epochs": [3], "val_objective": [0.9], "val_non_finite": [0], "status": ["TERMINATED"],
                          "stop_reason": ["completed"]})
    experiment = SimpleNamespace(path="exps/run", splits=splits, cache_dir=None, deciding_set="carved", trials=lambda ranked=True: table,
                                 options=SimpleNamespace(trials=1), has_test=False, info={}, external=None,
                                 file=lambda *parts: storage.join("exps/run", *parts), checkpoint_for=lambda row: "exps/run/t1/checkpoint_0")
    written = {"export_options": {}, "info": {}}
    monkeypatch.setattr("cxr_tune.experiment.Experiment", lambda path: experiment)
    monkeypatch.setattr(export, "load_state", lambda path: {})
    monkeypatch.setattr("cxr_tune.modelfile.members_from_states", lambda states: SimpleNamespace(hparams=[SimpleNamespace(image_size=16)], image_size=16))
    monkeypatch.setattr(export, "_role_images", lambda *args: None)

    def write_export(members, target, trials, states, sets, prefix, stored, info, *args, export_options, **kwargs):
        written["export_options"].update(export_options)
        written["info"].update(info)
        return {}

    monkeypatch.setattr(export, "write_export", write_export)
    return written


@pytest.mark.parametrize(("out", "recorded"), [(None, None), ("exps/run/exports/t1", None), ("elsewhere/sub", "elsewhere/sub")])
def test_the_out_folder_is_recorded_for_the_card_s_command_unless_it_is_the_default(monkeypatch, out, recorded):
    """Before: export_options left --out out, so the card's command replaced the experiment's best/ instead."""
    splits = pd.DataFrame({"role": ["val"], "role_note": [""], "patient_id": ["p1"], "content_hash": ["h1"]})
    written = _one_trial_experiment(monkeypatch, splits)["export_options"]
    export.export_trial("exps/run", "t1", out, tta=3, calibrate="temperature")
    assert written["out"] == recorded and written["tta"] == 3 and written["calibrate"] == "temperature"


def test_the_card_s_export_command_writes_where_the_model_was_written():
    from cxr_tune.modelcard import export_flags

    given = {"trial": None, "ensemble": None, "val_data": None, "tta": 3, "calibrate": "temperature", "final_fit": False, "out": "/runs/out new/sub"}
    assert export_flags({"export_options": given}) == " --tta 3 --calibrate temperature --out '/runs/out new/sub'"


def test_model_json_records_the_fingerprint_of_the_images_and_roles_a_train_run_records(monkeypatch, tmp_path):
    """Before: train's run.json said "data": "400 images, sha256 bf8774b6d80c", but model.json and its card gave the data's
    path and counts only: nothing told whether a model came from the same images and split as a run."""
    from cxr_tune.data.prepared import SplitData

    splits = pd.DataFrame({"role": ["val", "train", "test"], "role_note": ["", "", ""], "patient_id": ["p1", "p2", "p3"], "content_hash": ["h1", "h2", "h3"]})
    written = _one_trial_experiment(monkeypatch, splits)["info"]
    export.export_trial("exps/run", "t1", tta=3)  # new views: no stored scores read
    assert written["data_fingerprint"] == SplitData(source=None, roles=splits, cache_dir="").fingerprint() == "3 images, sha256 " + written["data_fingerprint"][-12:]
    from tests.model_exports import export_folder

    assert export_folder(tmp_path / "model", data_fingerprint="400 images, sha256 bf8774b6d80c")["data"]["fingerprint"] == "400 images, sha256 bf8774b6d80c"


def test_the_threshold_and_operating_points_are_chosen_on_the_external_set_when_it_decides(tmp_path):
    """A carved set of dark films and an external set of bright ones (each class apart in both): the carved set alone
    would put every threshold below 0.5, the deciding external set above it; model.json keeps the external set's."""
    import numpy as np

    from tests.model_exports import INFO, SIZE, brightness_members

    def films(brightness: list[float], tag: str) -> export.Scored:
        """One uniform film per brightness, the first half NORMAL."""
        labels = [int(i >= len(brightness) // 2) for i in range(len(brightness))]
        rows = pd.DataFrame({"content_hash": [f"{tag}{i}" for i in range(len(labels))], "label": labels,
                             "path": [f"{'PNEUMONIA' if label else 'NORMAL'}/{tag}{i}.png" for i, label in enumerate(labels)]})
        return export.Scored(rows, np.stack([np.full((SIZE, SIZE), round(b * 255), np.uint8) for b in brightness]))

    dark = films([0.30, 0.31, 0.32, 0.33, 0.34, 0.35, 0.40, 0.41, 0.42, 0.43, 0.44, 0.45], "val")
    bright = films([0.56, 0.57, 0.58, 0.59, 0.60, 0.61, 0.66, 0.67, 0.68, 0.69, 0.70, 0.71], "ext")
    meta = export.write_export(brightness_members(gain=20.0), str(tmp_path / "model"), ["trial_a"], [{"epoch": 2}], {"val": dark, "ext": bright},
                               "ext", {}, INFO, "/data/site")
    assert meta["deciding_set"] == "external" and meta["threshold"] > 0.5
    assert meta["external"]["sensitivity"] == meta["external"]["specificity"] == 1.0  # at its own threshold the external set is told apart
    assert meta["validation"]["sensitivity"] == 0.0  # the carved set's films are all darker than that threshold
    assert all(point["threshold"] > 0.5 for point in meta["operating_points"].values()), meta["operating_points"]
