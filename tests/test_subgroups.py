"""Subgroups from Kermany file names: which file is in which group, the rates with counts and Wilson
intervals, and where they show (model.json per set, predict's summary); none for other names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxr_tune.predict import describe, labelled_metrics
from cxr_tune.subgroups import subgroup_of, subgroup_rates
from cxr_tune.train.metrics import wilson_interval
from tests.conftest import call_cli
from tests.model_exports import export_folder, kermany_set, save_images


@pytest.mark.parametrize(("path", "label", "group"), [
    ("train/PNEUMONIA/person1000_bacteria_2931.jpeg", 1, "bacterial"),
    ("PNEUMONIA/person12_virus_44.jpeg", 1, "viral"),
    ("NORMAL/IM-0115-0001.jpeg", 0, "normal_im"),
    ("NORMAL/NORMAL2-IM-0123-0001.jpeg", 0, "normal2_im"),
    ("C:\\data\\NORMAL\\NORMAL2-IM-0123-0001.jpeg", 0, "normal2_im"),
    ("NORMAL/person12_virus_44.jpeg", 0, None),  # a name that disagrees with its folder's class is in no group
    ("PNEUMONIA/scan_17.png", 1, None),
    ("NORMAL/notIM-0115-0001.jpeg", 0, None),
    # The current Mendeley download's names: its pneumonia types are groups, its normals carry no batch.
    ("train/PNEUMONIA/BACTERIA-1351146-0001.jpeg", 1, "bacterial"),
    ("PNEUMONIA/VIRUS-1005001-0002.jpeg", 1, "viral"),
    ("NORMAL/NORMAL-1003233-0001.jpeg", 0, None),
])
def test_a_file_is_in_the_group_its_name_and_class_say(path, label, group):
    assert subgroup_of(path, label) == group


def test_rates_counts_and_wilson_intervals_per_group():
    paths = ["P/person1_bacteria_1.jpeg"] * 10 + ["P/person2_virus_1.jpeg"] * 5 + ["N/IM-0001-0001.jpeg"] * 8
    labels = [1] * 15 + [0] * 8
    predictions = [1] * 8 + [0] * 2 + [1] * 5 + [0] * 6 + [1] * 2
    groups = subgroup_rates(paths, labels, predictions)
    bacterial, viral, normal, normal2 = (groups[g] for g in ("bacterial", "viral", "normal_im", "normal2_im"))
    assert (bacterial["rate"], bacterial["n"], bacterial["correct"], bacterial["value"]) == ("sensitivity", 10, 8, 0.8)
    assert bacterial["ci95"] == pytest.approx([0.490, 0.943], abs=1e-3)  # the textbook Wilson interval of 8/10
    assert viral["value"] == 1.0 and viral["ci95"][1] == pytest.approx(1.0) and viral["ci95"][0] < 0.6  # 5 of 5 is not certainty
    assert (normal["rate"], normal["n"], normal["correct"]) == ("specificity", 8, 6)
    assert normal2["n"] == 0 and np.isnan(normal2["value"]) and normal2["ci95"] is None
    assert subgroup_rates(["a/scan1.png", "b/scan2.png"], [0, 1], [0, 1]) is None
    assert wilson_interval(0, 0) is None


def test_export_stores_subgroups_per_set_and_none_without_kermany_names(tmp_path):
    meta = export_folder(tmp_path / "kermany")
    frame = pd.read_csv(tmp_path / "kermany" / "test_predictions.csv")
    for key in ("validation", "external", "test"):
        groups = meta[key]["subgroups"]
        assert sum(groups[g]["n"] for g in ("bacterial", "viral")) == meta[key]["class_counts"][1]
        assert sum(groups[g]["n"] for g in ("normal_im", "normal2_im")) == meta[key]["class_counts"][0]
    viral = frame[frame["path"].str.contains("_virus_")]
    assert meta["test"]["subgroups"]["viral"]["correct"] == int(viral["prediction"].sum())  # at the stored threshold
    plain = export_folder(tmp_path / "plain", kermany_names=False)
    assert all("subgroups" not in plain[key] for key in ("validation", "external", "test"))


def test_predict_prints_the_subgroups_of_a_labelled_folder(tmp_path):
    frame = pd.DataFrame({"path": ["x/PNEUMONIA/person1_virus_1.jpeg", "x/NORMAL/IM-0001-0001.jpeg"], "probability": [0.9, 0.2],
                          "prediction": [1, 0], "label": [1, 0]})
    text = describe(labelled_metrics(frame, 0.5), "balanced")
    assert "viral pneumonia" in text and "(1 of 1)" in text
    assert "NORMAL2-IM-" not in text and "(0 of 0)" not in text and "a group with no image is left out" in text  # as the card leaves it out
    assert "subgroups" not in describe(labelled_metrics(frame.assign(path=["x/PNEUMONIA/a.png", "x/NORMAL/b.png"]), 0.5), "balanced")

    export_folder(tmp_path / "model")
    folder = save_images(kermany_set(40, 5), tmp_path / "images")
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(folder), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "subgroups (from file names; 95 % Wilson intervals; a group with no image is left out):" in done.stdout and "bacterial pneumonia" in done.stdout
    assert "calibration: ECE" in done.stdout and "Brier" in done.stdout
