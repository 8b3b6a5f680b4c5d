"""Manifests from the Kermany layout: patients, groups of identical files, and every bad input."""

from __future__ import annotations

import os
import shutil

import pytest

from cxr_tune.data.sources import build_manifest, patient_id
from cxr_tune.errors import UserError
from tests.conftest import kermany_folder, permissions_bind, run_cli, unreadable, write_image

GOOD = {
    "train": {
        "NORMAL": ["IM-0001-0001.jpeg", "IM-0001-0002.jpeg", "NORMAL2-IM-0002-0001.jpeg"],
        "PNEUMONIA": ["person1_bacteria_1.jpeg", "person1_virus_2.jpeg", "person2_bacteria_3.jpeg"],
    },
    "test": {"NORMAL": ["IM-0100-0001.jpeg"], "PNEUMONIA": ["person100_virus_1.jpeg"]},
}


@pytest.mark.parametrize(("name", "patient"), [
    ("person1000_bacteria_2931.jpeg", "person1000_bacteria"),
    ("person1_virus_7.jpeg", "person1_virus"),  # Kermany numbers patients per infection type
    ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-0587-0001-0002.jpeg", "NORMAL2-IM-0587"),
    ("IM-0023-0001-0002.jpeg", "IM-0023"),
    # The current Mendeley download (version 3): one id per patient, whatever the type.
    ("NORMAL-1003233-0001.jpeg", "patient-1003233"),
    ("BACTERIA-1351146-0002.jpeg", "patient-1351146"),
    ("VIRUS-355597-0002.jpeg", "patient-355597"),
    ("scan_42.png", None),
])
def test_patient_ids_from_kermany_names(name, patient):
    assert patient_id(name) == patient


def test_manifest_columns_labels_and_patients(tmp_path):
    source = build_manifest(str(kermany_folder(tmp_path / "chest_xray", GOOD)))
    manifest = source.manifest
    assert list(manifest.columns[:6]) == ["path", "label", "patient_id", "group_id", "split", "content_hash"]
    assert len(manifest) == 8 and not source.synthetic and source.skipped.empty
    train = manifest[manifest["split"] == "train"]
    assert train.groupby("label").size().to_dict() == {0: 3, 1: 3}
    assert train.groupby("patient_id").size().to_dict() == {"IM-0001": 2, "NORMAL2-IM-0002": 1, "person1_bacteria": 1, "person1_virus": 1, "person2_bacteria": 1}


def test_identical_files_join_one_group_across_patient_ids(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    copy = root / "train" / "PNEUMONIA" / "person77_bacteria_9.jpeg"
    shutil.copy(root / "train" / "PNEUMONIA" / "person2_bacteria_3.jpeg", copy)
    manifest = build_manifest(str(root)).manifest.set_index("path")
    original = manifest.loc[str(root / "train" / "PNEUMONIA" / "person2_bacteria_3.jpeg")]
    duplicate = manifest.loc[str(copy)]
    assert duplicate["patient_id"] == "person77_bacteria" and original["patient_id"] == "person2_bacteria"
    assert duplicate["group_id"] == original["group_id"] == "person2_bacteria"
    assert duplicate["content_hash"] == original["content_hash"]


def test_bad_files_are_skipped_and_listed_with_a_reason(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    normal = root / "train" / "NORMAL"
    good = (normal / "IM-0001-0001.jpeg").read_bytes()
    (normal / "IM-0009-0001.jpeg").write_bytes(good[: len(good) // 2])  # truncated
    (normal / "IM-0010-0001.jpeg").write_bytes(b"")  # zero bytes
    (normal / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (normal / "notes.txt").write_text("radiologist notes")
    (normal / "IM-0011-0001.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    os.symlink(tmp_path / "gone.jpeg", normal / "IM-0012-0001.jpeg")  # unreadable: dangling link
    source = build_manifest(str(root))
    reasons = {os.path.basename(p): r for p, r in zip(source.skipped["path"], source.skipped["reason"], strict=True)}
    assert reasons["IM-0009-0001.jpeg"].startswith("truncated")
    assert reasons["IM-0010-0001.jpeg"] == "empty file (0 bytes)"
    assert reasons[".DS_Store"] == reasons["notes.txt"] == "not an image Pillow can read"
    assert "IM-0011-0001.jpeg" in reasons
    assert reasons["IM-0012-0001.jpeg"] == f"broken link (its target {tmp_path / 'gone.jpeg'} does not exist)"
    assert len(source.manifest) == 8  # the good images are all still there


def test_an_empty_folder_named_like_an_image_and_an_image_past_pillows_size_guard_are_listed_with_a_plain_reason(tmp_path, monkeypatch):
    """Before: a folder IM-9013-0001.jpeg/ in a class folder was passed over without a word, an image of more than 179 MP
    was listed with Pillow's "DecompressionBombError: ... could be decompression bomb DOS attack.", and the list, which
    names folders too (a link loop, COVID/, __MACOSX/), was headed "Skipped files"."""
    from PIL import Image

    from cxr_tune.data.report import skipped_report

    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    normal = root / "train" / "NORMAL"
    (normal / "IM-9013-0001.jpeg").mkdir()
    write_image(normal / "IM-9014-0001.png", size=(60, 40), fmt="PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses more than twice it: 2,400 pixels here
    source = build_manifest(str(root))
    reasons = dict(zip(source.skipped["path"], source.skipped["reason"], strict=True))
    assert reasons[str(normal / "IM-9013-0001.jpeg")] == "a folder, not an image file (empty); not read"
    assert reasons[str(normal / "IM-9014-0001.png")] == (
        "0.0024 MP, larger than Pillow's 0.002 MP limit (its decompression-bomb guard, Image.MAX_IMAGE_PIXELS x 2); skipped")
    assert skipped_report(source.skipped).startswith("Skipped files and folders (2):")


def test_an_unreadable_folder_inside_a_class_is_listed_like_an_unreadable_file(tmp_path):
    prefix = permissions_bind()
    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    locked_dir = write_image(root / "train" / "NORMAL" / "locked" / "IM-0020-0001.jpeg", seed=20).parent
    locked_file = write_image(root / "train" / "NORMAL" / "IM-0021-0001.jpeg", seed=21)
    with unreadable(locked_dir, locked_file):
        done = run_cli("cxr_tune.data", "inspect", str(root), "--cache-dir", str(tmp_path / "cache"), prefix=prefix)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"  {locked_file}: permission denied" in done.stdout.splitlines()
    assert f"  {locked_dir}: permission denied" in done.stdout.splitlines()


@pytest.mark.parametrize("locked", [".", "train", "train/NORMAL", "test/PNEUMONIA"])
def test_an_unreadable_data_split_or_class_folder_is_a_one_line_error(tmp_path, locked):
    prefix = permissions_bind()
    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    with unreadable(root / locked):
        done = run_cli("cxr_tune.data", "inspect", str(root), "--cache-dir", str(tmp_path / "cache"), prefix=prefix)
    folder = os.path.normpath(root / locked)
    assert done.returncode == 2 and done.stderr.splitlines() == [f"error: cannot read the folder '{folder}': permission denied"], done.stderr[-2000:]


def test_missing_path_is_a_one_line_error(tmp_path):
    with pytest.raises(UserError, match="does not exist; expected ROOT/"):
        build_manifest(str(tmp_path / "nowhere"))


def test_layout_without_class_folders_is_an_error(tmp_path):
    (tmp_path / "data" / "train" / "cats").mkdir(parents=True)
    with pytest.raises(UserError, match=r"has no NORMAL or PNEUMONIA folder"):
        build_manifest(str(tmp_path / "data"))
    (tmp_path / "flat" / "NORMAL").mkdir(parents=True)
    with pytest.raises(UserError, match="single split"):
        build_manifest(str(tmp_path / "flat"))


def test_class_with_no_readable_image_is_an_error(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", {"train": {"NORMAL": ["IM-0001-0001.jpeg"], "PNEUMONIA": []}})
    (root / "train" / "PNEUMONIA").mkdir(parents=True, exist_ok=True)
    (root / "train" / "PNEUMONIA" / "person1_bacteria_1.jpeg").write_bytes(b"")
    with pytest.raises(UserError, match=r"PNEUMONIA' has no readable image \(1 file\(s\) skipped.*empty file"):
        build_manifest(str(root))


def test_nested_download_folders_are_found(tmp_path):
    kermany_folder(tmp_path / "download" / "chest_xray" / "chest_xray", GOOD)
    source = build_manifest(str(tmp_path / "download"))
    assert source.root.endswith(os.path.join("chest_xray", "chest_xray")) and len(source.manifest) == 8


def test_manifest_is_cached_until_a_file_changes(tmp_path, monkeypatch):
    import cxr_tune.data.sources as sources

    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    first = build_manifest(str(root), str(tmp_path / "cache"))
    calls = []
    monkeypatch.setattr(sources, "_inspect_file", lambda f: calls.append(f) or pytest.fail("re-read an unchanged folder"))
    again = build_manifest(str(root), str(tmp_path / "cache"))
    assert again.manifest.equals(first.manifest) and not calls
    monkeypatch.undo()
    write_image(root / "train" / "NORMAL" / "IM-0003-0001.jpeg", seed=99)
    assert len(build_manifest(str(root), str(tmp_path / "cache")).manifest) == 9
    # A DICOM decoder installed since (what a skipped file's reason says to do): the folder is read again.
    read = []
    original = sources._inspect_file
    monkeypatch.setattr(sources, "_inspect_file", lambda f: read.append(f) or original(f))
    monkeypatch.setattr(sources, "decoders_installed", lambda: "pydicom,pylibjpeg,libjpeg")
    assert len(build_manifest(str(root), str(tmp_path / "cache")).manifest) == 9 and len(read) == 9


def test_an_image_rewritten_in_place_is_read_again(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    first = build_manifest(str(root), str(tmp_path / "cache")).manifest.set_index("path")["content_hash"]
    path = root / "train" / "NORMAL" / "IM-0001-0001.jpeg"
    before = os.stat(path).st_mtime_ns
    write_image(path, seed=99)  # same path, new pixels
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a clock coarser than the rewrite still moves on
    again = build_manifest(str(root), str(tmp_path / "cache")).manifest.set_index("path")["content_hash"]
    assert again[str(path)] != first[str(path)]
    assert again.drop(str(path)).equals(first.drop(str(path)))


def test_an_image_rewritten_keeping_its_size_and_time_is_read_again(tmp_path):
    """``cp -p``, ``rsync -t --inplace`` and de-identification tools put the old time back on new pixels of the same
    size; the change time and the inode, which no tool sets, still say so (the image cache follows the content hashes)."""
    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    path = write_image(root / "train" / "NORMAL" / "IM-0001-0001.jpeg", seed=1, fmt="BMP")  # BMP: same size whatever the pixels
    first = build_manifest(str(root), str(tmp_path / "cache")).manifest.set_index("path")["content_hash"]
    before = os.stat(path)
    write_image(path, seed=99, fmt="BMP")  # in place: same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    again = build_manifest(str(root), str(tmp_path / "cache")).manifest.set_index("path")["content_hash"]
    assert again[str(path)] != first[str(path)]
    assert again.drop(str(path)).equals(first.drop(str(path)))


def test_unnamed_files_take_their_patient_sub_folder_and_never_share_a_group_by_name(tmp_path):
    from cxr_tune.data.prepared import DataOptions, split_data
    from cxr_tune.data.report import inspect_report

    # A site export: one sub-folder per patient with images numbered inside it, plus loose files named alike.
    seed = 0
    for cls in ("NORMAL", "PNEUMONIA"):
        for patient in range(12):
            for k in (1, 2, 3):
                seed += 1
                write_image(tmp_path / "site" / "train" / cls / f"patient{patient:03d}" / f"{k}.png", seed=seed)
        seed += 1
        write_image(tmp_path / "site" / "train" / cls / "1.png", seed=seed)
    split = split_data(DataOptions(data=str(tmp_path / "site"), cache_dir=str(tmp_path / "cache"), val_fraction=0.3, val_data="none"))
    roles = split.roles.assign(folder=split.roles["path"].map(lambda p: os.path.relpath(os.path.dirname(p), tmp_path / "site")))
    assert roles.groupby("folder")["group_id"].nunique().max() == 1  # a patient folder is one group
    assert roles.groupby("group_id")["folder"].nunique().max() == 1  # and a group never spans two folders (or classes)
    assert roles.groupby("folder")["role"].nunique().max() == 1 and set(roles["role"]) == {"train", "val"}
    assert split.source.manifest["group_id"].nunique() == 2 * 12 + 2
    report = inspect_report(split)
    assert ("Patient ids: 74 file name(s) carry no Kermany patient id: 72 in 24 sub-folder(s) of the class folders (train/NORMAL/patient000, "
            "train/NORMAL/patient001, train/NORMAL/patient002, ...) are grouped by that sub-folder, one patient each "
            "(CLASS/<patient>/<image>); 2 directly in a class folder are each treated as their own patient.") in report


def test_inspect_names_the_folders_it_grouped_by_and_says_when_deeper_folders_were_folded_into_them():
    """A CLASS/<site>/<date>/ tree: the 5 unnamed files of NORMAL/site_b/2026-12-04/ were grouped as one patient, "site_b",
    and inspect said only "1 sub-folder(s) ... one patient each (CLASS/<patient>/<image>)", naming no folder."""
    import pandas as pd

    from cxr_tune.data.report import unnamed_report

    root = "/data/tree/train/NORMAL/site_b"
    manifest = pd.DataFrame({"path": [f"{root}/2026-12-04/scan{i}.png" for i in range(5)] + ["/data/tree/train/NORMAL/p7/1.png"],
                             "patient_id": ["folder:train/NORMAL/site_b"] * 5 + ["folder:train/NORMAL/p7"]})
    assert unnamed_report(manifest) == (
        "Patient ids: 6 file name(s) carry no Kermany patient id: 6 in 2 sub-folder(s) of the class folders (train/NORMAL/p7, "
        "train/NORMAL/site_b) are grouped by that sub-folder, one patient each (CLASS/<patient>/<image>); only that first level "
        "names a patient, so 5 file(s) in folders below it are each their first-level folder's patient (first: "
        "train/NORMAL/site_b/2026-12-04/, patient train/NORMAL/site_b). These patients are never matched across class folders or "
        "across train/val/test, so there the leakage check sees only identical files.")


def test_mendeley_v3_names_keep_a_patient_on_one_side_of_carved_validation(tmp_path):
    from cxr_tune.data.prepared import DataOptions, split_data

    layout = {"train": {"NORMAL": [f"NORMAL-{1000000 + i}-{k:04d}.jpeg" for i in range(10) for k in (1, 2, 3)],
                        "PNEUMONIA": [f"{'BACTERIA' if i % 2 else 'VIRUS'}-{2000000 + i}-{k:04d}.jpeg" for i in range(10) for k in (1, 2, 3)]}}
    root = kermany_folder(tmp_path / "CellData" / "chest_xray", layout)
    split = split_data(DataOptions(data=str(tmp_path / "CellData"), cache_dir=str(tmp_path / "cache"), val_fraction=0.3, val_data="none"))
    roles = split.roles.assign(id=split.roles["path"].str.extract(r"-(\d+)-\d+\.jpeg$", expand=False))
    assert roles.groupby("id")["role"].nunique().max() == 1 and set(roles["role"]) == {"train", "val"}
    assert roles["patient_id"].nunique() == 20 and str(root) == split.source.root


def test_linked_sub_folders_are_read_and_a_link_loop_is_listed_not_followed(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    pneumonia = root / "train" / "PNEUMONIA"
    outside = write_image(tmp_path / "outside" / "more" / "person50_virus_1.jpeg", seed=50).parent
    os.symlink(outside, pneumonia / "linked_folder")
    os.symlink("..", pneumonia / "loop")
    os.symlink(root / "train", pneumonia / "up_two")  # a loop through a folder above the class folder
    os.symlink(outside, pneumonia / "same_again")
    source = build_manifest(str(root))
    assert str(pneumonia / "linked_folder" / "person50_virus_1.jpeg") in set(source.manifest["path"])
    assert len(source.manifest) == 9  # the linked folder's image once, nothing read through the loops
    reasons = dict(zip(source.skipped["path"], source.skipped["reason"], strict=True))
    assert reasons[str(pneumonia / "loop")] == f"link to a folder above it ({root / 'train'}); not followed, it would loop"
    assert reasons[str(pneumonia / "up_two")] == f"link to a folder above it ({root / 'train'}); not followed, it would loop"
    assert reasons[str(pneumonia / "same_again")] == f"link to a folder already read as {pneumonia / 'linked_folder'}; read once"


def test_hidden_and_system_folders_are_listed_at_every_depth_and_never_read(tmp_path):
    from cxr_tune.data.sources import NOT_READ

    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    normal = root / "train" / "NORMAL"
    thumbnails = [  # a NAS's and a viewer's thumbnails of the X-rays, and macOS zip residue, at several depths
        normal / "@eaDir" / "IM-0001-0001.jpeg" / "SYNOFILE_THUMB_M.jpg",
        normal / ".thumbnails" / "IM-0001-0001.png",
        normal / "patient9" / "@eaDir" / "1.png" / "SYNOFILE_THUMB_M.jpg",
        root / "train" / "__MACOSX" / "NORMAL" / "._IM-0001-0001.jpeg",
        root / ".trash" / "train" / "NORMAL" / "IM-0009-0001.jpeg",
    ]
    for i, path in enumerate(thumbnails):
        write_image(path, seed=100 + i, fmt="PNG")
    write_image(normal / "patient9" / "1.png", seed=99)
    source = build_manifest(str(root))
    assert len(source.manifest) == 9  # the 8 X-rays and patient9/1.png, no thumbnail
    listed = dict(zip(source.skipped["path"], source.skipped["reason"], strict=True))
    assert listed == {str(folder): NOT_READ for folder in (normal / "@eaDir", normal / ".thumbnails", normal / "patient9" / "@eaDir",
                                                            root / "train" / "__MACOSX", root / ".trash")}


def test_hidden_and_system_folders_on_object_storage_are_listed_not_read(tmp_path, s3_dir):
    from cxr_tune import storage
    from cxr_tune.data.sources import NOT_READ
    from cxr_tune.predict import collect

    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    write_image(root / "train" / "NORMAL" / "@eaDir" / "IM-0001-0001.jpeg" / "SYNOFILE_THUMB_M.jpg", seed=100, fmt="JPEG")
    write_image(root / "test" / "PNEUMONIA" / "sub" / ".thumbnails" / "person100_virus_1.png", seed=101)
    storage.copy(str(root), s3_dir)
    source = build_manifest(s3_dir)
    assert len(source.manifest) == 8
    hidden = [storage.join(s3_dir, "test/PNEUMONIA/sub/.thumbnails"), storage.join(s3_dir, "train/NORMAL/@eaDir")]
    assert sorted(zip(source.skipped["path"], source.skipped["reason"], strict=True)) == [(folder, NOT_READ) for folder in hidden]
    files = collect([s3_dir])
    assert sorted(file.path for file in files if file.reason == NOT_READ) == hidden and len(files) == 10


def test_images_whose_names_a_uri_reads_as_syntax_are_read_on_object_storage_as_locally(tmp_path, s3_dir):
    """Before: on object storage ``img#1.jpeg`` was skipped as "Path does not exist '.../img'", ``q?x.jpeg`` and a
    name with a space as not a URI this project can read, and ``p%23c.jpeg`` read as the object ``p#c.jpeg``."""
    from cxr_tune import storage
    from cxr_tune.predict import collect

    awkward = ["img#1.jpeg", "q?x.jpeg", "p%23c.jpeg", "sp ace.jpeg", "é.jpeg"]
    root = kermany_folder(tmp_path / "chest_xray", {**GOOD, "train": {**GOOD["train"], "NORMAL": [*GOOD["train"]["NORMAL"], *awkward]}})
    storage.copy(str(root), s3_dir)
    local, stored = build_manifest(str(root)), build_manifest(s3_dir)
    assert local.skipped.empty and stored.skipped.empty, stored.skipped.to_dict("records")
    assert len(stored.manifest) == len(local.manifest) == 8 + len(awkward)
    by_name = {storage.name(path): path for path in stored.manifest["path"]}
    for name in awkward:
        assert storage.read_bytes(by_name[name]) == (root / "train" / "NORMAL" / name).read_bytes()
    assert sorted(stored.manifest["content_hash"]) == sorted(local.manifest["content_hash"])  # each object itself, none twice
    assert sorted(storage.name(file.path) for file in collect([s3_dir])) == sorted(os.path.basename(p) for p in local.manifest["path"])
    # The same patients, by the same ids, as locally: the carved split sorts its groups by id (escaped ids, "image:...%20...",
    # sorted otherwise, and the same images were carved into another validation set).
    assert sorted(stored.manifest["patient_id"]) == sorted(local.manifest["patient_id"])


def test_a_file_unreadable_at_the_first_scan_is_read_again_once_it_reads(tmp_path, monkeypatch):
    from cxr_tune import storage

    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    locked = str(root / "train" / "NORMAL" / "IM-0001-0002.jpeg")
    read_bytes = storage.read_bytes

    def denied(path):  # what a chmod 000 file gives a user (root reads past it); chmod changes neither size nor time
        if path == locked:
            raise PermissionError(13, "Permission denied", path)
        return read_bytes(path)

    monkeypatch.setattr(storage, "read_bytes", denied)
    first = build_manifest(str(root), str(tmp_path / "cache"))
    assert list(first.skipped["reason"]) == ["permission denied"] and len(first.manifest) == 7
    still = build_manifest(str(root), str(tmp_path / "cache"))
    assert still.skipped.to_dict("records") == first.skipped.to_dict("records") and still.manifest.equals(first.manifest)
    monkeypatch.undo()
    again = build_manifest(str(root), str(tmp_path / "cache"))
    assert again.skipped.empty and again.manifest.equals(build_manifest(str(root)).manifest)


def test_a_file_beside_the_class_folders_is_listed_not_dropped_silently(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", GOOD)
    write_image(root / "train" / "IM-9999-0001.jpeg", seed=9)
    source = build_manifest(str(root))
    assert source.skipped.to_dict("records") == [
        {"path": str(root / "train" / "IM-9999-0001.jpeg"), "split": "train", "reason": "file outside the NORMAL/PNEUMONIA folders; ignored"}]
    assert len(source.manifest) == 8
