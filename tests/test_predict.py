"""``python -m cxr_tune.predict``: what a labelled folder measures, with intervals, on screen and in JSON; metrics a folder of one class cannot measure print as n/a, not nan."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from cxr_tune.predict import describe, labelled_metrics
from cxr_tune.set_metrics import INTERVAL_METHODS
from tests.conftest import ROOT, call_cli, kermany_folder, permissions_bind, run_cli, unreadable
from tests.exports import write_export


def test_one_class_prints_auc_na_not_nan():
    frame = pd.DataFrame({"path": ["a", "b", "c"], "probability": [0.2, 0.7, 0.9], "prediction": [0, 1, 1], "label": [1, 1, 1]})
    text = describe(labelled_metrics(frame, 0.5), "balanced")
    assert "AUC n/a" in text and "specificity n/a" in text
    assert "nan" not in text.lower()
    assert "sensitivity 0.6667" in text


def test_both_classes_print_the_auc():
    frame = pd.DataFrame({"path": list("abcd"), "probability": [0.1, 0.4, 0.6, 0.9], "prediction": [0, 0, 1, 1], "label": [0, 1, 0, 1]})
    text = describe(labelled_metrics(frame, 0.5), "balanced")
    assert "AUC 0.7500" in text and INTERVAL_METHODS in text  # which interval is Wilson and which bootstrap


def test_perfectly_separated_images_print_na_and_why_not_a_zero_width_interval():
    """15 + 15 separated images printed "balanced accuracy 1.0000 [1.000, 1.000]" and "AUC 1.0000 [1.000, 1.000]"."""
    frame = pd.DataFrame({"path": [f"{i:02d}" for i in range(30)], "label": [0] * 15 + [1] * 15,
                          "probability": np.r_[np.linspace(0.1, 0.4, 15), np.linspace(0.6, 0.9, 15)]})
    frame["prediction"] = (frame["probability"] >= 0.5).astype(int)
    text = describe(labelled_metrics(frame, 0.5), "balanced")
    assert "balanced accuracy 1.0000 [n/a]" in text and "AUC 1.0000 [n/a]" in text and "[1.000, 1.000]" not in text
    assert "specificity 1.0000 [0.796, 1.000]" in text and text.count("scores too separated") == 1


def test_the_order_images_are_named_in_changes_no_metric():
    """The bootstrap intervals follow the order of the rows: they are taken in path order, as export
    takes a test split's (its manifest is sorted by path), whatever order the command line gave."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 30)
    frame = pd.DataFrame({"path": [f"{'PNEUMONIA' if y else 'NORMAL'}/{i:02d}.jpeg" for i, y in enumerate(labels)],
                          "probability": np.clip(0.3 * labels + rng.uniform(0, 0.7, 30), 0, 1), "label": labels})
    frame["prediction"] = (frame["probability"] >= 0.5).astype(int)
    shuffled = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    assert labelled_metrics(shuffled, 0.5) == labelled_metrics(frame, 0.5)


def test_predict_on_a_one_class_test_folder(tmp_path):
    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "chest_xray", {"test": {"PNEUMONIA": ["person1_virus_1.jpeg", "person2_virus_2.jpeg"]}})
    done = call_cli("cxr_tune.predict", "--model", str(model / "model.onnx"), str(data / "test"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "Labelled images: 2 (NORMAL 0, PNEUMONIA 2)" in done.stdout and "AUC n/a" in done.stdout
    assert "nan" not in done.stdout


def test_metrics_json_holds_the_printed_numbers_with_their_intervals(tmp_path):
    model = write_export(tmp_path / "best", operating_points={"balanced": {"threshold": 0.5}, "sens95": {"threshold": 0.3}})
    data = kermany_folder(tmp_path / "site", {"test": {"PNEUMONIA": [f"person{i}_bacteria_{i}.jpeg" for i in range(12)],
                                                       "NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(10)]}})
    out = tmp_path / "scores" / "metrics.json"
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data / "test"), "--quiet", "--metrics", str(out))
    assert done.returncode == 0, done.stderr
    metrics = json.loads(out.read_text())
    assert metrics["class_counts"] == [10, 12] and metrics["n"] == 22 and metrics["threshold_used"] == 0.5
    low, high = metrics["ci95"]["sensitivity"]
    assert f"sensitivity {metrics['sensitivity']:.4f} [{low:.3f}, {high:.3f}]" in done.stdout
    assert metrics["ci95"]["auc"][0] <= metrics["auc"] <= metrics["ci95"]["auc"][1]
    assert set(metrics["operating_points"]) == {"balanced", "sens95"} and metrics["operating_points"]["sens95"]["threshold"] == 0.3
    assert metrics["subgroups"]["bacterial"]["n"] == 12 and metrics["calibration"]["brier"] is not None
    assert "sens95 0.3000: " in done.stdout


def test_metrics_without_labelled_images_is_refused_before_scoring(tmp_path):
    model = write_export(tmp_path / "best")
    data = kermany_folder(tmp_path / "site", {"images": {"unsorted": ["a.jpeg", "b.jpeg"]}})
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--metrics", str(tmp_path / "m.json"))
    assert done.returncode == 2 and "--metrics needs labelled images" in done.stderr and "2 file(s)" in done.stderr
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(("first", "second"), [("--csv", "--metrics"), ("--csv", "--explain"), ("--metrics", "--explain")])
def test_two_outputs_naming_one_path_are_refused_before_scoring(tmp_path, first, second):
    """Before: --csv X --metrics X kept only the JSON with status 0; --explain X after --csv X failed with a traceback."""
    model = write_export(tmp_path / "best")
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"]}})
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), first, f"{tmp_path}/./out", second, str(tmp_path / "out"))
    assert done.returncode == 2 and f"{first} and {second} name the same path '{tmp_path / 'out'}'" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


def test_a_point_that_gives_up_a_rate_is_noted_when_chosen(tmp_path):
    model = write_export(tmp_path / "best", operating_points={"balanced": {"threshold": 0.5}, "sens98": {"threshold": 0.0, "gives_up": "specificity"}})
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"]}})
    chosen = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet", "--operating-point", "sens98")
    plain = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet")
    assert chosen.returncode == plain.returncode == 0 and "sens98 has specificity 0: it calls every image PNEUMONIA" in chosen.stderr
    assert "Note:" not in plain.stderr


def test_a_point_below_its_floor_is_noted_when_chosen(tmp_path):
    model = write_export(tmp_path / "best", operating_points={"balanced": {"threshold": 0.5},
                                                              "spec95": {"threshold": 1.0, "floor": {"specificity": 0.95}, "misses_floor": 0.92}})
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"]}})
    chosen = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet", "--operating-point", "spec95")
    assert chosen.returncode == 0 and "spec95 keeps specificity at 0.920, below its floor 0.95" in chosen.stderr, chosen.stderr


def test_labels_come_from_the_folders_searched_each_file_is_scored_once_and_odd_files_are_listed(tmp_path):
    import os
    import shutil

    from cxr_tune.predict import collect

    model = write_export(tmp_path / "best", image_size=16)
    site = kermany_folder(tmp_path / "pneumonia" / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    (site / "test" / "PNEUMONIA" / "normal").mkdir()
    shutil.copy(site / "test" / "NORMAL" / "IM-0001-0001.jpeg", site / "test" / "PNEUMONIA" / "normal" / "person2_virus_2.jpeg")
    unsorted = kermany_folder(tmp_path / "pneumonia" / "new_xrays", {"x": {"y": ["a.jpeg"]}})
    labels = {file.path.name: file.label for file in collect([str(site), str(unsorted), str(site / "test" / "NORMAL")])}
    # a folder above the one named never labels (here: .../pneumonia/new_xrays); a normal/ inside PNEUMONIA/ is pneumonia, as in training
    assert labels == {"IM-0001-0001.jpeg": 0, "person1_virus_1.jpeg": 1, "person2_virus_2.jpeg": 1, "a.jpeg": None}
    assert len(collect([str(site), str(site / "test" / "NORMAL" / "IM-0001-0001.jpeg")])) == 3  # named twice, scored once

    odd = kermany_folder(tmp_path / "odd", {"test": {"NORMAL": ["IM-0002-0001.jpeg"], "PNEUMONIA": ["person3_virus_3.jpeg"]}})
    os.symlink(tmp_path / "nowhere.jpeg", odd / "test" / "NORMAL" / "IM-0003-0001.jpeg")
    os.mkfifo(odd / "test" / "NORMAL" / "IM-0004-0001.jpeg")  # reading it would block: listed, never opened
    shutil.copy(odd / "test" / "NORMAL" / "IM-0002-0001.jpeg", os.fsdecode(bytes(odd / "test" / "NORMAL") + b"/IM-caf\xe9-0001.jpeg"))
    done = call_cli("cxr_tune.predict", "--model", str(model), str(odd / "test"), "--quiet")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "Labelled images: 2 (NORMAL 1, PNEUMONIA 1)" in done.stdout and "IM-caf\ufffd-0001.jpeg" not in done.stderr
    assert "1 byte-identical copy of another labelled file counted once" in done.stdout  # IM-caf\xe9 is IM-0002's copy
    assert "Skipped 2 unreadable file(s):" in done.stdout and "IM-0003-0001.jpeg" in done.stdout
    assert "IM-0004-0001.jpeg: not a regular file (a pipe, socket or device)" in done.stdout


def test_an_unreadable_folder_is_listed_as_skipped(tmp_path):
    prefix = permissions_bind()
    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    normal = data / "test" / "NORMAL"
    with unreadable(normal):
        done = run_cli("cxr_tune.predict", "--model", str(model), str(data / "test"), "--quiet", prefix=prefix)
    assert done.returncode == 0 and "Labelled images: 1 (NORMAL 0, PNEUMONIA 1)" in done.stdout, done.stderr[-2000:]
    assert f"  {normal}: permission denied" in done.stdout.splitlines(), done.stdout


def test_a_model_folder_that_cannot_be_read_is_one_line_naming_it(tmp_path):
    """Before: pyarrow's PermissionError from looking for model.json, as a traceback (compare and adapt load alike)."""
    prefix = permissions_bind()
    model = write_export(tmp_path / "best", image_size=16)
    with unreadable(model):
        done = run_cli("cxr_tune.predict", "--model", str(model), str(tmp_path), "--quiet", prefix=prefix)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"error: '{model / 'model.json'}' cannot be reached: permission denied" in done.stderr


def test_a_named_folder_that_cannot_be_listed_is_an_error_not_an_empty_folder(tmp_path, monkeypatch):
    import os

    from cxr_tune.errors import UserError
    from cxr_tune.predict import collect

    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    normal, scandir = data / "test" / "NORMAL", os.scandir

    def locked(path):  # what listing a chmod 000 folder gives a user (root reads past it)
        if os.fspath(path) == str(normal):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", locked)
    assert {(file.path, file.label) for file in collect([str(data / "test")])} == {(normal, 0), (data / "test" / "PNEUMONIA" / "person1_virus_1.jpeg", 1)}
    with pytest.raises(UserError, match=f"^cannot read the folder '{normal}': permission denied$"):
        collect([str(normal)])


def test_an_empty_file_is_listed_as_empty_as_inspect_lists_it(tmp_path):
    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"]}})
    (data / "test" / "NORMAL" / "IM-0002-0001.jpeg").write_bytes(b"")
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet")
    assert done.returncode == 0 and f"  {data / 'test' / 'NORMAL' / 'IM-0002-0001.jpeg'}: empty file (0 bytes)" in done.stdout.splitlines(), done.stdout


def test_metrics_that_no_labelled_image_can_give_are_an_error_not_a_missing_file(tmp_path):
    model = write_export(tmp_path / "best", image_size=16)
    (tmp_path / "bad" / "NORMAL").mkdir(parents=True)
    (tmp_path / "bad" / "NORMAL" / "a.jpeg").write_bytes(b"not an image")
    done = call_cli("cxr_tune.predict", "--model", str(model), str(tmp_path / "bad"), "--quiet", "--metrics", str(tmp_path / "m.json"))
    assert done.returncode == 2 and "--metrics: none of the labelled file(s)" in done.stderr and "m.json not written" in done.stderr


def test_a_console_that_cannot_show_a_file_name_gets_it_escaped_and_one_that_goes_away_costs_no_file(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT, run_cli

    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["tête é.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    done = run_cli("cxr_tune.predict", "--model", str(model), str(data), env={"PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0 and "t\\xeate \\xe9.jpeg" in done.stdout and "Traceback" not in done.stderr, done.stderr[-2000:]
    # ... | head -0: the reader is gone before the first line; the files asked for are written all the same
    process = subprocess.Popen([sys.executable, "-m", "cxr_tune.predict", "--model", str(model), str(data), "--csv", str(tmp_path / "p.csv"),
                                "--metrics", str(tmp_path / "m.json")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})  # each line goes out as printed: the first one meets the closed pipe
    process.stdout.close()
    assert process.wait(timeout=120) == 141 and b"Traceback" not in process.stderr.read()
    assert (tmp_path / "p.csv").exists() and (tmp_path / "m.json").exists()


def test_explain_to_object_storage_is_one_line_not_a_local_folder_named_s3(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"]}})
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--explain", "s3://bucket/maps")
    assert done.returncode == 2 and "--explain 's3://bucket/maps': the figures go to a local folder" in done.stderr
    assert not (tmp_path / "s3:").exists()


def test_an_explain_folder_holding_files_is_refused_before_any_work(tmp_path):
    """Before: a second run's figures went into the first's folder: same names replaced by other images (IM-0001-0001.png of
    another day), the rest left beside them, and the first run's --csv explanation column named another patient's figure."""
    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"]}})
    earlier = tmp_path / "maps"
    earlier.mkdir()
    for name in ("IM-0001-0001.png", "IM-0001-0001-1.png", "IM-0002-0001.png", "IM-0003-0001.png"):
        (earlier / name).write_bytes(b"an earlier run's figure")
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--explain", str(earlier), "--csv", str(tmp_path / "p.csv"))
    assert done.returncode == 2 and done.stderr == (
        f"error: --explain '{earlier}' holds files (4: IM-0001-0001-1.png, IM-0001-0001.png, IM-0002-0001.png, "
        "...); this run's figures would replace those of the same name and sit beside the rest, so name a new or empty folder\n")
    assert (earlier / "IM-0001-0001.png").read_bytes() == b"an earlier run's figure" and not (tmp_path / "p.csv").exists()
    (tmp_path / "empty").mkdir()  # an empty folder is taken (this model has no weights: the next check stops it)
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--explain", str(tmp_path / "empty"))
    assert done.returncode == 2 and "weights.safetensors' is missing" in done.stderr, done.stderr


def test_file_names_cannot_forge_console_lines_drive_the_terminal_or_run_as_spreadsheet_formulas(tmp_path, monkeypatch, capsys):
    import csv

    from cxr_tune.formatting import from_spreadsheet
    from cxr_tune.predict import main
    from tests.conftest import write_image

    model = write_export(tmp_path / "best", image_size=16)
    site = tmp_path / "site"
    names = ['=HYPERLINK("http:evil.example","x").jpeg', "@SUM(1+1)*cmd|x.jpeg", "-2+3.jpeg", "NORMAL/\x1b[2J\x1b[31mRED.jpeg",
             "NORMAL/a.jpeg\n0.0010  NORMAL     fake-patient.jpeg", "NORMAL/tête 1.jpeg"]
    for seed, name in enumerate(names):
        write_image(site / name, seed=seed)
    (site / "NORMAL" / "\x1b]0;title\x07bad.jpeg").write_bytes(b"not an image")
    monkeypatch.chdir(site)  # the names as given, as `predict .` in that folder shows them
    assert main(["--model", str(model), ".", "--csv", str(tmp_path / "p.csv")]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert not any(line.startswith("0.0010") for line in out.splitlines())  # no forged result line
    assert "NORMAL/a.jpeg\\n0.0010  NORMAL     fake-patient.jpeg" in out
    assert "NORMAL/\\x1b[2J\\x1b[31mRED.jpeg" in out and "NORMAL/tête 1.jpeg" in out
    assert "  NORMAL/\\x1b]0;title\\x07bad.jpeg: not an image Pillow can read" in out
    with open(tmp_path / "p.csv", newline="") as file:
        cells = [row["path"] for row in csv.DictReader(file)]
    assert sorted(cells) == sorted(["'" + name if name[0] in "=@-" else name for name in names])
    assert sorted(from_spreadsheet(pd.read_csv(tmp_path / "p.csv"))["path"]) == sorted(names)  # read back as written


def test_a_folder_is_decoded_and_scored_a_chunk_at_a_time_with_the_same_rows_in_the_same_order(tmp_path, monkeypatch):
    """predict decoded the whole folder, and held it twice, before scoring the first image (3.4 GB for 20k images of
    224 px); now each chunk of files is decoded and scored before the next is read, and the tables are as before."""
    import cxr_tune.predict as module
    from cxr_tune.data.imaging import try_decode_checked
    import os

    from cxr_tune.predict import collect, predict
    from cxr_tune.serving import load_model
    from cxr_tune.serving import load_model, probabilities

    model = load_model(str(write_export(tmp_path / "best", image_size=16)))
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(4)],
                                                       "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(4)]}})
    (data / "test" / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(b"")  # unreadable: the second file, in the first chunk
    (data / "test" / "PNEUMONIA" / "zz.txt").write_text("not an image")  # and the last file, alone in the last chunk
    files = collect([str(data)])
    whole = predict(model, files)
    events: list[str | int] = []

    def decode(path, size, *, name=None):
        events.append("decode")
        return try_decode_checked(path, size, name=name)

    def score(model, images):
        events.append(len(images))
        return probabilities(model, images)

    monkeypatch.setattr(module, "_CHUNK_FILES", 2)
    monkeypatch.setattr(module, "try_decode_checked", decode)
    monkeypatch.setattr(module, "probabilities", score)
    frame, skipped = predict(model, files)
    assert events == ["decode", "decode", 1] + ["decode", "decode", 2] * 3 + ["decode", 0]
    pd.testing.assert_frame_equal(frame, whole[0])
    pd.testing.assert_frame_equal(skipped, whole[1])
    assert len(frame) == 7 and list(skipped["path"]) == [str(data / "test" / "NORMAL" / "IM-0001-0001.jpeg"), str(data / "test" / "PNEUMONIA" / "zz.txt")]
    empty, none = predict(model, [])
    assert empty.empty and none.empty and list(empty.columns) == list(frame.columns)


def test_explain_reads_and_maps_a_chunk_at_a_time_and_draws_the_same_figures(tmp_path, monkeypatch):
    """--explain decoded every image again and held all of them and their maps at once; now a chunk at a time."""
    import cxr_tune.predict as module
    import cxr_tune.saliency
    from cxr_tune.modelfile import load_members
    from cxr_tune.predict import collect, explain, predict
    from cxr_tune.serving import load_model
    from tests.model_exports import export_folder, kermany_set, save_images

    export_folder(tmp_path / "model")
    model = load_model(str(tmp_path / "model"))
    members = load_members(str(tmp_path / "model"), model.meta)
    frame, _ = predict(model, collect([str(save_images(kermany_set(5, 6), tmp_path / "images"))]))
    figures: dict[str, tuple] = {}
    monkeypatch.setattr(cxr_tune.saliency, "explain_figure",
                        lambda path, image, heat, caption, grid: figures.__setitem__(path.name, (image, heat, caption, grid)))
    explain(model, members, frame, str(tmp_path / "whole"), "balanced")
    whole, figures = figures, {}
    sizes: list[int] = []
    grad_cam = cxr_tune.saliency.grad_cam
    monkeypatch.setattr(cxr_tune.saliency, "grad_cam", lambda members, images: sizes.append(len(images)) or grad_cam(members, images))
    monkeypatch.setattr(module, "_CHUNK_FILES", 2)
    written = explain(model, members, frame, str(tmp_path / "chunks"), "balanced")
    assert sizes == [2, 2, 1] and [path.name for path in written] == list(whole) == list(figures)
    for name, (image, heat, caption, grid) in whole.items():
        # torch's float sums may differ in the last bits for other batches (here 2, not 5); a chunk of 1024 makes the batches of 32 one piece did
        assert np.array_equal(figures[name][0], image) and np.allclose(figures[name][1], heat) and figures[name][2:] == (caption, grid)
        assert grid == "Grad-CAM at 16x16 cells, each 1x1 px of the input"  # the model's one block, read before its pool


def test_explain_interrupted_keeps_the_csv_and_metrics_already_scored(tmp_path, monkeypatch):
    """Drawing is the slow part (0.2 s an image against 0.03 s to score): the files go out before the first figure,
    so a Ctrl-C or a figure that cannot be saved costs no score (drawing while scoring wrote them after the last figure).
    The CSV's explanation column names only the figures saved (it named all 198, of which none existed), and a line says
    what was written and how many figures there are (the console said only 'interrupted')."""
    import cxr_tune.saliency
    from tests.model_exports import export_folder, kermany_set, save_images

    export_folder(tmp_path / "model")
    images = save_images(kermany_set(3, 6), tmp_path / "images")
    drawn: list[str] = []

    def interrupted(path, *_args, **_kwargs):  # the first figure is saved, a stop comes while the second is drawn
        if drawn:
            raise KeyboardInterrupt
        drawn.append(path.name)
        path.write_bytes(b"a figure")

    monkeypatch.setattr(cxr_tune.saliency, "explain_figure", interrupted)
    csv, metrics, maps = tmp_path / "out.csv", tmp_path / "out.json", tmp_path / "maps"
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(images), "--quiet", "--csv", str(csv),
                    "--metrics", str(metrics), "--explain", str(maps))
    assert done.returncode == 130
    rows = pd.read_csv(csv, keep_default_na=False)
    assert len(rows) == 3 and json.loads(metrics.read_text())["scored"] == 3
    assert list(rows["explanation"]) == [drawn[0], "", ""] and sorted(path.name for path in maps.iterdir()) == drawn
    assert (f"Interrupted after drawing 1 of 3 Grad-CAM figure(s) in {maps}; wrote the 3 predictions to {csv} (its explanation "
            f"column names the 1 figure(s) drawn) and the metrics to {metrics}") in done.stderr, done.stderr


def test_explain_on_a_disk_that_fills_keeps_the_csv_naming_the_figures_saved_and_ends_with_one_line(tmp_path, monkeypatch):
    """Before: the --csv written before the figures kept an empty explanation column, even for the figures saved, and the
    full disk ended the command with a 34-line traceback; a stop rewrote it, an error did not."""
    import errno

    import cxr_tune.saliency
    from tests.model_exports import export_folder, kermany_set, save_images

    export_folder(tmp_path / "model")
    images = save_images(kermany_set(3, 6), tmp_path / "images")
    drawn: list[str] = []

    def disk_fills(path, *_args, **_kwargs):  # the first figure is saved, the disk is full for the second
        if drawn:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        drawn.append(path.name)
        path.write_bytes(b"a figure")

    monkeypatch.setattr(cxr_tune.saliency, "explain_figure", disk_fills)
    csv, metrics, maps = tmp_path / "out.csv", tmp_path / "out.json", tmp_path / "maps"
    args = ["--model", str(tmp_path / "model"), str(images), "--quiet", "--csv", str(csv), "--metrics", str(metrics), "--explain", str(maps)]
    done = call_cli("cxr_tune.predict", *args)
    assert done.returncode == 1, done.stderr
    rows = pd.read_csv(csv, keep_default_na=False)
    assert list(rows["explanation"]) == [drawn[0], "", ""] and sorted(path.name for path in maps.iterdir()) == drawn
    said = done.stderr.strip().splitlines()
    assert said[-2] == (f"Stopped by an error after drawing 1 of 3 Grad-CAM figure(s) in {maps}; wrote the 3 predictions to {csv} (its "
                        f"explanation column names the 1 figure(s) drawn) and the metrics to {metrics}; to draw them all, run again with "
                        "a new or empty --explain folder")
    assert said[-1].startswith("error: cannot write '") and said[-1].endswith("': No space left on device"), done.stderr
    again = call_cli("cxr_tune.predict", *args)  # the folder holds the figure saved: refused, saying what to do
    assert again.returncode == 2 and again.stderr.strip().endswith("so name a new or empty folder"), again.stderr


def test_explain_with_csv_dash_writes_the_csv_to_stdout_once_naming_the_figures_drawn(tmp_path, monkeypatch, capsys):
    """`--csv -` with --explain: stdout holds one CSV (a file is written before the figures and again after them; stdout
    cannot be rewritten), written after the figures or after a stop while they are drawn, naming only those saved."""
    import io

    import cxr_tune.saliency
    from cxr_tune.predict import main
    from tests.model_exports import export_folder, kermany_set, save_images

    export_folder(tmp_path / "model")
    images = save_images(kermany_set(3, 6), tmp_path / "images")
    drawn: list[str] = []
    stop_at = [None]

    def draw(path, *_args, **_kwargs):
        if len(drawn) == stop_at[0]:
            raise KeyboardInterrupt
        drawn.append(path.name)
        path.write_bytes(b"a figure")

    monkeypatch.setattr(cxr_tune.saliency, "explain_figure", draw)
    monkeypatch.chdir(tmp_path)
    command = ["--model", str(tmp_path / "model"), str(images), "--quiet", "--csv", "-", "--explain"]
    assert main([*command, str(tmp_path / "all")]) == 0
    done = capsys.readouterr()
    rows = pd.read_csv(io.StringIO(done.out), keep_default_na=False)
    assert list(rows["explanation"]) == drawn and len(drawn) == 3 and done.out.count("path,") == 1, done.out
    drawn.clear()
    stop_at[0] = 1  # the first figure is saved, a stop comes while the second is drawn
    with pytest.raises(KeyboardInterrupt):
        main([*command, str(tmp_path / "some")])
    done = capsys.readouterr()
    rows = pd.read_csv(io.StringIO(done.out), keep_default_na=False)
    assert list(rows["explanation"]) == [drawn[0], "", ""] and done.out.count("path,") == 1, done.out
    assert ("wrote the 3 predictions to stdout (its explanation column names the 1 figure(s) drawn)" in done.err), done.err
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("error", [MemoryError, ValueError])
def test_explain_with_csv_dash_and_any_error_while_drawing_still_writes_the_csv_to_stdout(error, tmp_path, monkeypatch, capsys):
    """Before: only a full disk (OSError) or a stop rewrote --csv after the figures, so any other error while drawing
    (a MemoryError in a chunk's Grad-CAM, a matplotlib error) left --csv - with no prediction on stdout at all."""
    import io

    import cxr_tune.saliency
    from cxr_tune.predict import main
    from tests.model_exports import export_folder, kermany_set, save_images

    export_folder(tmp_path / "model")
    images = save_images(kermany_set(3, 6), tmp_path / "images")
    drawn: list[str] = []

    def draw(path, *_args, **_kwargs):  # the first figure is saved, the second fails
        if drawn:
            raise error("drawing failed")
        drawn.append(path.name)
        path.write_bytes(b"a figure")

    monkeypatch.setattr(cxr_tune.saliency, "explain_figure", draw)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error):  # the error itself goes on, with its traceback where it is not the machine's
        main(["--model", str(tmp_path / "model"), str(images), "--quiet", "--csv", "-", "--explain", str(tmp_path / "maps")])
    done = capsys.readouterr()
    rows = pd.read_csv(io.StringIO(done.out), keep_default_na=False)
    assert list(rows["explanation"]) == [drawn[0], "", ""] and done.out.count("path,") == 1, done.out
    assert "Stopped by an error after drawing 1 of 3 Grad-CAM figure(s)" in done.err, done.err


def test_explain_says_its_progress_on_stderr_every_few_figures(tmp_path, monkeypatch):
    """Before: 200 figures took 2 min 47 s without a word (about 0.8 s each on a CPU); now a line on stderr every
    _FIGURES_EVERY figures, in the form of scoring's progress lines, and none for a run of no more than that."""
    import cxr_tune.predict as module
    import cxr_tune.saliency
    from tests.model_exports import export_folder, kermany_set, save_images

    export_folder(tmp_path / "model")
    images = save_images(kermany_set(5, 6), tmp_path / "images")
    monkeypatch.setattr(cxr_tune.saliency, "explain_figure", lambda path, image, heat, caption, grid: path.write_bytes(b"a figure"))
    monkeypatch.setattr(module, "_FIGURES_EVERY", 2)
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(images), "--quiet", "--explain", str(tmp_path / "maps"))
    assert done.returncode == 0, done.stderr
    assert [line.split("] ", 1)[1] for line in done.stderr.splitlines() if "] drew" in line] == [
        "drew 2 of 5 Grad-CAM figures", "drew 4 of 5 Grad-CAM figures"], done.stderr
    monkeypatch.setattr(module, "_FIGURES_EVERY", 5)
    done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(images), "--quiet", "--explain", str(tmp_path / "maps2"))
    assert done.returncode == 0 and "drew" not in done.stderr, done.stderr
    assert "about a second each on a CPU" in " ".join(call_cli("cxr_tune.predict", "--help").stdout.split())


def test_models_scored_together_give_the_tables_each_gives_alone(tmp_path, monkeypatch):
    """Models that take the same image size score the same decoded pixels (compare); each model's tables are its own predict's."""
    import cxr_tune.predict as module
    from cxr_tune.predict import collect, predict, predict_each
    from cxr_tune.serving import load_model

    models = [load_model(str(write_export(tmp_path / name, image_size=size))) for name, size in (("a", 16), ("b", 24), ("c", 16))]
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    (data / "test" / "NORMAL" / "notes.txt").write_text("not an image")
    files = collect([str(data)])
    alone = [predict(model, files, threshold) for model, threshold in zip(models, (0.5, 0.4, 0.6), strict=True)]
    monkeypatch.setattr(module, "_CHUNK_FILES", 3)
    together = predict_each(models, files, [0.5, 0.4, 0.6])
    for (frame, skipped), (own_frame, own_skipped) in zip(together, alone, strict=True):
        pd.testing.assert_frame_equal(frame, own_frame)
        pd.testing.assert_frame_equal(skipped, own_skipped)


def test_an_explain_caption_never_shows_a_call_that_seems_to_break_its_rule(tmp_path, monkeypatch):
    """P 0.64966 against threshold 0.64977 read "P(PNEUMONIA) 0.650: NORMAL at balanced (threshold 0.650)"."""
    import re

    import cxr_tune.saliency
    from cxr_tune.modelfile import load_members
    from cxr_tune.predict import collect, explain, predict
    from cxr_tune.serving import load_model
    from tests.model_exports import export_folder, kermany_set, save_images

    export_folder(tmp_path / "model")
    model = load_model(str(tmp_path / "model"))
    frame, _ = predict(model, collect([str(save_images(kermany_set(2, 1), tmp_path / "images"))]))
    threshold = model.meta["threshold"]
    frame = frame.assign(probability=[threshold - 1.1e-4, threshold + 0.2], prediction=[0, 1])
    captions: list[str] = []
    monkeypatch.setattr(cxr_tune.saliency, "explain_figure", lambda path, image, heat, caption, grid: captions.append(caption.splitlines()[2]))
    explain(model, load_members(str(tmp_path / "model"), model.meta), frame, str(tmp_path / "maps"), "balanced")
    below, above = captions
    shown, cut = map(float, re.fullmatch(r"P\(PNEUMONIA\) ([\d.]+): NORMAL at balanced \(threshold ([\d.]+)\).*", below).groups())
    assert shown < cut, below
    assert above.startswith(f"P(PNEUMONIA) {threshold + 0.2:.4f}: PNEUMONIA at balanced (threshold {threshold:.4f})")  # four decimals where they suffice, as the console


def test_an_explain_caption_gives_each_check_in_the_short_form_input_checks_gives_it(tmp_path, monkeypatch):
    """The caption's "check first" was predict's whole line with each parenthesis cut out by a regex: a DICOM Modality that
    holds one ("OT (SC)") lost it, "DICOM modality OT". The checks give their short form themselves (input_checks.Note)."""
    from PIL import Image

    import cxr_tune.saliency
    from cxr_tune.modelfile import load_members
    from cxr_tune.predict import collect, explain, predict
    from cxr_tune.serving import load_model
    from tests.data.test_dicom import dicom_bytes
    from tests.model_exports import export_folder, kermany_set

    export_folder(tmp_path / "best")
    model = load_model(str(tmp_path / "best"))
    gray = kermany_set(2, 1).images
    (tmp_path / "images").mkdir()
    colour = np.stack([gray[0], gray[0] // 2, gray[0]], axis=-1)
    Image.fromarray(colour).save(tmp_path / "images" / "a_colour.png")
    (tmp_path / "images" / "b_scan.dcm").write_bytes(dicom_bytes(gray[1], Modality="OT (SC)"))
    frame, _ = predict(model, collect([str(tmp_path / "images")]))
    assert frame["check"][1].startswith("DICOM modality OT (SC) (the model learned from plain radiographs")  # the console's, --csv's
    captions: list[str] = []
    monkeypatch.setattr(cxr_tune.saliency, "explain_figure", lambda path, image, heat, caption, grid: captions.append(caption.splitlines()[3]))
    explain(model, load_members(str(tmp_path / "best"), model.meta), frame, str(tmp_path / "maps"), "balanced")
    assert [caption.split("; ")[2:] for caption in captions] == [["check first: colour image"], ["check first: DICOM modality OT (SC)"]]


def test_an_explain_caption_says_the_number_is_a_score_which_model_drew_it_a_selection_set_image_and_its_check(tmp_path, monkeypatch):
    """A clinician read a figure's "P(PNEUMONIA) 0.9805" as a risk, could not tell which model drew it, nor that the image had
    chosen that model (the console's note said so of the set, no figure did) or was flagged to check first (a colour picture)."""
    import cxr_tune.saliency
    from cxr_tune.modelfile import load_members
    from cxr_tune.predict import collect, explain, predict
    from cxr_tune.selection import image_hashes
    from cxr_tune.serving import load_model
    from tests.model_exports import export_folder, kermany_set, save_images

    export_folder(tmp_path / "best")
    model = load_model(str(tmp_path / "best"))
    members = load_members(str(tmp_path / "best"), model.meta)
    frame, _ = predict(model, collect([str(save_images(kermany_set(3, 1), tmp_path / "images"))]))
    model.meta["external"]["image_hashes"] = image_hashes(frame["content_hash"][:1])  # the first image is in the deciding set
    colour = "a colour picture (its channels differ by 40.0 gray levels on average)"
    frame = frame.assign(check=["", colour, ""], check_short=["", "a colour picture", ""])
    captions: list[str] = []
    monkeypatch.setattr(cxr_tune.saliency, "explain_figure", lambda path, image, heat, caption, grid: captions.append(caption.splitlines()[3:]))
    explain(model, members, frame, str(tmp_path / "maps"), "balanced")
    model_line = f"model best (sha256 {model.meta['files']['model.onnx'][:8]})"
    assert captions == [[f"the P is a score, not a calibrated risk; {model_line}; selection-set image (it chose this model)"],
                        [f"the P is a score, not a calibrated risk; {model_line}; check first: a colour picture"],  # the why: console, --csv
                        [f"the P is a score, not a calibrated risk; {model_line}"]]

    export_folder(tmp_path / "calibrated", calibrate="platt")  # a probability at the prevalence of the set it was fitted on
    calibrated = load_model(str(tmp_path / "calibrated"))
    captions.clear()
    explain(calibrated, load_members(str(tmp_path / "calibrated"), calibrated.meta), frame.iloc[2:], str(tmp_path / "maps2"), "balanced")
    assert captions == [[f"the P is calibrated (platt) on the external set, not a risk at another prevalence; "
                         f"model calibrated (sha256 {calibrated.meta['files']['model.onnx'][:8]})"]]


def test_predict_and_compare_read_an_image_folder_on_object_storage_as_a_local_one(s3_dir, tmp_path):
    """Before: "'s3://...' does not exist; pass image files or folders", though every path may be s3://."""
    from cxr_tune import storage

    model = write_export(tmp_path / "best")
    other = write_export(tmp_path / "other", operating_points={"balanced": {"threshold": 0.4}})
    site = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg"],
                                                       "PNEUMONIA": ["person1_virus_1.jpeg", "person2_bacteria_2.jpeg"]}})
    (site / "test" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 not a jpeg")
    remote = storage.join(s3_dir, "site")
    storage.copy(str(site), remote)
    tables = {}
    for where, folder in (("local", str(site / "test")), ("s3", f"{remote}/test/")):
        done = call_cli("cxr_tune.predict", "--model", str(model), folder, "--csv", str(tmp_path / f"{where}.csv"), "--quiet")
        assert done.returncode == 0, done.stderr
        assert "Labelled images: 4 (NORMAL 2, PNEUMONIA 2)" in done.stdout and "broken.jpeg: " in done.stderr + done.stdout
        tables[where] = pd.read_csv(tmp_path / f"{where}.csv")
    assert tables["s3"]["path"].str.startswith(f"{remote}/test/").all()
    pd.testing.assert_frame_equal(tables["s3"].drop(columns="path"), tables["local"].drop(columns="path"))
    one = call_cli("cxr_tune.predict", "--model", str(model), f"{remote}/test/PNEUMONIA/person1_virus_1.jpeg", "--quiet")
    assert one.returncode == 0 and "PNEUMONIA 1)" in one.stdout, one.stderr
    compared = call_cli("cxr_tune.compare", "--model", str(model), "--model", str(other), f"{remote}/test")
    assert compared.returncode == 0 and "4 labelled images (NORMAL 2, PNEUMONIA 2)" in compared.stdout, compared.stderr
    missing = call_cli("cxr_tune.predict", "--model", str(model), f"{remote}/nothing")
    assert missing.returncode == 2 and missing.stderr == f"error: '{remote}/nothing' does not exist; pass image files or folders\n"


def test_an_image_argument_that_only_looks_like_a_uri_is_one_line_or_a_local_folder(tmp_path):
    """Once s3:// image folders were read, a pasted URL (https://...) or C://x ended in pyarrow's traceback, and a real
    local folder named s3: (../odd/s3://x) was taken for a URI."""
    model = write_export(tmp_path / "best")
    for item in ("https://example.com/x.png", "C://x"):
        done = call_cli("cxr_tune.predict", "--model", str(model), item, "--quiet")
        assert done.returncode == 2 and done.stderr.startswith(f"error: '{item}' is neither a local path nor an object-store URI"), done.stderr
    kermany_folder(tmp_path / "odd" / "s3:" / "x", {"test": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    done = call_cli("cxr_tune.predict", "--model", str(model), f"{tmp_path}/odd/s3://x", "--quiet")
    assert done.returncode == 0 and "Labelled images: 2 (NORMAL 1, PNEUMONIA 1)" in done.stdout, done.stderr


def test_a_linked_sub_folder_is_scored_and_a_link_loop_is_listed_as_skipped(tmp_path):
    import os

    from cxr_tune.predict import collect, predict
    from cxr_tune.serving import load_model

    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    outside = kermany_folder(tmp_path / "outside", {"more": {"x": ["person2_virus_2.jpeg"]}}, seed=1) / "more"
    pneumonia = data / "test" / "PNEUMONIA"
    os.symlink(outside, pneumonia / "linked_folder")
    os.symlink("..", pneumonia / "loop")
    files = collect([str(data)])
    assert {(file.path.name, file.label) for file in files if not file.reason} == {("IM-0001-0001.jpeg", 0), ("person1_virus_1.jpeg", 1), ("person2_virus_2.jpeg", 1)}
    frame, skipped = predict(load_model(str(model)), files)
    assert len(frame) == 3 and skipped.to_dict("records") == [
        {"path": str(pneumonia / "loop"), "reason": f"link to a folder above it ({data / 'test'}); not followed, it would loop", "kind": "folder"}]


def test_hidden_and_system_folders_are_listed_not_scored(tmp_path):
    from cxr_tune.data.sources import NOT_READ
    from cxr_tune.predict import collect
    from tests.conftest import write_image

    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}})
    write_image(data / "test" / "NORMAL" / "@eaDir" / "IM-0001-0001.jpeg" / "SYNOFILE_THUMB_M.jpg", seed=5, fmt="JPEG")
    write_image(data / "test" / "PNEUMONIA" / ".thumbnails" / "person1_virus_1.png", seed=6)
    files = collect([str(data)])
    assert sorted((file.path.name, file.reason) for file in files) == [
        (".thumbnails", NOT_READ), ("@eaDir", NOT_READ), ("IM-0001-0001.jpeg", ""), ("person1_virus_1.jpeg", "")]


def test_scoring_the_folder_that_chose_the_model_says_the_numbers_are_selection_set_numbers(tmp_path):
    """predict printed plain metrics on the model's own external validation set (model.json external.source), and on the
    site an adapted model was adapted to, with nothing saying they are optimistic."""
    data = kermany_folder(tmp_path / "data", {"val": {"PNEUMONIA": ["person1_virus_1.jpeg"], "NORMAL": ["IM-0001-0001.jpeg"]},
                                              "test": {"NORMAL": ["IM-0002-0001.jpeg"]}})
    chose = write_export(tmp_path / "chose", external={"source": str(data / "val"), "selection_set": True})
    adapted = write_export(tmp_path / "adapted", adaptation={"source": str(data / "val") + "/"})
    inside = data / "val" / "NORMAL"  # a folder inside the set: its images counted, the first named
    for model, what in ((chose, "{item} is this model's external validation set"),
                        (adapted, f"1 of 1 scored images lie in the site this model was adapted to (model.json adaptation.source) (the first: {inside / 'IM-0001-0001.jpeg'})")):
        item = os.path.relpath(data / "val", ROOT) if model == chose else str(inside)  # relative (CLIs run in ROOT); inside the set
        done = call_cli("cxr_tune.predict", "--model", str(model), item, "--quiet")
        assert done.returncode == 0, done.stderr
        note = next(line for line in done.stdout.splitlines() if line.startswith("Note: "))
        assert f"Note: {what.format(item=item)}" in note and "these are selection-set numbers for this model, optimistic" in note, note
        assert done.stdout.index("Note: ") < done.stdout.index("Labelled images")
    done = call_cli("cxr_tune.predict", "--model", str(chose), str(data / "test"), "--quiet")
    assert done.returncode == 0 and "selection-set" not in done.stdout
    # A folder that holds the set (the data's root, with test/ beside val/): before, scored as an independent test.
    for model, what in ((chose, "this model's external validation set"), (adapted, "the site this model was adapted to")):
        done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet")
        assert done.returncode == 0, done.stderr
        assert (f"Note: {data} holds {what}" in done.stdout
                and "these numbers include selection-set images for this model, optimistic, not an independent test" in done.stdout), done.stdout
    unselected = write_export(tmp_path / "compared", external={"source": str(data / "val"), "selection_set": False})
    assert "selection-set" not in call_cli("cxr_tune.predict", "--model", str(unselected), str(data / "val"), "--quiet").stdout


def test_metrics_count_a_byte_identical_copy_once_as_export_counts_a_set_and_say_so(tmp_path):
    """predict counted half A's 3 copied files twice (315 images, AUC 0.9791) where export counts them once (312, 0.9788),
    and said nothing; its help says its metrics are computed as export computes a test split's."""
    import shutil

    model = write_export(tmp_path / "best")
    data = kermany_folder(tmp_path / "site", {"test": {"PNEUMONIA": [f"person{i}_bacteria_{i}.jpeg" for i in range(6)],
                                                       "NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(5)]}}) / "test"
    shutil.copy(data / "PNEUMONIA" / "person0_bacteria_0.jpeg", data / "PNEUMONIA" / "person0_bacteria_99.jpeg")  # one film saved twice
    shutil.copy(data / "NORMAL" / "IM-0000-0001.jpeg", data / "PNEUMONIA" / "IM-0000-0001.jpeg")  # one film under both classes
    out, table = tmp_path / "m.json", tmp_path / "p.csv"
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet", "--metrics", str(out), "--csv", str(table))
    assert done.returncode == 0, done.stderr
    metrics = json.loads(out.read_text())
    assert metrics["n"] == 13 - 2 - 1 and metrics["class_counts"] == [4, 6] and metrics["scored"] == 13 and len(pd.read_csv(table)) == 13
    assert metrics["copies_counted_once"] == 1 and metrics["filed_under_both"] == 2
    assert "Labelled images: 10 (NORMAL 4, PNEUMONIA 6)" in done.stdout
    assert ("as export counts a set: 1 byte-identical copy of another labelled file counted once; 2 file(s) left out whose identical "
            "copy is filed under the other class (no label)") in done.stdout


def test_predict_and_compare_say_beside_the_numbers_how_many_flagged_images_they_include(tmp_path):
    """A blank frame under NORMAL/ was counted in predict's metrics with the check listed only after them, and compare
    never ran the checks at all."""
    from PIL import Image

    data = kermany_folder(tmp_path / "site", {"test": {"PNEUMONIA": [f"person{i}_bacteria_{i}.jpeg" for i in range(4)],
                                                       "NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(4)]}}) / "test"
    Image.new("L", (40, 30), 128).save(data / "NORMAL" / "blank.png")
    models = [str(write_export(tmp_path / "a")), str(write_export(tmp_path / "b", threshold=0.4))]
    done = call_cli("cxr_tune.predict", "--model", models[0], str(data), "--quiet")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    flag = "  these numbers include 1 image(s) flagged to check first (unlike the chest X-rays the model learned from; listed below)"
    assert lines.index(flag) < next(i for i, line in enumerate(lines) if line.startswith("  sensitivity"))
    assert f"  {data / 'NORMAL' / 'blank.png'}: nearly blank" in done.stdout
    compared = call_cli("cxr_tune.compare", "--model", models[0], "--model", models[1], str(data))
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert lines.index(flag.strip()) < next(i for i, line in enumerate(lines) if line.startswith("| model"))
    assert "Check 1 image(s) before trusting the score: unlike the chest X-rays the model learned from" in lines
    assert any(line.startswith(f"  {data / 'NORMAL' / 'blank.png'}: nearly blank") for line in lines)


def test_a_folder_whose_only_labelled_image_is_filed_under_both_classes_says_so(tmp_path):
    """Both files were read, yet --metrics said none could be read as an image, and without --metrics no line said why
    no metrics came; compare said the folder held no images of either class."""
    import shutil

    model = write_export(tmp_path / "best")
    site = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"]}}) / "test"
    (site / "PNEUMONIA").mkdir()
    shutil.copy(site / "NORMAL" / "IM-0001-0001.jpeg", site / "PNEUMONIA" / "IM-0001-0001.jpeg")
    done = call_cli("cxr_tune.predict", "--model", str(model), str(site), "--metrics", str(tmp_path / "m.json"))
    assert done.returncode == 2 and "every labelled image read has an identical copy filed under the other class" in done.stderr
    done = call_cli("cxr_tune.predict", "--model", str(model), str(site))
    assert done.returncode == 0 and "No metrics: every labelled image read has an identical copy filed under the other class" in done.stdout
    done = call_cli("cxr_tune.compare", "--model", str(model), "--model", str(write_export(tmp_path / "other")), str(site))
    assert done.returncode == 2 and "(2 file(s) left out: an identical copy is filed under the other class)" in done.stderr


def stop_in_the_second_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    """predict scores two files a chunk, and a stop (Ctrl-C) comes while it scores the second chunk."""
    import cxr_tune.predict as module
    from cxr_tune.serving import probabilities

    chunks: list[int] = []

    def scored(model, images):
        chunks.append(len(images))
        if len(chunks) == 2:
            raise KeyboardInterrupt
        return probabilities(model, images)

    monkeypatch.setattr(module, "_CHUNK_FILES", 2)
    monkeypatch.setattr(module, "probabilities", scored)


def test_a_long_run_says_its_progress_per_chunk_and_an_interrupted_one_keeps_what_it_scored(tmp_path, monkeypatch):
    """predict on a large folder was silent until its end, and a Ctrl-C or SIGTERM wrote no CSV and printed nothing: every
    image scored was lost. Now a run of more than one chunk says on stderr how many files each chunk brought it to, and a
    stop writes the chunks already scored to --csv, says how many of how many, and ends with status 130."""
    import cxr_tune.predict as module

    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(3)],
                                                       "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(2)]}})
    monkeypatch.setattr(module, "_CHUNK_FILES", 2)
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet")
    assert done.returncode == 0 and [line.split("] ", 1)[1] for line in done.stderr.splitlines() if "] scored" in line] == [
        "scored 2 of 5 files", "scored 4 of 5 files"], done.stderr
    stop_in_the_second_chunk(monkeypatch)
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet", "--csv", str(tmp_path / "out.csv"))
    assert done.returncode == 130, done.stderr
    assert f"Interrupted after 2 of 5 files: 2 scored; wrote their 2 predictions to {tmp_path / 'out.partial.csv'}" in done.stderr
    assert len(pd.read_csv(tmp_path / "out.partial.csv")) == 2
    monkeypatch.setattr(module, "_CHUNK_FILES", 1024)
    few = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet")
    assert few.returncode == 0 and "scored" not in few.stderr  # one chunk: no progress lines


def test_a_complete_run_removes_an_earlier_stops_partial_file_but_never_a_folder_of_that_name(tmp_path):
    """Before: the partial file's removal (storage.remove) deleted a folder named like it, and all in it, silently."""
    from tests.model_exports import export_folder, kermany_set, save_images

    export_folder(tmp_path / "model")
    images = save_images(kermany_set(3, 6), tmp_path / "images")
    keep = tmp_path / "keep"
    (keep / "scores.partial.csv").mkdir(parents=True)
    (keep / "scores.partial.csv" / "notes.txt").write_text("precious")
    (tmp_path / "out.partial.csv").write_text("path\nan earlier stop's row\n")
    for csv in (keep / "scores.csv", tmp_path / "out.csv"):
        done = call_cli("cxr_tune.predict", "--model", str(tmp_path / "model"), str(images), "--quiet", "--csv", str(csv))
        assert done.returncode == 0, done.stderr
    assert (keep / "scores.partial.csv" / "notes.txt").read_text() == "precious"
    assert not (tmp_path / "out.partial.csv").exists()


def test_a_stopped_run_writes_its_rows_to_a_partial_file_and_leaves_an_earlier_complete_runs_files_as_they_were(tmp_path, monkeypatch):
    """Before: a stop wrote its rows to --csv's own name, over last night's complete file, with nothing marking them partial,
    beside last night's --metrics; a stop before the first chunk wrote a header-only CSV; "scoring 2" counted an unreadable
    file as scored. Now the rows go to OUT.partial.csv, named in the line with the scored and skipped counts apart, the
    complete files stay, and the same command, run to its end, writes the complete file and removes the partial one."""
    import cxr_tune.predict as module

    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(3)],
                                                       "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(2)]}})
    (data / "test" / "NORMAL" / "IM-0001-0001.jpeg").write_bytes(b"")  # unreadable, in the first chunk
    csv, metrics, partial = tmp_path / "out.csv", tmp_path / "out.json", tmp_path / "out.partial.csv"
    command = ("cxr_tune.predict", "--model", str(model), str(data), "--quiet", "--csv", str(csv), "--metrics", str(metrics))
    assert call_cli(*command).returncode == 0
    complete = csv.read_bytes(), metrics.read_bytes()
    stop_in_the_second_chunk(monkeypatch)
    done = call_cli(*command)
    assert done.returncode == 130, done.stderr
    assert (f"Interrupted after 2 of 5 files: 1 scored; not scored: 1 unreadable file(s) (listed below); wrote their 1 predictions "
            f"to {partial} ({csv} and {metrics} left as they were); a stopped run is not resumed: the same command scores all 5 "
            "files again") in done.stderr, done.stderr
    assert f"{data / 'test' / 'NORMAL' / 'IM-0001-0001.jpeg'}: empty file" in done.stderr
    assert (csv.read_bytes(), metrics.read_bytes()) == complete
    assert list(pd.read_csv(partial)["path"]) == [str(data / "test" / "NORMAL" / "IM-0000-0001.jpeg")]
    def stopped(model, images):  # in the first chunk
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "probabilities", stopped)
    done = call_cli(*command)
    assert done.returncode == 130 and "Interrupted after 0 of 5 files: 0 scored; nothing written" in done.stderr, done.stderr
    assert not partial.exists() and (csv.read_bytes(), metrics.read_bytes()) == complete  # no earlier stop's rows beside this one
    stop_in_the_second_chunk(monkeypatch)
    assert call_cli(*command).returncode == 130 and partial.exists()
    monkeypatch.undo()
    assert call_cli(*command).returncode == 0 and not partial.exists() and len(pd.read_csv(csv)) == 4
    assert [module.partial_path(path) for path in ("s3://b/runs/out.csv", "scores", "/dev/stdout")] == [
        "s3://b/runs/out.partial.csv", "scores.partial", "/dev/stdout"]  # a stream is written into as given


def test_a_stopped_run_with_csv_dash_writes_its_rows_to_stdout_and_no_file(tmp_path, monkeypatch, capsys):
    """`--csv -` is stdout, a stream as /dev/stdout is: a stop writes the rows scored there, alone, for the pipe that reads
    them, and says so on stderr; no file named '-' or '-.partial' appears where the command ran."""
    import io

    from cxr_tune.predict import Interrupted, main

    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(3)],
                                                       "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(2)]}})
    stop_in_the_second_chunk(monkeypatch)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(Interrupted):
        main(["--model", str(model), str(data), "--quiet", "--csv", "-"])
    done = capsys.readouterr()
    assert list(pd.read_csv(io.StringIO(done.out))["path"]) == [str(data / "test" / "NORMAL" / f"IM-{i:04d}-0001.jpeg") for i in range(2)]
    assert ("Interrupted after 2 of 5 files: 2 scored; wrote their 2 predictions to stdout; a stopped run is not resumed" in done.err), done.err
    assert sorted(os.listdir(tmp_path)) == ["best", "site"]  # no '-', no '-.partial'


def test_the_metrics_file_names_the_folders_scored_and_says_when_they_chose_the_model(tmp_path):
    """predict --metrics wrote the numbers with no trace of the folders scored nor of the selection-set note the console
    printed beside them; compare --metrics already wrote its notes (selection_sets)."""
    data = kermany_folder(tmp_path / "data", {"val": {"PNEUMONIA": ["person1_virus_1.jpeg"], "NORMAL": ["IM-0001-0001.jpeg"]},
                                              "test": {"NORMAL": ["IM-0002-0001.jpeg"], "PNEUMONIA": ["person2_virus_2.jpeg"]}})
    model = write_export(tmp_path / "chose", external={"source": str(data / "val"), "selection_set": True})
    for folder, chose in (("val", True), ("test", False)):
        typed = os.path.relpath(data / folder, ROOT)  # as typed (CLIs run in ROOT)
        done = call_cli("cxr_tune.predict", "--model", str(model), typed, "--quiet", "--metrics", str(tmp_path / f"{folder}.json"))
        assert done.returncode == 0, done.stderr
        record = json.loads((tmp_path / f"{folder}.json").read_text())
        assert record["inputs"] == [str(data / folder)] and record["selection_set"] is chose
        note = next((line for line in done.stdout.splitlines() if line.startswith("Note: ")), None)
        assert record["selection_sets"] == ({str(model): note.removeprefix("Note: ").removesuffix(".")} if chose else {}), done.stdout


def test_a_model_of_older_preprocessing_is_warned_once_and_only_when_it_scores_an_image_whose_decoding_changed(tmp_path):
    """Before: every run with a version-1 model (the committed results/real/best) warned, JPEG and PNG folders alike,
    and told to export it again, which a model without its experiment's checkpoints cannot be."""
    from cxr_tune.data.imaging import PREPROCESS_VERSION
    from tests.data.test_dicom import jpeg_dicom

    old = write_export(tmp_path / "old", preprocessing={"image_size": 16, "preprocess_version": 1})
    data = kermany_folder(tmp_path / "xrays", {"test": {"NORMAL": ["a.jpeg", "b.png"], "PNEUMONIA": ["c.jpeg"]}})
    done = call_cli("cxr_tune.predict", "--model", str(old), str(data), "--quiet")
    assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr  # JPEG and PNG pixels are as version 1 made them
    for name in ("scan1.dcm", "scan2.dcm"):  # JPEG-compressed DICOMs: version 2 decodes them with Pillow
        (data / "test" / "PNEUMONIA" / name).write_bytes(jpeg_dicom()[0])
    done = call_cli("cxr_tune.predict", "--model", str(old), str(data), "--quiet")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("Warning")]
    assert len(warnings) == 1, done.stderr  # once per run, not per image
    assert warnings[0].startswith(f"Warning: 2 of the 5 image(s) scored (first: '{data / 'test' / 'PNEUMONIA' / 'scan1.dcm'}') decode otherwise "
                                  f"than when '{old / 'model.json'}' was exported (preprocessing version 1, this code's {PREPROCESS_VERSION}; version 2: ")
    assert "if you have its experiment with checkpoints, export it again" in warnings[0]
    # A model of this code's version, and one from before the record (taken at its word), score the DICOMs silently.
    current = write_export(tmp_path / "current", preprocessing={"image_size": 16, "preprocess_version": PREPROCESS_VERSION})
    for model in (current, write_export(tmp_path / "unrecorded")):
        done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet")
        assert done.returncode == 0 and "Warning" not in done.stderr, done.stderr


def test_an_interrupted_run_of_a_model_of_older_preprocessing_warns_of_the_images_it_kept(tmp_path, monkeypatch):
    """A stop keeps the chunks scored (and writes them to --csv): the warning counts those, not the chunk cut short."""
    from tests.data.test_dicom import jpeg_dicom

    old = write_export(tmp_path / "old", preprocessing={"image_size": 16, "preprocess_version": 1})
    data = kermany_folder(tmp_path / "xrays", {"test": {"NORMAL": ["b.jpeg"], "PNEUMONIA": ["c.jpeg", "e.jpeg"]}})
    for name in ("NORMAL/a.dcm", "PNEUMONIA/d.dcm"):  # one JPEG-compressed DICOM in the first chunk of two, one in the second
        (data / "test" / name).write_bytes(jpeg_dicom()[0])
    stop_in_the_second_chunk(monkeypatch)
    done = call_cli("cxr_tune.predict", "--model", str(old), str(data), "--quiet", "--csv", str(tmp_path / "out.csv"))
    assert done.returncode == 130, done.stderr
    assert f"Warning: 1 of the 2 image(s) scored (first: '{data / 'test' / 'NORMAL' / 'a.dcm'}')" in done.stderr
    assert len(pd.read_csv(tmp_path / "out.partial.csv")) == 2


def test_help_says_which_paths_may_be_on_object_storage():
    """Before: --help said the images are local files, though s3:// images, --csv and --metrics work; --explain is refused."""
    done = call_cli("cxr_tune.predict", "--help")
    text = " ".join(done.stdout.split())
    assert "the images are local" not in text and "--csv and --metrics may be on object storage" in text
    assert "--explain writes its figures to a local folder" in text


def test_help_says_a_stopped_run_starts_again_from_the_first_file():
    """A run stopped after hours keeps its rows in OUT.partial.csv, but nothing said that a re-run scores every file again."""
    text = " ".join(call_cli("cxr_tune.predict", "--help").stdout.split())
    assert "A stopped run is not resumed: the same command scores every file again, from the first" in text


def test_every_run_says_how_many_images_it_called_pneumonia_at_which_threshold(tmp_path):
    """predict --quiet --csv on an unlabelled folder printed only "Wrote N predictions": nothing said how many images were
    called PNEUMONIA, nor at which threshold. Images are counted as the metrics count them: a byte-identical copy once."""
    import shutil

    model = write_export(tmp_path / "best", operating_points={"balanced": {"threshold": 0.5}, "sens95": {"threshold": 0.3}})
    data = kermany_folder(tmp_path / "site", {"new": {"unsorted": [f"{i}.jpeg" for i in range(9)]}}) / "new" / "unsorted"
    shutil.copy(data / "0.jpeg", data / "0-again.jpeg")  # one film saved twice: one image
    for point, threshold in (("balanced", "0.5000"), ("sens95", "0.3000")):
        table = tmp_path / f"{point}.csv"
        done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet", "--csv", str(table), "--operating-point", point)
        assert done.returncode == 0, done.stderr
        rows = pd.read_csv(table)
        called = int(rows[rows["path"] != str(data / "0-again.jpeg")]["prediction"].sum())
        assert (f"{called} of 9 images called PNEUMONIA ({called / 9:.0%}) at threshold {threshold} (operating point {point}); "
                "1 byte-identical copy counted once") in done.stdout, done.stdout


def test_the_csv_names_each_rows_threshold_and_the_folders_label(tmp_path):
    """--csv held path, probability, prediction and check: nothing said which cut-off made ``prediction``, and a labelled
    folder's labels were missing, where export's external_predictions.csv has them (``label``: 0 NORMAL, 1 PNEUMONIA)."""
    model = write_export(tmp_path / "best", operating_points={"balanced": {"threshold": 0.5}, "sens95": {"threshold": 0.3}})
    site = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]},
                                              "new": {"unsorted": ["a.jpeg"]}})
    table = tmp_path / "p.csv"
    done = call_cli("cxr_tune.predict", "--model", str(model), str(site / "test"), str(site / "new"), "--quiet", "--csv", str(table),
                    "--operating-point", "sens95")
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(table, dtype={"label": "Int64"}).set_index("path")
    assert list(rows.columns) == ["label", "probability", "prediction", "threshold", "check", "content_hash"]
    labels = rows["label"].to_dict()
    assert (labels[str(site / "test" / "NORMAL" / "IM-0001-0001.jpeg")], labels[str(site / "test" / "PNEUMONIA" / "person1_virus_1.jpeg")]) == (0, 1)
    assert pd.isna(labels[str(site / "new" / "unsorted" / "a.jpeg")])  # no folder says its class: empty
    assert (rows["threshold"] == 0.3).all() and (rows["prediction"] == (rows["probability"] >= 0.3)).all()
    unlabelled = tmp_path / "u.csv"
    assert call_cli("cxr_tune.predict", "--model", str(model), str(site / "new"), "--quiet", "--csv", str(unlabelled)).returncode == 0
    assert list(pd.read_csv(unlabelled).columns) == ["path", "probability", "prediction", "threshold", "check", "content_hash"]


def test_folders_not_read_are_counted_apart_from_unreadable_files(tmp_path):
    """"Skipped 3 unreadable file(s)" counted a system folder (@eaDir) and a link loop as files; now the files and the
    folders are counted apart, each still listed with its reason."""
    import os

    from tests.conftest import write_image

    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": ["person1_virus_1.jpeg"]}}) / "test"
    write_image(data / "NORMAL" / "@eaDir" / "IM-0001-0001.jpeg" / "SYNOFILE_THUMB_M.jpg", seed=5, fmt="JPEG")
    os.symlink("..", data / "PNEUMONIA" / "loop")
    (data / "NORMAL" / "notes.txt").write_text("not an image")
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "Skipped 1 unreadable file(s) and 2 folder(s) not read:" in done.stdout, done.stdout
    assert f"  {data / 'NORMAL' / '@eaDir'}: hidden or system folder" in done.stdout and f"  {data / 'PNEUMONIA' / 'loop'}: link to a folder above" in done.stdout
    only_folders = call_cli("cxr_tune.predict", "--model", str(model), str(data / "PNEUMONIA"), "--quiet")
    assert "Skipped 1 folder(s) not read:" in only_folders.stdout and "unreadable file" not in only_folders.stdout


def test_the_intervals_say_how_many_patients_the_images_come_from_where_the_file_names_name_them(tmp_path):
    """The intervals count images as independent; half A's 312 images come from fewer patients, several images each, and
    nothing said so (nor did --metrics record how many patients there were)."""
    model = write_export(tmp_path / "best")
    names = {"PNEUMONIA": [f"person{i % 4}_bacteria_{i}.jpeg" for i in range(8)], "NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(5)]}
    site = kermany_folder(tmp_path / "site", {"test": {**names, "PNEUMONIA": [*names["PNEUMONIA"], "scan.jpeg"]}}) / "test"
    out = tmp_path / "m.json"
    done = call_cli("cxr_tune.predict", "--model", str(model), str(site), "--quiet", "--metrics", str(out))
    assert done.returncode == 0, done.stderr
    assert ("  per image: 14 images; the 13 whose file names name a patient are from 9 patients (patients with several images make "
            "these intervals somewhat narrow)") in done.stdout
    metrics = json.loads(out.read_text())
    assert (metrics["images"], metrics["images_naming_a_patient"], metrics["patients"]) == (14, 13, 9)
    (site / "PNEUMONIA" / "scan.jpeg").unlink()
    done = call_cli("cxr_tune.predict", "--model", str(model), str(site), "--quiet")
    assert "  per image: 13 images from 9 patients (patients with several images make these intervals somewhat narrow)" in done.stdout
    unnamed = kermany_folder(tmp_path / "other", {"test": {"NORMAL": ["a.jpeg", "b.jpeg"], "PNEUMONIA": ["c.jpeg"]}}) / "test"
    done = call_cli("cxr_tune.predict", "--model", str(model), str(unnamed), "--quiet", "--metrics", str(out))
    assert "per image:" not in done.stdout and json.loads(out.read_text())["patients"] is None  # no name says a patient


def test_the_metrics_record_the_bootstraps_resamples_and_seed_and_the_csv_lets_a_reader_recount_the_images(tmp_path):
    """--metrics named neither the bootstrap's resamples nor its seed, and --csv listed every file (13) while the metrics
    counted 12 images, with nothing to tell which rows were one image: its content hash now says."""
    import inspect
    import shutil

    from cxr_tune.calibration import calibration_metrics
    from cxr_tune.selection import REPORTED_RESAMPLES
    from cxr_tune.set_metrics import bootstrap_intervals, bootstrap_with_reasons, paired_differences, paired_with_reasons

    model = write_export(tmp_path / "best")
    data = kermany_folder(tmp_path / "site", {"test": {"PNEUMONIA": [f"person{i}_bacteria_{i}.jpeg" for i in range(6)],
                                                       "NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)]}}) / "test"
    shutil.copy(data / "PNEUMONIA" / "person0_bacteria_0.jpeg", data / "PNEUMONIA" / "person0_bacteria_99.jpeg")
    out, table = tmp_path / "m.json", tmp_path / "p.csv"
    done = call_cli("cxr_tune.predict", "--model", str(model), str(data), "--quiet", "--metrics", str(out), "--csv", str(table))
    assert done.returncode == 0, done.stderr
    metrics = json.loads(out.read_text())
    assert metrics["intervals"] == {"method": INTERVAL_METHODS, "resamples": REPORTED_RESAMPLES, "seed": 0}
    for drawn in (bootstrap_intervals, bootstrap_with_reasons, paired_differences, paired_with_reasons, calibration_metrics):  # every bootstrap behind the numbers
        assert {key: inspect.signature(drawn).parameters[key].default for key in ("resamples", "seed")} == {"resamples": REPORTED_RESAMPLES, "seed": 0}
    rows = pd.read_csv(table)
    assert list(rows.columns) == ["path", "label", "probability", "prediction", "threshold", "check", "content_hash"]
    assert len(rows) == 13 and rows["content_hash"].nunique() == metrics["n"] == 12


def test_a_folder_of_links_into_the_set_that_chose_the_model_says_how_many_of_its_images_lie_in_it(tmp_path):
    """A folder of links to half A's images, scored with a model whose model.json names half A (external.source) without
    image_hashes, printed AUC 1.0 with no note (selection_set false), though the same files named one by one got it; and
    then the note named the first file only."""
    data = kermany_folder(tmp_path / "data", {"val": {"PNEUMONIA": ["person1_virus_1.jpeg"], "NORMAL": ["IM-0001-0001.jpeg"]},
                                              "test": {"NORMAL": ["IM-0002-0001.jpeg"], "PNEUMONIA": ["person2_virus_2.jpeg"]}})
    model = write_export(tmp_path / "chose", external={"source": str(data / "val"), "selection_set": True})
    links = tmp_path / "site"
    for cls, name in (("PNEUMONIA", "person1_virus_1.jpeg"), ("NORMAL", "IM-0001-0001.jpeg")):
        (links / cls).mkdir(parents=True)
        (links / cls / name).symlink_to(data / "val" / cls / name)
    what = "this model's external validation set (model.json external.source), which chose the model"
    done = call_cli("cxr_tune.predict", "--model", str(model), str(links), "--quiet", "--metrics", str(tmp_path / "m.json"))
    assert done.returncode == 0, done.stderr
    assert (f"Note: 2 of 2 scored images lie in {what} (the first: {links / 'NORMAL' / 'IM-0001-0001.jpeg'}): these are "
            "selection-set numbers for this model, optimistic, not an independent test.") in done.stdout.splitlines(), done.stdout
    assert json.loads((tmp_path / "m.json").read_text())["selection_set"] is True
    files = [str(links / "PNEUMONIA" / "person1_virus_1.jpeg"), str(links / "NORMAL" / "IM-0001-0001.jpeg")]
    done = call_cli("cxr_tune.predict", "--model", str(model), *files, str(data / "test"), "--quiet")
    assert done.returncode == 0, done.stderr
    assert (f"Note: 2 of 4 scored images lie in {what} (the first: {files[1]}): these numbers include selection-set images for this "
            "model, optimistic, not an independent test.") in done.stdout.splitlines(), done.stdout


def test_the_metrics_file_says_which_model_ran_by_its_resolved_folder_and_model_onnx_hash(tmp_path):
    """predict --metrics wrote "model" as typed (relative) and nothing of the model.onnx that ran nor when it was made."""
    import hashlib

    data = kermany_folder(tmp_path / "data", {"test": {"NORMAL": ["IM-0002-0001.jpeg"], "PNEUMONIA": ["person2_virus_2.jpeg"]}})
    model = write_export(tmp_path / "best", exported_at="2026-12-04T21:37:12+0000", adaptation={"adapted_at": "2026-12-07T21:48:42+0000"})
    typed = os.path.relpath(model, ROOT)
    done = call_cli("cxr_tune.predict", "--model", typed, str(data / "test"), "--quiet", "--metrics", str(tmp_path / "m.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "m.json").read_text())["model_records"] == {typed: {
        "folder": str(model), "model_file": "model.onnx", "sha256": hashlib.sha256((model / "model.onnx").read_bytes()).hexdigest(),
        "exported_at": "2026-12-04T21:37:12+0000", "adapted_at": "2026-12-07T21:48:42+0000"}}


def test_the_metrics_file_names_each_skipped_and_flagged_file_with_the_reason(tmp_path):
    """predict --metrics wrote only counts ("skipped": 1, "flagged": 1): which files, and why, were on the console alone."""
    from PIL import Image

    data = kermany_folder(tmp_path / "site", {"test": {"PNEUMONIA": ["person1_bacteria_1.jpeg"], "NORMAL": ["IM-0001-0001.jpeg"]}}) / "test"
    Image.new("L", (40, 30), 128).save(data / "NORMAL" / "blank.png")
    (data / "NORMAL" / "notes.txt").write_text("not an image")
    done = call_cli("cxr_tune.predict", "--model", str(write_export(tmp_path / "best")), str(data), "--quiet", "--metrics", str(tmp_path / "m.json"))
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "m.json").read_text())
    assert record["skipped"] == 1 and record["flagged"] == 1  # the counts, as before
    assert [entry["path"] for entry in record["skipped_files"]] == [str(data / "NORMAL" / "notes.txt")] and record["skipped_files"][0]["reason"]
    assert record["skipped_files"][0]["kind"] == "file"
    assert [entry["path"] for entry in record["flagged_files"]] == [str(data / "NORMAL" / "blank.png")]
    assert record["flagged_files"][0]["reason"].startswith("nearly blank")


def test_the_per_image_lines_sit_under_one_header_naming_their_columns(tmp_path, capsys):
    """"0.5500  NORMAL     /path/x.jpeg" came with no header: nothing said the number is P(PNEUMONIA) or the word the call."""
    from cxr_tune.predict import main
    from tests.conftest import write_image

    model = write_export(tmp_path / "best", image_size=16)
    for seed, name in enumerate(("NORMAL/a.jpeg", "PNEUMONIA/b.jpeg")):
        write_image(tmp_path / "site" / name, seed=seed)
    assert main(["--model", str(model), str(tmp_path / "site")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines.index("P(PNEUMONIA)  predicted  file")
    rows = lines[header + 1 : header + 3]
    assert [line.split()[2] for line in rows] == [str(tmp_path / "site" / name) for name in ("NORMAL/a.jpeg", "PNEUMONIA/b.jpeg")]
    assert all(line.index(line.split()[1]) == len("P(PNEUMONIA)  ") for line in rows)  # each column under its name
    assert sum(line.startswith("P(PNEUMONIA)  predicted") for line in lines) == 1

    assert main(["--model", str(model), str(tmp_path / "site"), "--quiet"]) == 0
    assert "P(PNEUMONIA)  predicted  file" not in capsys.readouterr().out  # no lines, no header


@pytest.mark.parametrize("flag", ["--csv", "--metrics"])
def test_a_dash_writes_the_file_alone_to_stdout_and_every_other_line_to_stderr(flag, tmp_path, monkeypatch, capsys):
    """Before: `predict ... --csv -` wrote a file named '-' and said "Wrote 33 predictions to -"; stdout held the console's
    lines. Now '-' is stdout, as for Unix tools, holding the file alone, so a pipeline reads it as it would the file."""
    import io

    from cxr_tune.predict import main

    model = write_export(tmp_path / "best", image_size=16)
    data = kermany_folder(tmp_path / "site", {"test": {"PNEUMONIA": ["person1_virus_1.jpeg", "person2_virus_2.jpeg"],
                                                       "NORMAL": ["IM-0001-0001.jpeg"]}})
    monkeypatch.chdir(tmp_path)  # where a file named '-' was written
    assert main(["--model", str(model), str(data / "test"), flag, "-"]) == 0
    done = capsys.readouterr()
    assert not (tmp_path / "-").exists()
    if flag == "--csv":
        table = pd.read_csv(io.StringIO(done.out))
        assert len(table) == 3 and list(table.columns)[:3] == ["path", "label", "probability"]
        assert "Wrote 3 predictions to stdout" in done.err
    else:
        assert json.loads(done.out)["class_counts"] == [1, 2]
        assert "Wrote the labelled images' metrics to stdout" in done.err
    assert "Labelled images: 3 (NORMAL 1, PNEUMONIA 2)" in done.err  # the console's lines, on stderr
