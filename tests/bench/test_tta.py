"""bench tta scores an export's members with several test-time views on a labelled folder, against the export as it ships."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_tune.bench.tta import labelled_images
from cxr_tune.data.imaging import decode_gray
from cxr_tune.modelfile import load_members, serving_model, torch_scores
from cxr_tune.selection import choose_threshold

from tests.conftest import ROOT, call_cli
from tests.model_exports import export_folder, kermany_set, save_images


def test_views_are_scored_against_the_shipped_model_on_each_distinct_labelled_image(tmp_path):
    meta = export_folder(tmp_path / "model")
    images = save_images(kermany_set(60, 4), tmp_path / "site")
    files = sorted((images / "NORMAL").iterdir()) + sorted((images / "PNEUMONIA").iterdir())
    decoded, labels = [decode_gray(f, meta["preprocessing"]["image_size"]) for f in files], [int(f.parent.name == "PNEUMONIA") for f in files]
    first = next((images / "NORMAL").iterdir())
    shutil.copy(first, images / "NORMAL" / "copy.png")  # byte-identical: counted once
    (images / "notes").mkdir()
    shutil.copy(first, images / "notes" / "unlabelled.png")
    (images / "PNEUMONIA" / "gone.png").symlink_to(tmp_path / "nowhere.png")  # listed, not a traceback

    done = call_cli("cxr_tune.bench", "tta", str(tmp_path / "model"), "--images", str(images), "--views", "1", "3", "--out", str(tmp_path / "out"))

    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "out" / "tta_model.json").read_text())
    assert record["n"] == 60 and sorted(line.split(":")[0].rsplit("/", 1)[-1] for line in record["left_out"]) == ["copy.png", "gone.png", "unlabelled.png"]
    one, three = record["rows"]
    assert (one["views"], three["views"]) == (1, 3)
    assert one["auc_minus_shipped"] == 0 and one["auc_minus_shipped_ci"] is None  # the export ships one view: the same scores, no interval to draw
    ci = three["auc_minus_shipped_ci"]  # None where three views rank these images as one does (every resample's difference 0)
    assert 0.5 < three["auc"] <= 1 and (ci[0] <= three["auc_minus_shipped"] <= ci[1] if ci else three["auc_minus_shipped"] == 0)
    assert 0 < three["threshold"] < 1 and 0 <= three["balanced_accuracy"] <= 1
    shipped_with_3 = torch_scores(serving_model(load_members(str(tmp_path / "model"), meta), 3).eval(), np.stack(decoded))
    # what export --tta 3 would score (its threshold, unlike its AUC, differs from one view's on these images)
    assert three["auc"] == pytest.approx(roc_auc_score(labels, shipped_with_3), abs=1e-9)
    assert three["threshold"] == pytest.approx(choose_threshold(labels, shipped_with_3, *(meta["hparams"][k] for k in ("criterion", "min_sensitivity", "threshold_tolerance"))), abs=1e-6)
    assert three["threshold"] != pytest.approx(one["threshold"], abs=1e-3)
    views = record["single_views"]  # each of the first 3 views alone; the first is the unchanged image
    assert [v["view"] for v in views] == [1, 2, 3] and views[0]["mean_change"] == 0 and views[0]["flipped"] == 0
    assert all(0 <= v["flipped"] <= 1 and 0.5 < v["auc"] <= 1 for v in views)
    text = (tmp_path / "out" / "tta_model.md").read_text()
    assert "Selection-set numbers" in text and "| 3 " in text and "60 distinct images" in text and "Each view alone" in text
    assert "| +0.0000 [n/a] " in text and "minus shipped +0.0000 [n/a]" in done.stdout  # before: a TypeError on the withheld interval


def test_images_are_counted_as_predict_counts_them_a_copy_filed_under_both_classes_left_out(tmp_path):
    """Before: bench tta kept the first of two byte-identical files filed under NORMAL and PNEUMONIA (6 images here) where
    predict's metrics leave both out, their label unknown (5)."""
    images = save_images(kermany_set(6, 4, pneumonia_share=0.5, kermany_names=False), tmp_path / "site")
    normal, pneumonia = sorted((images / "NORMAL").iterdir()), len(list((images / "PNEUMONIA").iterdir()))
    shutil.copy(normal[0], images / "PNEUMONIA" / "also_normal.png")

    x, y, left_out = labelled_images(str(images), 32)

    assert (len(y), int(y.sum()), x.shape) == (5, pneumonia, (5, 32, 32))
    assert sorted(line.split(":")[0].rsplit("/", 1)[-1] for line in left_out) == ["also_normal.png", normal[0].name]
    assert all("filed under both classes" in line for line in left_out)


def test_what_it_cannot_score_is_one_line(tmp_path):
    export_folder(tmp_path / "model")
    images = save_images(kermany_set(30, 4), tmp_path / "site")

    too_many = call_cli("cxr_tune.bench", "tta", str(tmp_path / "model"), "--images", str(images), "--views", "12", "--out", str(tmp_path))
    assert too_many.returncode == 2 and "argument --views: 12 must be between 1 and 9" in too_many.stderr  # while parsing, before the images load

    shutil.rmtree(images / "PNEUMONIA")
    one_class = call_cli("cxr_tune.bench", "tta", str(tmp_path / "model"), "--images", str(images), "--out", str(tmp_path))
    assert one_class.returncode == 2 and "both classes" in one_class.stderr and str(images) in one_class.stderr

    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    (tmp_path / "model" / "model.json").write_text(json.dumps({**meta, "tta_views": "x"}))  # an edit
    edited = call_cli("cxr_tune.bench", "tta", str(tmp_path / "model"), "--images", str(images), "--out", str(tmp_path))
    assert edited.returncode == 2 and "model.json': tta_views is 'x'" in edited.stderr and "Traceback" not in edited.stderr

    (tmp_path / "model" / "weights.safetensors").unlink()
    no_weights = call_cli("cxr_tune.bench", "tta", str(tmp_path / "model"), "--images", str(images), "--out", str(tmp_path))
    assert no_weights.returncode == 2 and "weights.safetensors" in no_weights.stderr and "Traceback" not in no_weights.stderr


def test_folder_names_with_backticks_stay_inside_their_code_spans_in_the_report(tmp_path):
    """A model or image folder named with backticks closed its code span, and what followed rendered as Markdown or HTML."""
    from tests.test_modelcard import outside_code_spans

    model, site = tmp_path / "m`<b>x</b>`odel", tmp_path / "si`<img src=x>`te"
    export_folder(model)
    save_images(kermany_set(30, 4), site)

    done = call_cli("cxr_tune.bench", "tta", str(model), "--images", str(site), "--views", "1", "--out", str(tmp_path / "out"))

    assert done.returncode == 0, done.stderr[-2000:]
    text = next((tmp_path / "out").glob("tta_*.md")).read_text()
    assert f"``{model}``" in text and f"``{site}``" in text  # shown as they are
    assert not any("<img" in outside_code_spans(line) or "<b>" in outside_code_spans(line) for line in text.splitlines())


def test_another_model_or_other_images_than_the_committed_result_s_need_out_before_any_work(tmp_path):
    """Before: without --out any model's result replaced the committed results/benchmarks/tta_best.md (an export's folder is best/)."""
    export_folder(tmp_path / "best")
    images = save_images(kermany_set(30, 4), tmp_path / "site")
    done = call_cli("cxr_tune.bench", "tta", str(tmp_path / "best"), "--images", str(images))
    assert done.returncode == 2 and f"pass --out FOLDER for '{tmp_path / 'best'}'" in done.stderr, done.stderr[-2000:]
    assert "results/benchmarks, holds the committed result of results/real/best on half A only" in done.stderr
    # The committed model on other images too (it replaced tta_best.md as well); with --out, past this check, to the missing images.
    committed = str(ROOT / "results/real/best")
    other = call_cli("cxr_tune.bench", "tta", committed, "--images", str(images))
    assert other.returncode == 2 and f"pass --out FOLDER for '{committed}' on '{images}'" in other.stderr, other.stderr[-2000:]
    missing = call_cli("cxr_tune.bench", "tta", committed, "--images", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 2 and "image folder" in missing.stderr and "--out" not in missing.stderr, missing.stderr
