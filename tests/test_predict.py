"""``python -m cxr_tune.predict``: metrics a folder of one class cannot measure print as n/a, not nan."""

from __future__ import annotations

import pandas as pd

from cxr_tune.predict import evaluation
from tests.conftest import call_cli, kermany_folder
from tests.exports import write_export


def test_one_class_prints_auc_na_not_nan():
    frame = pd.DataFrame({"path": ["a", "b", "c"], "probability": [0.2, 0.7, 0.9], "prediction": [0, 1, 1], "label": [1, 1, 1]})
    text = evaluation(frame, 0.5)
    assert "AUC n/a" in text and "specificity n/a" in text
    assert "nan" not in text.lower()
    assert "sensitivity 0.6667" in text


def test_both_classes_print_the_auc():
    frame = pd.DataFrame({"path": list("abcd"), "probability": [0.1, 0.4, 0.6, 0.9], "prediction": [0, 0, 1, 1], "label": [0, 1, 0, 1]})
    assert "AUC 0.7500" in evaluation(frame, 0.5)


def test_predict_on_a_one_class_test_folder(tmp_path):
    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "chest_xray", {"test": {"PNEUMONIA": ["person1_virus_1.jpeg", "person2_virus_2.jpeg"]}})
    done = call_cli("cxr_tune.predict", "--model", str(model / "model.onnx"), str(data / "test"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "Labelled images: 2 (NORMAL 0, PNEUMONIA 2)" in done.stdout and "AUC n/a" in done.stdout
    assert "nan" not in done.stdout
