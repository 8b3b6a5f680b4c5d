"""``MODEL_CARD.md``: written by every export and by adapt, every number in it read from its
``model.json``, the deciding set's numbers marked as selection-set numbers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from cxr_tune.formatting import fmt, interval
from cxr_tune.modelcard import KERMANY, model_card
from cxr_tune.set_metrics import INTERVAL_METHODS
from tests.model_exports import export_folder, kermany_set, save_images
from tests.conftest import call_cli

DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?![\w.])")


def numbers_in(value: Any) -> list[float]:
    """Every number anywhere in a parsed JSON document."""
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers_in(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers_in(v)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [float(value)]
    return []


def table(card: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first Markdown table under ``## heading``."""
    section = card.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[dict[str, Any], str]:
    folder = tmp_path_factory.mktemp("card") / "model"
    export_folder(folder, calibrate="platt")
    return json.loads((folder / "model.json").read_text()), (folder / "MODEL_CARD.md").read_text()


def test_every_decimal_number_in_the_card_is_a_number_of_model_json(exported):
    meta, card = exported
    known = numbers_in(meta)
    text = card.replace(KERMANY, "")  # the data set's reference (a DOI, a licence version) is text, not a measurement
    text = text.replace(meta["search"]["command_cwd"], "")  # so is the folder the search ran in (a date in its name)
    found = DECIMAL.findall(text)
    assert len(found) > 100
    for token in found:
        digits = len(token.split(".")[1])
        assert any(math.isclose(round(value, digits), float(token), abs_tol=10 ** -(digits + 3)) for value in known), token


def test_the_tables_say_what_model_json_says(exported):
    meta, card = exported
    names = {"carved validation": "validation", "external validation (selection set)": "external", "test": "test"}
    performance = table(card, "Performance")
    assert [row[0] for row in performance] == list(names)  # the deciding set (external here) is marked, the others not
    for row in performance:
        metrics = meta[names[row[0]]]
        ci = metrics["ci95"]
        assert row[1] == str(metrics["n"])
        assert row[3:7] == [f"{fmt(metrics[k])}{interval(ci.get(k))}" for k in ("auc", "sensitivity", "specificity", "balanced_accuracy")]
        # what a clinician at a site asks next: how often a call is right, at the set's own PNEUMONIA share (it had no column)
        assert row[7:] == [fmt(metrics[k]) for k in ("prevalence", "ppv", "npv")]
    assert "PPV and NPV hold at each set's own PNEUMONIA share" in card
    for row in table(card, "Calibration"):
        calibration = meta[names[row[0]]]["calibration"]
        assert row[1] == f"{fmt(calibration['ece'])}{interval(calibration['ci95']['ece'])}"
        assert row[3] == f"{fmt(calibration['before']['ece'])}{interval(calibration['before']['ci95']['ece'])}"
    subgroups = table(card, "Subgroups")
    assert len(subgroups) == 3 * 4
    for row in subgroups:
        group = next(g for g in meta[names[row[0]]]["subgroups"].values() if g["description"] == row[1])
        assert row[2:5] == [group["rate"], str(group["n"]), str(group["correct"])]
    points = table(card, "Operating points")
    assert [row[0] for row in points] == [f"`{name}`" for name in meta["operating_points"]]
    for row in points:
        name = row[0].strip("`")
        assert row[1] == fmt(meta["operating_points"][name]["threshold"])
        for cell, key in zip(row[3:], ("validation", "external", "test"), strict=True):
            at, ci = meta[key]["operating_points"][name], meta[key]["operating_points"][name]["ci95"]
            assert cell == f"{fmt(at['sensitivity'])}{interval(ci['sensitivity'])} / {fmt(at['specificity'])}{interval(ci['specificity'])}"


def test_the_card_covers_what_a_reviewer_asks(exported):
    meta, card = exported
    for heading in ("Model details", "Intended use", "Data", "How the model was chosen", "Performance", "Subgroups", "Calibration",
                    "Operating points", "Site adaptation", "Limitations", "How to reproduce"):
        assert f"\n## {heading}\n" in card, heading
    assert "Not a medical device" in card and "CC BY 4.0" in card and "selection set" in card
    assert INTERVAL_METHODS in card and "95 % Wilson score intervals (from the counts)" in card  # performance; operating points
    assert "Deciding set: **external validation set**" in card and "optimistic" in card
    assert "train 100 / 300" not in card and "training 100 / 300" in card  # counts per set, from model.json
    assert meta["search"]["command"] in card and "--calibrate platt" in card


def test_the_card_says_which_side_of_the_threshold_is_pneumonia_and_what_middle_logit_scale_means(exported):
    """It gave "Decision threshold 0.9128 (operating point `balanced`): middle (logit scale) of ...": a reader could not tell
    that a probability of PNEUMONIA of 0.85 is called NORMAL there."""
    meta, card = exported
    threshold = fmt(meta["threshold"])
    assert f"An image whose probability of PNEUMONIA is {threshold} or more is called PNEUMONIA, one below it NORMAL" in card
    assert "middle (logit scale: halfway between the range's ends in log-odds, log(p / (1 - p)))" in card
    assert "--metrics metrics.json" in card and "python -m cxr_tune.compare --model FOLDER --model OTHER_MODEL" in card


def test_the_search_command_says_the_folder_it_ran_in_so_it_runs_again_from_any_folder(exported):
    """The card showed ``--data ../data/chest_xray`` as typed, without the folder it was typed in."""
    from cxr_tune.modelcard import model_card

    meta, card = exported
    runnable = "cd '/home/reader/runs 2024.06' && python -m cxr_tune.search --space smoke --data ../data/chest_xray"
    assert f"Command: `{runnable}`." in card and f"\n1. `{runnable}` (" in card.split("## How to reproduce\n", 1)[1]
    older = {**meta, "search": {k: v for k, v in meta["search"].items() if k != "command_cwd"}}  # an export from before the record
    assert f"\n1. `{meta['search']['command']}` (" in model_card(older) and "cd " not in model_card(older)


def test_a_synthetic_carved_export_says_so_and_marks_carved_validation(tmp_path):
    export_folder(tmp_path / "model", external=False, synthetic=True)
    card = (tmp_path / "model" / "MODEL_CARD.md").read_text()
    assert "**SYNTHETIC DATA.**" in card and "CC BY 4.0" not in card
    assert [row[0] for row in table(card, "Performance")] == ["carved validation (selection set)", "test"]
    assert "There is no external set" in card


def test_adapt_writes_a_card_for_the_adapted_model(tmp_path):
    export_folder(tmp_path / "model")
    site = save_images(kermany_set(24, 4), tmp_path / "site")
    done = call_cli("cxr_tune.adapt", "--model", str(tmp_path / "model"), "--images", str(site), "--out", str(tmp_path / "adapted"), "--threshold", "keep")
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "adapted" / "model.json").read_text())
    card = (tmp_path / "adapted" / "MODEL_CARD.md").read_text()
    assert "AdaBN" in card and "24 unlabelled image(s)" in card and "Measured before site adaptation" in card
    assert "operating_points" not in meta and set(meta["before_adaptation"]["operating_points"]) >= {"balanced", "sens95"}
    assert "## Operating points" not in card  # the unadapted points do not carry over
    assert not (tmp_path / "adapted" / "reliability.png").exists() and "`reliability.png`" not in card  # adapt draws none: the card names none
    assert "Reliability diagram: none for the adapted model" in card
    assert meta["adaptation"]["provenance"]["versions"] == meta["provenance"]["versions"]  # the adapting code's and the exporting code's
    # Which model was adapted, by its files' hashes (from_model was a path only), and both dates on the card (the export's alone).
    assert meta["adaptation"]["from_model_files"] == json.loads((tmp_path / "model" / "model.json").read_text())["files"]
    assert f"exported {meta['exported_at']}, adapted {meta['adaptation']['adapted_at']}." in card
    # The command that made it, runnable as written ("--model FOLDER", this model's folder, adapted the adapted model).
    adapt_step = f"`python -m cxr_tune.adapt --model {tmp_path / 'model'} --images {site} --out {tmp_path / 'adapted'} --threshold keep`"
    assert adapt_step in card.split("## How to reproduce\n", 1)[1], card.split("## How to reproduce\n", 1)[1]
    assert table(card, "Performance")[0][3] == fmt(meta["before_adaptation"]["validation"]["auc"]) + interval(
        meta["before_adaptation"]["validation"]["ci95"]["auc"])
    assert Path(tmp_path / "model" / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_reproducing_export_command_builds_the_same_model_again():
    from cxr_tune.modelcard import export_flags

    legacy_final_fit = {"members": [{}] * 6, "final_fit": {"runs": [], "rule": "..."}, "tta_views": 1, "calibration": None}
    assert export_flags(legacy_final_fit) == ""  # before: --ensemble 6, which exports six search trials instead
    assert export_flags({"members": [{}] * 3, "tta_views": 2, "calibration": {"method": "platt"}}) == " --ensemble 3 --tta 2 --calibrate platt"
    recorded = {"trial": None, "ensemble": None, "val_data": "site/", "tta": 1, "calibrate": "none", "final_fit": False}
    assert export_flags({"members": [{}] * 3, "export_options": recorded}) == " --val-data site/"
    assert export_flags({"export_options": {**recorded, "val_data": None, "final_fit": True}}) == " --final-fit"


def test_a_carved_search_exported_on_a_site_sample_says_carved_validation_chose_the_epochs(tmp_path):
    meta = export_folder(tmp_path / "model", epochs_on="val")  # the site sample (external) ranks and thresholds
    card = (tmp_path / "model" / "MODEL_CARD.md").read_text()
    assert meta["validation"]["selection_set"] and meta["external"]["selection_set"] and meta["epochs_chosen_on"] == "carved"
    assert "It chose the trial ranking" in card and "It chose each trial's epoch" not in card
    assert "Each trial's epoch was chosen during the search, on the search's own carved validation set" in card


def test_a_card_adapted_to_the_external_set_s_own_images_does_not_call_that_set_untouched(tmp_path):
    """``best-no-labels/`` was adapted to half A's images: its card said half A "chose nothing", as if it were an independent test."""
    from cxr_tune.modelcard import model_card

    meta = export_folder(tmp_path / "model", epochs_on="val")
    external = {**meta["external"], "selection_set": False, "source": "/data/site"}
    unadapted = {**meta, "external": external}
    adapted = {**meta, "before_adaptation": {**meta, "external": external}, "adaptation": {"source": "/data/site/", "method": "AdaBN"}}
    elsewhere = {**adapted, "adaptation": {"source": "/data/other-site", "method": "AdaBN"}}
    untouched = "- The external set (`/data/site`) chose nothing, but it is one sample of one site."
    assert untouched in model_card(unadapted).splitlines() and untouched in model_card(elsewhere).splitlines()
    assert ("- The external set (`/data/site`) chose nothing in the search, but the model was adapted to its images (without their "
            "labels): its numbers above are selection-set numbers, and it is no independent test of the adapted model.") in model_card(adapted).splitlines()


def test_an_external_set_the_model_was_adapted_to_is_labelled_a_selection_set_in_every_table(tmp_path):
    """``best-no-labels/`` was adapted to half A (the project's selection set) and scored on it, yet its tables called half A plain
    "external validation"; predict and compare already said its numbers there are selection-set numbers (one rule: selection_sources)."""
    from cxr_tune.modelcard import model_card
    from cxr_tune.selection import selection_note

    meta = export_folder(tmp_path / "model", external=True)
    external = {**meta["external"], "selection_set": False, "source": "/data/site"}
    carved = {**meta, "deciding_set": "carved", "external": external, "validation": {**meta["validation"], "selection_set": True}}
    adapted = {**carved, "before_adaptation": carved, "adaptation": {"source": "/data/site", "method": "AdaBN", "threshold_rule": "mixture"}}
    inside = {**adapted, "adaptation": {**adapted["adaptation"], "source": "/data"}}  # the external set lies in the site's folder
    elsewhere = {**adapted, "adaptation": {**adapted["adaptation"], "source": "/data/other-site"}}
    for model, marked in ((carved, False), (adapted, True), (inside, True), (elsewhere, False)):
        card = model_card(model)
        assert (selection_note(model, ["/data/site"]) is not None) == marked
        external_rows = {row[0] for heading in ("Performance", "Subgroups", "Calibration") for row in table(card, heading)
                         if row[0].startswith("external")}
        assert external_rows == {"external validation (selection set)" if marked else "external validation"}, card


def test_an_adapted_card_says_its_numbers_and_the_deciding_set_s_choices_are_the_unadapted_model_s(exported):
    """An adapted card said its subgroups were "at the stored threshold" and that the deciding set chose the threshold and the
    operating points: the site's threshold came from the adaptation rule, and the operating points were dropped."""
    from cxr_tune.modelcard import model_card

    meta, _ = exported  # the external set is the selection set
    moved = ("validation", "external", "test", "threshold", "threshold_rule", "operating_points")
    adapted = {**{key: value for key, value in meta.items() if key not in moved}, "threshold": 0.9, "threshold_rule": "0.9000, mixture",
               "before_adaptation": {key: meta[key] for key in moved},
               "adaptation": {"source": "/data/site", "threshold_rule": "mixture", "unadapted_threshold": meta["threshold"]}}
    card = model_card(adapted)
    assert f"From the Kermany file names, measured before site adaptation, at the unadapted model's threshold {fmt(meta['threshold'])};" in card
    assert "at the stored threshold" not in card
    assert "the threshold and the operating points" not in card and "threshold came from the site adaptation rule `mixture`" in card
    assert "**chose the model and its unadapted threshold** (the site's threshold came from the adaptation rule)" in card
    assert "**chose the model and its thresholds**" in model_card(meta)


def test_the_reproduce_steps_name_the_code_s_commits_and_versions_and_an_older_model_json_says_nothing_of_them(tmp_path):
    """The card identified the code as "cxr_tune 0.1.0" only, a version no commit ever changed."""
    from cxr_tune import __version__
    from cxr_tune.modelcard import model_card
    from cxr_tune.provenance import describe, provenance

    searched = {"commit": "0123abc", "versions": {"python": "3.11.7"}}
    meta = export_folder(tmp_path / "model", provenance=searched)  # what the search's experiment.json recorded
    section = (tmp_path / "model" / "MODEL_CARD.md").read_text().split("## How to reproduce\n", 1)[1]
    assert meta["search"]["provenance"] == searched and meta["provenance"] == provenance()
    assert f"active; cxr_tune {__version__}, commit `0123abc`; seeds" in section
    assert f"Exported with {describe(provenance())}." in section and f"torch {provenance()['versions']['torch']}" in section
    older = model_card({**{key: value for key, value in meta.items() if key != "provenance"}, "search": {**meta["search"], "provenance": None}})
    assert f"active; cxr_tune {__version__}; seeds" in older and "commit" not in older.split("## How to reproduce\n", 1)[1]


def outside_code_spans(line: str) -> str:
    """``line`` without its Markdown code spans (CommonMark: a run of n backticks up to the next run of exactly n)."""
    return re.sub(r"(?<!`)(`+)(?!`).*?(?<!`)\1(?!`)", "", line)


def test_a_folder_name_with_backticks_or_a_newline_stays_inside_its_code_span(exported):
    """``adapt --images "site`<img src=x onerror=alert(1)>`x"``: the backtick closed the span and the card carried the HTML."""
    from cxr_tune.modelcard import model_card

    meta, _ = exported
    site = "/data/site`<img src=x onerror=alert(1)>`x"
    external = {**meta["external"], "source": "/data/ext\n# Not a heading"}
    card = model_card({**meta, "external": external, "before_adaptation": {**meta, "external": external},
                       "adaptation": {"source": site, "from_model": "/models/`best`", "method": "AdaBN"}})
    assert f"from ``{site}`` (model `` /models/`best` ``," in card  # shown as it is, nothing escaped but the fence
    assert "`/data/ext\\n# Not a heading`" in card and "# Not a heading" not in card.splitlines()
    assert not any("<img" in outside_code_spans(line) for line in card.splitlines())


def test_the_card_names_the_prior_the_loss_aimed_at_and_calls_an_uncalibrated_output_a_score():
    """Both real cards said probabilities "match the prevalence of the set the model was trained on" for a model trained with
    balanced class weights; then that they "correspond to equal class priors (half PNEUMONIA)", which is only the weighted
    loss's optimum: results/real/best's balanced threshold is 0.913, and on half A its scores overstate pneumonia (0.5-0.8:
    3 PNEUMONIA of 17). The card names the prior the loss aimed at (adapt's prior-shift starts from it) and says an
    uncalibrated output is a score to read against the threshold and the reliability diagram."""
    from cxr_tune.adapt import probability_prior
    from cxr_tune.modelcard import calibration_section

    base = {"threshold": 0.9128, "train_class_counts": [100, 300],
            "validation": {"class_counts": [40, 60], "calibration": {"ece": 0.1, "brier": 0.1, "bins": 10}}}
    score = ("The output is a score, not a calibrated frequency: read it against the threshold 0.9128 and the reliability diagram below "
             "(`export --calibrate` fits a map that makes it one on the deciding set).")
    balanced = {**base, "hparams": {"class_weighting": "balanced"}, "members": [{"hparams": {"class_weighting": "balanced"}}] * 2}
    text = " ".join(calibration_section(balanced))
    assert ("so training aimed the probabilities at equal class priors (half PNEUMONIA), not at the training prevalence (300 of 400 "
            "training images PNEUMONIA)") in text and score in text
    assert "correspond to equal class priors" not in text and probability_prior(balanced) == pytest.approx(0.5)
    plain = " ".join(calibration_section({**base, "hparams": {"class_weighting": "none"}}))
    assert "training aimed the probabilities at the training prevalence (300 of 400 training images PNEUMONIA)" in plain and score in plain
    calibrated = {**balanced, "calibration": {"method": "platt", "fitted_on": "validation"}}
    text = " ".join(calibration_section(calibrated))
    assert "prevalence of the carved validation set the calibration map was fitted on (60 of 100 images)" in text and score not in text
    assert probability_prior(calibrated) == pytest.approx(0.6)
    mixed = {**balanced, "members": [{"hparams": {"class_weighting": "balanced"}}, {"hparams": {"class_weighting": "none"}}]}
    assert "aimed at no single PNEUMONIA prior" in " ".join(calibration_section(mixed)) and score in " ".join(calibration_section(mixed))


def test_the_patient_grouping_states_every_rule_the_split_applies_and_how_many_patients_each_keyed(exported):
    """The card named only the Kermany file-name patterns: a model trained on a folder-per-patient export (``NORMAL/<patient>/1.png``)
    or on the current Mendeley names was said to be grouped by rules that keyed none of its patients."""
    import pandas as pd

    from cxr_tune.data.sources import patient_keys
    from cxr_tune.modelcard import model_card

    meta, card = exported
    line = next(line for line in card.splitlines() if line.startswith("- Patient grouping:"))
    assert "`personN_bacteria`" in line and "`BACTERIA-<id>-<n>`" in line
    assert "in a sub-folder of a class folder, grouped by that sub-folder, one patient each (CLASS/<patient>/<image>)" in line
    assert "directly in a class folder each treated as their own patient" in line and "keyed them" not in line  # nothing recorded
    keys = patient_keys(pd.Series(["folder:train/NORMAL/p1", "folder:train/NORMAL/p1", "folder:test/NORMAL/p1", "image:train/NORMAL/1.png",
                                   "patient-1003233", "person1_virus"]))
    assert keys == {"Kermany name": 1, "Mendeley id": 1, "sub-folder": 2, "own image": 1}
    recorded = model_card({**meta, "data": {**meta["data"], "patient_keys": keys}})
    assert ("Patients in the experiment's `splits.csv`, by the rule that keyed them: Kermany name 1; Mendeley id 1; sub-folder 2; "
            "own image 1.") in recorded


def test_the_card_says_how_many_val_folder_images_were_set_aside_and_why(tmp_path):
    """Before: every card said "the official, very small `val` folder is set aside unless the search was told to use it", also
    when ``--val-data`` named another folder and the data's val/ held 137 images that went unused without a word."""
    from cxr_tune.modelcard import model_card

    def data_line(card: str) -> str:
        return next(line for line in card.splitlines() if line.startswith("- Excluded:"))

    meta = export_folder(tmp_path / "other", unused={"--val-data named another folder": 137})
    line = data_line((tmp_path / "other" / "MODEL_CARD.md").read_text())
    assert line.endswith("Excluded here: none. Set aside, not used (role `unused`: the data's own `val` folder; distinct images): "
                         "--val-data named another folder: 137.") and "very small" not in line
    export_folder(tmp_path / "no-val", unused={})  # no val/ folder, or it was used
    assert data_line((tmp_path / "no-val" / "MODEL_CARD.md").read_text()).endswith("Excluded here: none.")
    older = {**meta, "data": {key: value for key, value in meta["data"].items() if key != "unused_images"}}  # a model.json from before the record
    assert "is set aside (role `unused`) when it is neither the external set nor" in data_line(model_card(older))


def test_a_test_split_the_model_was_adapted_to_is_labelled_a_selection_set_and_no_independent_test(tmp_path):
    """``adapt --images DATA/test`` is allowed; predict then called the test split's numbers selection-set numbers while the
    card called the test split plain "test", held out."""
    from cxr_tune.modelcard import model_card
    from cxr_tune.selection import selection_note

    meta = export_folder(tmp_path / "model", external=False)
    meta = {**meta, "data": {**meta["data"], "root": "/data/kermany"}}
    adapted = {**meta, "before_adaptation": meta, "adaptation": {"source": "/data/kermany/test", "method": "AdaBN", "threshold_rule": "mixture"}}
    elsewhere = {**adapted, "adaptation": {**adapted["adaptation"], "source": "/data/other-site"}}
    for model, marked in ((meta, False), (adapted, True), (elsewhere, False)):
        card = model_card(model)
        assert (selection_note(model, ["/data/kermany/test"]) is not None) == marked
        test_rows = {row[0] for heading in ("Performance", "Calibration") for row in table(card, heading) if row[0].startswith("test")}
        assert test_rows == ({"test (selection set)"} if marked else {"test"}), (marked, test_rows)
        assert ("- The model was adapted to the test split's images (without their labels): its numbers above are selection-set numbers, "
                "and it is no independent test of the adapted model." in card.splitlines()) == marked
        assert ("held out but comes from the same source" in card) != marked


def test_a_model_chosen_before_every_requested_trial_trained_says_how_many_had(tmp_path):
    """A search that a time budget ended, or that was interrupted and exported, gave a card saying "4 trial(s) requested"
    alone: a reader took the model for the best of 4 when 2 had trained."""
    from cxr_tune.modelcard import model_card

    meta = export_folder(tmp_path / "cut", trials_trained=2, trials_unfinished=1)
    assert meta["search"]["trials_trained"] == 2 and meta["search"]["trials_unfinished"] == 1
    card = (tmp_path / "cut" / "MODEL_CARD.md").read_text()
    assert ("4 trial(s) requested, 2 of them trained when this model was exported (1 had not ended: "
            "the search was stopped, and a resumed search may choose another model)") in card
    whole = export_folder(tmp_path / "whole", trials_trained=4, trials_unfinished=0)
    assert "4 trial(s) requested, all 4 trained;" in model_card(whole)
    older = {**whole, "search": {k: v for k, v in whole["search"].items() if not k.startswith("trials_")}}  # before the record
    assert "4 trial(s) requested;" in model_card(older) and "trained when" not in model_card(older)
    failed = {**whole, "search": {**whole["search"], "trials_trained": 3, "trials_failed": 1}}  # one failed: not a search cut short
    assert ("4 trial(s) requested, 3 of them trained when this model was exported (1 failed: "
            "a failed trial is not a candidate, even after training epochs; the report's Failed trials section has each error)") in model_card(failed)


def test_the_card_says_how_the_input_s_pixels_are_made_from_a_16_bit_image(exported):
    """Before: "from a 64 x 64 grayscale image", no word that a 16-bit image is min-max scaled, not clipped by Pillow's
    convert("L") (which turns everything above 255 white), for a user who copies model.onnx into another tool."""
    meta, card = exported
    details = card.split("\n## Model details\n")[1].split("\n## ")[0]
    assert meta["preprocessing"]["steps"] in details and "16/32-bit modes (I;16, I, F) min-max scaled" in details  # the steps say it
    assert "`cxr_tune.data.imaging.decode_gray`" in details and "convert(\"L\")" in details


def test_a_subgroup_with_no_image_in_a_set_is_left_out_of_its_table():
    """Synthetic data named no NORMAL2-IM- file: each set had a row "normal, NORMAL2-IM- files | specificity | 0 | 0 | n/a"."""
    from cxr_tune.modelcard import subgroup_section

    def groups(im: int, im2: int) -> dict[str, Any]:
        return {"normal_im": {"description": "normal, IM- files", "rate": "specificity", "n": im, "correct": im, "value": 1.0 if im else math.nan,
                              "ci95": [0.5, 1.0] if im else None},
                "normal2_im": {"description": "normal, NORMAL2-IM- files", "rate": "specificity", "n": im2, "correct": im2,
                               "value": 1.0 if im2 else math.nan, "ci95": [0.5, 1.0] if im2 else None}}

    meta = {"deciding_set": "external", "validation": {"subgroups": groups(14, 0)}, "external": {"subgroups": groups(0, 9)}}
    lines = subgroup_section(meta)
    rows = [[cell.strip() for cell in line.strip("|").split("|")][:4] for line in lines if line.startswith("| ") and "---" not in line][1:]
    assert rows == [["carved validation", "normal, IM- files", "specificity", "14"],
                    ["external validation (selection set)", "normal, NORMAL2-IM- files", "specificity", "9"]]
    assert "A group with no image in a set is left out." in " ".join(lines)
    assert "no table" in " ".join(subgroup_section({"deciding_set": "external", "validation": {"subgroups": groups(0, 0)}}))


def test_the_input_line_gives_every_decode_step_for_this_code_s_pixels_and_keeps_its_words_for_another_version(exported):
    """Before: "8-bit (16-bit images min-max scaled; ...)" alone: a tool written from it (convert("L"), resize) left out the
    reduced-scale JPEG decode, EXIF orientation and reducing_gap, and flipped 1 of 40 real decisions."""
    meta, card = exported
    line = next(line for line in card.splitlines() if line.startswith("- Input pixels:"))
    steps = ['image.draft("L", (16, 16))', "exif_transpose", "min-max scaled", "BILINEAR, reducing_gap=3.0"]
    assert sorted(steps, key=line.index) == steps and meta["preprocessing"]["steps"] in line
    recorded = {**meta, "preprocessing": {k: v for k, v in meta["preprocessing"].items() if k != "steps"} | {"preprocess_version": 3}}
    assert line in model_card(recorded)  # recorded without the steps: this code's, since version 3 decodes image files alike
    older = {**recorded, "preprocessing": {**recorded["preprocessing"], "preprocess_version": 1}}
    older_line = next(line for line in model_card(older).splitlines() if line.startswith("- Input pixels:"))
    assert "exif_transpose" in older_line and "RGBA/LA/PA composited over opaque black" in older_line  # version 1's own steps
    committed = json.loads(REAL_BEST.read_text())  # version 1, recorded without the steps: its card keeps them
    committed_line = next(line for line in model_card(committed).splitlines() if line.startswith("- Input pixels:"))
    assert "RGBA/LA/PA composited over opaque black" in committed_line and committed_line in (REAL_BEST.parent / "MODEL_CARD.md").read_text()
    newer = {**recorded, "preprocessing": {**recorded["preprocessing"], "preprocess_version": 99}}
    assert "exif_transpose" not in model_card(newer) and "16-bit images min-max scaled" in model_card(newer)


REAL_BEST = Path(__file__).resolve().parents[1] / "results" / "real" / "best" / "model.json"


def test_a_final_fit_s_line_says_its_length_is_the_space_s_setting_not_that_the_deciding_set_chose_nothing():
    """results/real/best: half A chose the final fit's 32 epochs (the space's comment says so), yet the card said each run was
    "judged at its last epoch (none picked on the deciding set)"."""
    meta = json.loads(REAL_BEST.read_text())
    line = next(line for line in model_card(meta).splitlines() if line.startswith("- Final fit:"))
    assert "none picked on the deciding set" not in line
    assert "32 epochs, the space's `final_fit_epochs` set before" in line and "/work/run/search_spaces/real.yaml" in line, line


def test_the_operating_points_say_in_words_what_a_normal_call_at_the_shipped_point_misses():
    """The card gave sensitivity 0.842 in a table; nothing said that about 1 pneumonia in 6 of carved validation, and viral
    ones more often, is called NORMAL at the shipped point, nor which points suit a use where a miss costs more."""
    meta = json.loads(REAL_BEST.read_text())
    section = model_card(meta).split("## Operating points", 1)[1].split("\n## ", 1)[0]
    assert ("carved validation: 91 of 576 pneumonias called NORMAL (sensitivity 0.8420, about 1 in 6), viral pneumonia more "
            "often: 53 of 196 (0.7296 [0.663, 0.787])") in section, section
    assert "external validation (selection set): 12 of 195 pneumonias called NORMAL (sensitivity 0.9385, about 1 in 16)" in section
    assert "`sens95` or `sens98` call fewer of them NORMAL" in section
    at = meta["validation"]["operating_points"]["balanced"]
    at.update(tp=at["tp"] + at["fn"] - 10, fn=10)  # computed from the counts, not typed
    assert "10 of 576 pneumonias called NORMAL" in model_card(meta)


def test_the_data_line_gives_the_fingerprint_of_the_images_and_roles_as_a_train_run_records_it(exported):
    """Before: the card gave the data's path and counts only, while train's run.json said "400 images, sha256 bf8774b6d80c"."""
    meta, _ = exported
    card = model_card({**meta, "data": {**meta["data"], "fingerprint": "400 images, sha256 bf8774b6d80c"}})
    [line] = [line for line in card.splitlines() if line.startswith("- Images (NORMAL / PNEUMONIA")]
    assert line.endswith("; fingerprint `400 images, sha256 bf8774b6d80c` (every image's content hash and role in the experiment's "
                         "`splits.csv`, as a `train` run's `run.json` records its data).")
    assert "fingerprint" not in model_card(meta)  # an export from before the record


def test_the_reproduce_steps_rerun_the_search_into_a_new_experiment_and_say_what_bit_for_bit_needs(exported):
    """Before: step 1 was the saved command as typed (``python -m cxr_tune.search ... --name s0a``): run, it was refused ("experiment
    ... already exists; continue it with ... --resume"), ``python`` needed the venv active, and nothing said what an equal rerun needs."""
    from cxr_tune.modelcard import EXACTNESS

    search = {"command": "python -m cxr_tune.search --space smoke --seed 0 --name s0a --storage ../res", "command_cwd": "/home/me/runs",
              "experiment": "/home/res/s0a", "trial_resources": {"workers": 1, "threads": 2, "gpus_per_worker": 0.0}}
    meta, _ = exported
    section = model_card({**meta, "search": search}).split("## How to reproduce\n", 1)[1]
    assert ("\n1. `cd /home/me/runs && python -m cxr_tune.search --space smoke --seed 0 --name s0a-repro --storage ../res` "
            "(with the project's .venv active; a new experiment, `/home/res/s0a-repro`; cxr_tune") in section
    assert "\n2. `python -m cxr_tune.export /home/res/s0a-repro " in section  # then the flags that export this model
    assert ("Bit for bit only on the same machine with the same image cache and thread count: this search ran 2 torch thread(s) per trial "
            f"(`trial_resources.threads` in `experiment.json`); the README's *Exactness*: \"{EXACTNESS}\" (on a GPU, with `--deterministic`).") in section
    readme = " ".join((Path(__file__).parents[1] / "README.md").read_text().split())
    assert EXACTNESS in readme  # quoted, not paraphrased
    older = {"command": "python -m cxr_tune.search --space smoke --name=s0a", "experiment": "s3://b/runs/s0a"}  # before command_cwd, threads
    section = model_card({**meta, "search": older}).split("## How to reproduce\n", 1)[1]
    assert ("\n1. `python -m cxr_tune.search --space smoke --name s0a-repro` (with the project's .venv active, in the folder the search "
            "ran in: its relative paths are relative to it, which this record does not name; a new experiment, `s3://b/runs/s0a-repro`;") in section
    assert "\n2. `python -m cxr_tune.export s3://b/runs/s0a-repro " in section and "its thread count is not recorded" in section
    committed = model_card(json.loads(REAL_BEST.read_text())).split("## How to reproduce\n", 1)[1]  # its record names no folder
    assert "--storage results/real --name external-repro --time-budget 40` (with the project's .venv active" in committed


def test_an_export_step_without_a_recorded_experiment_folder_says_what_experiment_to_name():
    """Before: results/real/best's card said "2. `python -m cxr_tune.export EXPERIMENT`", a placeholder nothing explained."""
    committed = model_card(json.loads(REAL_BEST.read_text())).split("## How to reproduce\n", 1)[1]  # its record names no folder
    assert ("\n2. `python -m cxr_tune.export EXPERIMENT` (EXPERIMENT: the new experiment folder step 1 writes, its `--name` under its "
            "`--storage`)\n") in committed
    meta = json.loads(REAL_BEST.read_text())
    section = model_card({**meta, "search": {}}).split("## How to reproduce\n", 1)[1]  # no command either
    assert ("\n1. `python -m cxr_tune.export EXPERIMENT` (EXPERIMENT: the folder of the search this model was exported from, which "
            "`model.json` does not record)\n") in section


def test_a_rerun_s_export_step_neither_replaces_this_model_nor_names_a_trial_id_the_rerun_lacks(exported):
    """Step 2 passed this export's own flags to the rerun's export: --out replaced the model the card describes (results/real/best
    itself, followed to the letter) and --trial named an id the rerun, drawing new ones, does not have."""
    from cxr_tune.modelcard import RERUN_TRIAL, export_flags

    meta, _ = exported
    search = {"command": "python -m cxr_tune.search --space smoke --name s0a", "command_cwd": "/home/me", "experiment": "/home/res/s0a"}
    given = {"trial": "61527ff0", "out": "results/real/best/", "tta": 1, "calibrate": "none"}
    section = model_card({**meta, "search": search, "export_options": given}).split("## How to reproduce\n", 1)[1]
    step = next(line for line in section.splitlines() if line.startswith("2. "))
    assert f"`python -m cxr_tune.export /home/res/s0a-repro --trial {RERUN_TRIAL} --out results/real/best-repro` (" in step
    assert "61527ff0" not in step and "trial ids are new each run" in step
    assert export_flags({"export_options": given}) == " --trial 61527ff0 --out results/real/best/"  # the export itself again: unchanged
