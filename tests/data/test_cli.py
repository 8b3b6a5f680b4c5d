"""``python -m cxr_tune.data``: inspect, prepare, synthesize, and one-line errors before Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA, call_cli, kermany_folder, table_rows


def test_inspect_reports_counts_duplicates_leakage_and_skipped(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", {
        "train": {"NORMAL": ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg"],
                  "PNEUMONIA": ["person1_virus_1.jpeg", "person2_virus_2.jpeg", "person3_bacteria_3.jpeg"]},
        # person2_virus is also in train (one child: a leak); person1_bacteria is another child than person1_virus
        "test": {"NORMAL": ["IM-0005-0001.jpeg"], "PNEUMONIA": ["person1_bacteria_9.jpeg", "person2_virus_8.jpeg"]},
    })
    (root / "train" / "NORMAL" / ".DS_Store").write_bytes(b"junk")
    done = call_cli("cxr_tune.data", "inspect", str(root), "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "real data at" in out and "train" in out and "PNEUMONIA" in out
    assert "WARNING 1 group(s) (patients or identical files) cross the folders" in out and "person2_virus" in out
    assert ("1 image(s) of 1 group(s) left out of training, validation and the external set (1 from train/): same patient or identical "
            "file is in the test folder") in out
    assert "1 number(s) appear in more than one folder with a different type only (WARNING, not a leak" in out
    # person1 is virus in train/ and bacteria in test/: both types across the folders, one type within each
    assert "Across all folders 1 of 3 person numbers carry both types (train/ 0 of 3, test/ 0 of 2);" in out
    assert ".DS_Store: not an image Pillow can read" in out


def test_inspect_says_a_test_copy_of_a_file_filed_under_both_classes_is_left_out_of_test_too(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", {
        "train": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)], "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]},
        "test": {"NORMAL": ["IM-0200-0001.jpeg"], "PNEUMONIA": ["person200_virus_1.jpeg", "person201_virus_2.jpeg"]},
    })
    (root / "test" / "PNEUMONIA" / "crosslabel.jpeg").write_bytes((root / "train" / "NORMAL" / "IM-0001-0001.jpeg").read_bytes())
    done = call_cli("cxr_tune.data", "inspect", str(root), "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    assert ("2 image(s) of 1 group(s) left out of training, validation, the external set and test (1 from test/, 1 from train/): "
            "identical file filed under NORMAL and PNEUMONIA") in done.stdout
    roles = {row[0]: row[1:3] for row in table_rows(done.stdout) if len(row) == 6}
    assert roles["test"] == ["1", "2"] and roles["excluded"] == ["1", "1"]


def test_inspect_reports_the_size_training_sees_of_a_photo_with_an_exif_rotation(tmp_path):
    """A phone photo of a film is stored on its side with an EXIF orientation; training decodes it upright,
    so inspect lists it upright too (orientations 5-8 swap width and height)."""
    import numpy as np
    from PIL import Image

    from cxr_tune.data.imaging import decode_gray

    root = kermany_folder(tmp_path / "chest_xray", {"train": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)],
                                                              "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]}})
    for i, path in enumerate(sorted(root.glob("train/*/*.jpeg"))):
        exif = Image.Exif()
        exif[0x0112] = (6, 8)[i % 2]
        ramp = np.tile(np.arange(60, dtype=np.uint8) * 4 + i, (20, 1))
        Image.fromarray(ramp).save(path, exif=exif)  # stored 60 wide and 20 high, a ramp from left to right
        assert decode_gray(path, 60)[:, 0].std() > 0  # what training sees: the ramp runs down the image, upright 20x60
    done = call_cli("cxr_tune.data", "inspect", str(root), "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    rows = [row for row in table_rows(done.stdout) if row[:2] in (["train", "NORMAL"], ["train", "PNEUMONIA"])]
    header = next(row for row in table_rows(done.stdout) if "width min/median/max" in row)
    assert len(rows) == 2 and all(dict(zip(header, row, strict=True))["width min/median/max"] == "20/20/20" for row in rows)
    assert all(dict(zip(header, row, strict=True))["height min/median/max"] == "60/60/60" for row in rows)


@pytest.mark.slow  # builds the image cache through Ray
def test_prepare_builds_then_reuses(ray_session, tmp_path, synthetic_root):
    args = ("cxr_tune.data", "prepare", str(synthetic_root), "--image-size", "20", "--cache-dir", str(tmp_path))
    first = call_cli(*args)
    assert first.returncode == 0, first.stderr
    assert "SYNTHETIC" in first.stdout and "Built in" in first.stdout
    second = call_cli(*args)
    assert second.returncode == 0 and "Reused image cache" in second.stdout


def test_prepare_says_why_the_cache_holds_fewer_images_than_the_roles_count_files(tmp_path):
    """A copy (or a link) is stored once and a file that failed in the build is left out: the cache line says so."""
    import json

    from cxr_tune.data.cache import META, cache_path
    from cxr_tune.data.sources import build_manifest

    root = kermany_folder(tmp_path / "chest_xray", {
        "train": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)], "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]},
    })
    (root / "train" / "NORMAL" / "copy.jpeg").write_bytes((root / "train" / "NORMAL" / "IM-0003-0001.jpeg").read_bytes())
    manifest = build_manifest(str(root), str(tmp_path / "c")).manifest
    failed = manifest.iloc[[0]][["content_hash", "path"]].assign(reason="not an image Pillow can read", retry=False)
    meta = Path(cache_path(str(tmp_path / "c"), manifest, 16)) / META
    meta.parent.mkdir(parents=True)  # what an earlier build committed: 12 distinct images, one of which failed
    meta.write_text(json.dumps({"data": "data", "n_images": 11, "failures": failed.to_dict(orient="records"), "build_seconds": 1.0}))
    done = call_cli("cxr_tune.data", "prepare", str(root), "--image-size", "16", "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 0, done.stderr
    roles = {row[0]: row[1:4] for row in table_rows(done.stdout) if len(row) == 6}
    assert int(roles["train"][2]) + int(roles["val"][2]) == 13
    assert ("Reused image cache of 11 images (13 files: 1 byte-identical copy stored once; 1 failed in the build, listed below) "
            "at 16x16 px") in done.stdout


def test_synthesize_writes_the_set(tmp_path):
    done = call_cli("cxr_tune.data", "synthesize", str(tmp_path / "out"), "--n", "30", "--seed", "4")
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "out").rglob("*.jpeg"))) == 30 and (tmp_path / "out" / "SYNTHETIC.json").exists()


@pytest.mark.parametrize(("layout", "message"), [
    (None, "does not exist"),
    ({"train": {"cats": []}}, "has no NORMAL or PNEUMONIA folder"),
    ({"train": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": []}}, "has no readable image"),
])
def test_bad_data_stops_with_one_line_and_status_2_before_ray(tmp_path, layout, message):
    root = tmp_path / "chest_xray"
    if layout is not None:
        for split, classes in layout.items():
            for cls in classes:
                (root / split / cls).mkdir(parents=True)
        kermany_folder(root, layout)
    done = call_cli("cxr_tune.data", "prepare", str(root), "--cache-dir", str(tmp_path / "c"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert str(root) in lines[0]
    assert "ray" not in done.stdout.lower()  # nothing started


def test_an_empty_class_folder_in_val_or_test_counts_as_absent_and_in_train_stops(tmp_path):
    """Folders laid out before they are filled: an empty val/PNEUMONIA or test/PNEUMONIA gives what the absent one gives."""
    root = kermany_folder(tmp_path / "chest_xray", {
        "train": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)], "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]},
        "val": {"NORMAL": ["IM-0100-0001.jpeg", "IM-0101-0001.jpeg"]},
        "test": {"NORMAL": ["IM-0200-0001.jpeg", "IM-0201-0001.jpeg"]},
    })
    args = ("cxr_tune.data", "inspect", str(root), "--cache-dir", str(tmp_path / "c"))
    absent = call_cli(*args)
    assert absent.returncode == 0, absent.stderr
    assert "the val/ folder holds 2 NORMAL and 0 PNEUMONIA images, too few to select on" in absent.stdout
    for split in ("val", "test"):
        (root / split / "PNEUMONIA").mkdir()
    empty = call_cli(*args)
    assert (empty.returncode, empty.stderr, empty.stdout) == (0, absent.stderr, absent.stdout)
    for name in os.listdir(root / "train" / "PNEUMONIA"):
        os.remove(root / "train" / "PNEUMONIA" / name)
    refused = call_cli(*args)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: '{root / 'train' / 'PNEUMONIA'}' has no readable image (it is empty); every class folder needs at least one")


@pytest.mark.parametrize(("missing", "held", "rate"), [("PNEUMONIA", "NORMAL", "sensitivity"), ("NORMAL", "PNEUMONIA", "specificity")])
def test_inspect_says_when_test_has_one_class_so_its_class_metrics_will_be_n_a(tmp_path, missing, held, rate):
    test = {"NORMAL": ["IM-0200-0001.jpeg", "IM-0201-0001.jpeg"], "PNEUMONIA": ["person200_virus_1.jpeg", "person201_virus_2.jpeg"]}
    root = kermany_folder(tmp_path / "chest_xray", {
        "train": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)], "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]},
        "test": {held: test[held]},
    })
    args = ("cxr_tune.data", "inspect", str(root), "--cache-dir", str(tmp_path / "c"))
    done = call_cli(*args)
    assert done.returncode == 0, done.stderr
    assert (f"Test: the test/ folder has no {missing} image to score (2 {held}), so its {rate}, AUC and balanced accuracy "
            f"will be n/a.") in done.stdout.splitlines()
    kermany_folder(root, {"test": {missing: test[missing]}})
    assert "Test:" not in call_cli(*args).stdout


@pytest.mark.skipif(not SHARED_DATA.exists(), reason="real data not present (../shared/data)")
def test_inspect_real_training_split(tmp_path):
    done = call_cli("cxr_tune.data", "inspect", str(SHARED_DATA), "--cache-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr
    rows = {tuple(row[:2]): row for row in table_rows(done.stdout) if row[0] == "train"}
    assert rows[("train", "NORMAL")][2] == "1341" and rows[("train", "PNEUMONIA")][2] == "3875"
    # Roles: every image of the training folder trains or validates (nothing leaks to exclude), the
    # carved share is --val-fraction's 15 % by patient, and each keeps the class balance.
    roles = {row[0]: [int(v) for v in row[1:4]] for row in table_rows(done.stdout) if row[0] in ("train", "val", "external", "excluded") and len(row) == 6}
    assert "excluded" not in roles and "Nothing is excluded" in done.stdout
    assert "Images unlike chest X-rays (colour, blank, tiny, very large, a DICOM lateral view or not a radiograph): none." in done.stdout
    assert roles["train"][0] + roles["val"][0] == 1341 and roles["train"][1] + roles["val"][1] == 3875
    assert 0.13 < roles["val"][2] / 5216 < 0.17 and 0.72 < roles["val"][1] / roles["val"][2] < 0.77
    if (SHARED_DATA / "val").exists():  # the 315-image external sample (see ../shared/data/README.md)
        assert roles["external"] == [118, 197, 315] and f"External validation: {SHARED_DATA / 'val'}" in done.stdout


def test_a_flag_another_subcommand_takes_is_refused_with_this_subcommands_usage():
    done = call_cli("cxr_tune.data", "inspect", "some/folder", "--image-size", "64")
    assert done.returncode == 2 and done.stderr.startswith("usage: python -m cxr_tune.data inspect")
    assert done.stderr.strip().splitlines()[-1].endswith("error: unrecognized arguments: --image-size 64")


def test_prepares_help_says_its_default_size_and_the_sizes_each_shipped_space_trains_at():
    """A cache at a size no search reads is wasted minutes: --help names the default and each space's sizes."""
    from cxr_tune.data.__main__ import build_parser
    from cxr_tune.search.space import SPACES_DIR, load_space

    commands = next(a for a in build_parser()._actions if a.dest == "command").choices  # argparse's subcommands
    text = " ".join(commands["prepare"].format_help().split())
    assert "(default: 128," in text
    for name in sorted(p.stem for p in SPACES_DIR.glob("*.yaml")):
        sizes = "/".join(str(s) for s in load_space(name).image_sizes())
        assert f"{name} {sizes}" in text, f"prepare --help does not say space {name} trains at {sizes} px"


def test_inspect_runs_where_the_default_cache_folder_cannot_be_made_and_a_cache_building_command_or_a_named_one_is_refused(tmp_path, monkeypatch):
    """Before: with HOME where nothing can be made (a service account's /nonexistent, /proc/...), `data inspect DIR` ended
    with status 2, "the cache folder ... cannot be written", though inspect only saves its scan there when it can."""
    root = kermany_folder(tmp_path / "chest_xray", {"train": {"NORMAL": [f"IM-000{i}-0001.jpeg" for i in range(1, 9)],
                                                               "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(1, 9)]}})
    monkeypatch.setenv("HOME", "/proc/cxr-tune-nohome")
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.delenv("CXR_TUNE_CACHE", raising=False)
    done = call_cli("cxr_tune.data", "inspect", str(root))
    assert done.returncode == 0 and "real data at" in done.stdout, done.stderr
    refused = "cannot be written: "
    prepared = call_cli("cxr_tune.data", "prepare", str(root))  # builds a cache: refused before any work, as before
    assert prepared.returncode == 2 and prepared.stderr.startswith("error: the cache folder '/proc/cxr-tune-nohome/"), prepared.stderr
    named = call_cli("cxr_tune.data", "inspect", str(root), "--cache-dir", "/proc/cxr-tune-x")  # one the user named: refused
    assert named.returncode == 2 and named.stderr.startswith(f"error: --cache-dir '/proc/cxr-tune-x' {refused}"), named.stderr
    monkeypatch.setenv("CXR_TUNE_CACHE", "/proc/cxr-tune-y")
    named = call_cli("cxr_tune.data", "inspect", str(root))
    assert named.returncode == 2 and named.stderr.startswith(f"error: $CXR_TUNE_CACHE '/proc/cxr-tune-y' {refused}"), named.stderr
