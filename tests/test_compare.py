"""``python -m cxr_tune.compare``: models on the same labelled images, their paired differences, and one-line refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_tune.set_metrics import INTERVAL_METHODS, PAIRED_METHODS, bootstrap_intervals, paired_differences
from tests.conftest import call_cli, kermany_folder, write_image
from tests.exports import write_export


@pytest.fixture()
def site(tmp_path):
    return kermany_folder(tmp_path / "site", {"test": {"PNEUMONIA": [f"person{i}_bacteria_{i}.jpeg" for i in range(14)],
                                                       "NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(11)]}}) / "test"


def test_two_models_on_the_same_images_differ_only_where_their_thresholds_do(tmp_path, site):
    (site / "NORMAL" / "notes.txt").write_text("not an image")
    own = write_export(tmp_path / "own", threshold=0.5)
    everything = write_export(tmp_path / "everything", threshold=0.0)  # the same scores, every image called PNEUMONIA
    done = call_cli("cxr_tune.compare", "--model", str(own), "--model", str(everything), str(site), "--metrics", str(tmp_path / "out" / "c.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "c.json").read_text())
    assert result["images"] == 25 and result["class_counts"] == [11, 14] and list(result["skipped"]) == [str(site / "NORMAL" / "notes.txt")]
    mine, theirs = result["models"][str(everything)], result["models"][str(own)]
    assert mine["sensitivity"] == 1.0 and mine["specificity"] == 0.0 and mine["auc"] == theirs["auc"]
    difference = result["differences"][str(everything)]
    assert difference["auc"] == [0.0, None]  # the same ranking: every resample gave 0, which bounds nothing
    assert result["differences_withheld"][str(everything)]["auc"] == "every resample gave 0.0000"
    assert "AUC: every resample gave 0.0000" in done.stdout and "+0.0000 [n/a]" in done.stdout
    assert "the two models' scores too alike" in done.stdout and "Newcombe intervals still hold" in done.stdout  # not the rates' Wilson ones
    assert difference["sensitivity"][0] == pytest.approx(1.0 - theirs["sensitivity"])
    assert difference["specificity"][0] == pytest.approx(-theirs["specificity"])
    assert list(result["differences"]) == [str(everything)] and "Minus " + str(own) in done.stdout and "notes.txt: " in done.stdout
    assert INTERVAL_METHODS in done.stdout


def test_images_are_counted_as_export_and_predict_count_a_set(tmp_path, site):
    """compare counted a byte-identical copy twice where predict and export count it once (half A: 315 files, 312 images)."""
    import shutil

    shutil.copy(site / "PNEUMONIA" / "person0_bacteria_0.jpeg", site / "PNEUMONIA" / "person0_bacteria_99.jpeg")
    shutil.copy(site / "NORMAL" / "IM-0000-0001.jpeg", site / "PNEUMONIA" / "person50_virus_50.jpeg")  # filed under both
    models = [str(write_export(tmp_path / name)) for name in ("a", "b")]
    done = call_cli("cxr_tune.compare", "--model", models[0], "--model", models[1], str(site), "--metrics", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["images"] == 24 and result["class_counts"] == [10, 14]
    assert result["copies_counted_once"] == 1 and result["filed_under_both"] == 2
    assert "1 byte-identical copy of another labelled file counted once" in done.stdout
    predicted = call_cli("cxr_tune.predict", "--model", models[0], str(site), "--quiet", "--metrics", str(tmp_path / "p.json"))
    assert json.loads((tmp_path / "p.json").read_text())["class_counts"] == result["class_counts"]


@pytest.mark.parametrize(("args", "message"), [
    (["--model", "A"], "give --model two or more times"),
    (["--model", "A", "--model", "A/"], "--model names the same model twice"),
    (["--model", "A", "--model", "A/model.onnx"], "--model names the same model twice"),
    (["--model", "A", "--model", "B", "--operating-point", "sens99"], "/a: unknown operating point 'sens99'"),
    (["--model", "A", "--model", "B", "--only-pneumonia"], "compare needs readable images of both classes"),
    (["--model", "A", "--model", "B", "--unlabelled"], "compare needs labelled images"),
])
def test_what_cannot_be_compared_is_one_line_and_status_2(tmp_path, site, args, message):
    paths = {"A": str(write_export(tmp_path / "a")), "B": str(write_export(tmp_path / "b"))}
    folder = {"--only-pneumonia": site / "PNEUMONIA", "--unlabelled": kermany_folder(tmp_path / "u", {"x": {"y": ["a.jpeg"]}})}
    inputs = [str(folder[a]) for a in args if a in folder] or [str(site)]
    paths["A/"] = paths["A"] + "/"
    paths["A/model.onnx"] = paths["A"] + "/model.onnx"
    done = call_cli("cxr_tune.compare", *[paths.get(a, a) for a in args if a not in folder], *inputs)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_paired_interval_is_narrower_than_either_models_own():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    signal = labels + rng.normal(0, 1.0, 300)
    better, worse = signal + rng.normal(0, 0.2, 300), signal + rng.normal(0, 0.6, 300)
    value, (low, high) = paired_differences(labels, better, 0.5, worse, 0.5)["auc"]
    own = [bootstrap_intervals(labels, scores, 0.5)["auc"] for scores in (better, worse)]
    assert 0 < low < value < high  # a difference these images can show, though the two models' own intervals overlap
    assert own[1][1] > own[0][0] and high - low < 0.7 * min(b - a for a, b in own)


def test_each_image_is_decoded_once_per_image_size_the_models_take_not_once_per_model(tmp_path, site, monkeypatch):
    import cxr_tune.predict
    from cxr_tune.compare import compare
    from cxr_tune.data.imaging import try_decode_checked

    models = [str(write_export(tmp_path / "a")), str(write_export(tmp_path / "b", threshold=0.3)), str(write_export(tmp_path / "c", image_size=24))]
    sizes: list[int] = []
    monkeypatch.setattr(cxr_tune.predict, "try_decode_checked", lambda path, size, name=None: sizes.append(size) or try_decode_checked(path, size, name=name))
    result = compare(models, [str(site)])
    assert sorted(sizes) == [16] * 25 + [24] * 25  # before: 16 for each of the two models that take it
    assert result["images"] == 25 and result["models"][models[1]]["threshold_used"] == 0.3


def test_an_image_one_model_could_not_read_is_left_out_for_every_model(tmp_path, site, monkeypatch):
    """The models are compared on the images all of them read: a file the second model skips (as one whose decoding fails
    at its image size only) leaves the comparison for the first model too, and is listed as skipped."""
    import cxr_tune.compare
    from cxr_tune.compare import compare

    lost = str(site / "NORMAL" / "IM-0003-0001.jpeg")
    predict_each = cxr_tune.compare.predict_each

    def second_skips_one(models, files, thresholds, **kwargs):
        tables = predict_each(models, files, thresholds, **kwargs)
        frame, unread = tables[1]
        gone = frame["path"] == lost
        tables[1] = (frame[~gone], pd.concat([unread, pd.DataFrame({"path": [lost], "reason": ["cannot identify image file"]})]))
        return tables

    monkeypatch.setattr(cxr_tune.compare, "predict_each", second_skips_one)
    models = [str(write_export(tmp_path / "a")), str(write_export(tmp_path / "b", threshold=0.3))]
    result = compare(models, [str(site)])
    assert result["images"] == 24 and result["class_counts"] == [10, 14] and lost in result["skipped"]
    assert [metrics["n"] for metrics in result["models"].values()] == [24, 24]


def test_names_that_differ_only_in_bytes_that_are_not_utf8_stay_two_images(tmp_path, site):
    """Both names became ``IM-caf\ufffd-0001.jpeg``: one key for two images (8 images counted, 9 scored) and one of two
    unreadable files lost from the list; then a name holding the four characters \\xe9 met the escaped byte. Each is
    its own, printed with its bytes escaped."""
    import os

    normal = bytes(site / "NORMAL")
    for seed, byte in enumerate((b"\xe8", b"\xe9")):  # images of their own (a byte-identical copy would count once)
        write_image(Path(os.fsdecode(normal + b"/IM-caf" + byte + b"-0001.jpeg")), seed=100 + seed, fmt="JPEG")
        (site / "NORMAL" / os.fsdecode(b"notes" + byte + b".txt")).write_text("not an image")
    write_image(site / "NORMAL" / "IM-caf\\xe9-0001.jpeg", seed=102, fmt="JPEG")  # the escaped form, written out
    own, other = write_export(tmp_path / "own", threshold=0.5), write_export(tmp_path / "other", threshold=0.3)
    done = call_cli("cxr_tune.compare", "--model", str(own), "--model", str(other), str(site), "--metrics", str(tmp_path / "c.json"))

    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["images"] == 28 and result["class_counts"] == [14, 14]
    assert sorted(result["skipped"]) == [str(site / "NORMAL" / "notes\\xe8.txt"), str(site / "NORMAL" / "notes\\xe9.txt")]
    assert "notes\\xe8.txt: " in done.stdout and "notes\\xe9.txt: " in done.stdout


def test_compare_on_a_models_own_selection_set_says_so_for_that_model(tmp_path, site):
    chose = write_export(tmp_path / "chose", external={"source": str(site), "selection_set": True})
    other = write_export(tmp_path / "other")
    done = call_cli("cxr_tune.compare", "--model", str(other), "--model", str(chose), str(site))
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stdout.splitlines() if "selection-set numbers" in line]
    assert notes == [f"Note ({chose}): {site} is this model's external validation set (model.json external.source), which chose the model: "
                     "these are selection-set numbers for this model, optimistic, not an independent test."]


@pytest.mark.parametrize("synthetic", [1, 2])
def test_the_synthetic_data_note_agrees_with_how_many_models_it_names(tmp_path, site, synthetic):
    """Before: "Note: A, B, C trained on SYNTHETIC data: its outputs mean nothing" for three models."""
    models = [write_export(tmp_path / f"m{i}", data={"synthetic": i < synthetic}) for i in range(3)]
    done = call_cli("cxr_tune.compare", *(arg for model in models for arg in ("--model", str(model))), str(site))
    assert done.returncode == 0, done.stderr
    names = ", ".join(str(model) for model in models[:synthetic])
    outputs = "its outputs" if synthetic == 1 else "their outputs"
    assert f"Note: {names} trained on SYNTHETIC data: {outputs} mean nothing for real patients." in done.stderr, done.stderr


def test_the_paired_intervals_say_how_many_were_shown_and_that_none_is_adjusted_for_the_others(tmp_path, site):
    """Three models printed 2 x 4 paired intervals, each headed "an interval that excludes 0 is a difference these images can
    show", with no word that some of them will exclude 0 by chance, nor that the later models are compared with the first only."""
    models = [str(write_export(tmp_path / name, threshold=threshold)) for name, threshold in (("a", 0.5), ("b", 0.4), ("c", 0.6))]
    done = call_cli("cxr_tune.compare", *(arg for model in models for arg in ("--model", model)), str(site))
    assert done.returncode == 0, done.stderr
    assert (f"Minus {models[0]} (each later model is compared with the first only), on the same images: 95 % intervals, each alone; "
            "not adjusted for the 8 comparisons shown") in done.stdout


def test_compare_says_how_many_patients_the_images_come_from(tmp_path, site):
    """The intervals count images as independent, and two images of one patient are not; nothing said so."""
    write_image(site / "PNEUMONIA" / "person0_bacteria_20.jpeg", seed=200, fmt="JPEG")  # a second image of person0_bacteria
    models = [str(write_export(tmp_path / name)) for name in ("a", "b")]
    done = call_cli("cxr_tune.compare", "--model", models[0], "--model", models[1], str(site), "--metrics", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    assert "per image: 26 images from 25 patients (patients with several images make these intervals somewhat narrow)" in done.stdout
    result = json.loads((tmp_path / "c.json").read_text())
    assert (result["images"], result["images_naming_a_patient"], result["patients"]) == (26, 26, 25)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_a_model_and_a_copy_of_it_are_said_to_be_one_model(tmp_path, site, threshold):
    """A model and a copy of its folder printed every difference +0.0000 [0.000, 0.000] and said nothing; model.json holds
    model.onnx's SHA-256. Still compared: a copy's thresholds may differ, and that difference is real."""
    import shutil

    first = write_export(tmp_path / "best")
    copy = shutil.copytree(first, tmp_path / "copy")
    meta = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**meta, "threshold": threshold}))
    other = write_export(tmp_path / "other", image_size=24)
    done = call_cli("cxr_tune.compare", "--model", str(first), "--model", str(other), "--model", str(copy), str(site),
                    "--metrics", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    same = "every difference between them is 0" if threshold == 0.5 else "only their thresholds differ (0.5000 and 0.3000)"
    assert [line for line in done.stdout.splitlines() if "identical" in line] == [
        f"Note: {copy} is identical to {first} (the same model.onnx): {same}."]
    assert json.loads((tmp_path / "c.json").read_text())["identical"] == {str(copy): str(first)}


def test_the_metrics_record_the_bootstraps_resamples_and_seed(tmp_path, site):
    from cxr_tune.selection import REPORTED_RESAMPLES

    models = [str(write_export(tmp_path / name, threshold=threshold)) for name, threshold in (("a", 0.5), ("b", 0.4))]
    done = call_cli("cxr_tune.compare", "--model", models[0], "--model", models[1], str(site), "--metrics", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "c.json").read_text())["intervals"] == {"method": INTERVAL_METHODS, "resamples": REPORTED_RESAMPLES, "seed": 0,
                                                                      "paired_method": PAIRED_METHODS}


def test_a_model_adapted_to_the_images_that_chose_it_is_said_to_have_both_chosen_and_been_adapted_to_them(tmp_path, site):
    """compare's note for a model adapted to its own external validation set named only the set "which chose the model":
    the note stopped at the first role the images played."""
    from cxr_tune.predict import collect, predict
    from cxr_tune.selection import image_hashes
    from cxr_tune.serving import load_model

    plain = write_export(tmp_path / "plain")
    frame, _ = predict(load_model(plain), collect([str(site)]))
    by_folder = write_export(tmp_path / "by_folder", external={"source": str(site), "selection_set": True}, adaptation={"source": str(site)})
    # as results/real/best-no-labels: the set recorded by folder (before image_hashes), the site by content
    mixed = write_export(tmp_path / "mixed", before_adaptation={"external": {"source": str(site), "selection_set": True}},
                         adaptation={"source": str(tmp_path / "elsewhere"), "image_hashes": image_hashes(frame["content_hash"])})
    done = call_cli("cxr_tune.compare", "--model", str(plain), "--model", str(by_folder), "--model", str(mixed), str(site))
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stdout.splitlines() if "selection-set numbers" in line]
    assert notes == [
        f"Note ({by_folder}): {site} is this model's external validation set (model.json external.source), which chose the model; "
        f"{site} is the site this model was adapted to (model.json adaptation.source): these are selection-set numbers for this model, "
        "optimistic, not an independent test.",
        f"Note ({mixed}): {site} is this model's external validation set (model.json external.source), which chose the model; "
        "25 of 25 scored images adapted this model (the site it was adapted to, by content: model.json adaptation.image_hashes): "
        "these are selection-set numbers for this model, optimistic, not an independent test."]


def test_the_metrics_file_says_which_models_ran_and_on_which_folders(tmp_path, site):
    """compare --metrics was keyed by the --model strings as typed, with no model.onnx hash nor date, and had no inputs."""
    import hashlib
    import os

    from tests.conftest import ROOT

    own = write_export(tmp_path / "own", exported_at="2026-12-04T21:37:12+0000")
    other = write_export(tmp_path / "other", threshold=0.4)
    typed = os.path.relpath(own, ROOT)
    done = call_cli("cxr_tune.compare", "--model", typed, "--model", str(other), os.path.relpath(site, ROOT), "--metrics", str(tmp_path / "c.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "c.json").read_text())
    assert result["inputs"] == [str(site)]
    assert result["model_records"] == {
        typed: {"folder": str(own), "model_file": "model.onnx", "sha256": hashlib.sha256((own / "model.onnx").read_bytes()).hexdigest(),
                "exported_at": "2026-12-04T21:37:12+0000"},
        str(other): {"folder": str(other), "model_file": "model.onnx", "sha256": hashlib.sha256((other / "model.onnx").read_bytes()).hexdigest(),
                     "exported_at": None}}


def test_metrics_dash_writes_the_file_alone_to_stdout_and_every_other_line_to_stderr(tmp_path, site, monkeypatch, capsys):
    """Before: `compare ... --metrics -` wrote a file named '-' and said "Wrote every number to -", where predict's
    `--metrics -` writes to stdout; stdout held the console's table. Now '-' is stdout for both, holding the file alone."""
    from cxr_tune.compare import main

    models = [str(write_export(tmp_path / name, threshold=threshold)) for name, threshold in (("a", 0.5), ("b", 0.4))]
    monkeypatch.chdir(tmp_path)  # where a file named '-' was written
    assert main(["--model", models[0], "--model", models[1], str(site), "--metrics", "-"]) == 0
    done = capsys.readouterr()
    assert not (tmp_path / "-").exists()
    assert json.loads(done.out)["class_counts"] == [11, 14]
    assert "Wrote every number to stdout" in done.err and "Minus " + models[0] in done.err  # the console's lines, on stderr
