"""External validation data: the Kermany val/ default, ``--val-data`` folders, and the leak rules.

A bad ``--val-data`` stops ``train`` and ``search`` with one ``error:`` line and status 2 before
Ray starts; a file shared byte for byte with train or test is refused naming it; a patient in
both sets costs the training folder that patient's images. No Ray, no training.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cxr_tune.data.prepared import MIN_EXTERNAL_PER_CLASS, DataOptions, split_data
from cxr_tune.errors import UserError
from tests.conftest import kermany_folder, run_cli, table_rows, write_image

N = MIN_EXTERNAL_PER_CLASS


def normal(first: int, n: int) -> list[str]:
    return [f"IM-{i:04d}-0001.jpeg" for i in range(first, first + n)]


def pneumonia(first: int, n: int, kind: str = "bacteria") -> list[str]:
    return [f"person{i}_{kind}_{i}.jpeg" for i in range(first, first + n)]


def chest_xray(root: Path, val: tuple[int, int] | None = None) -> Path:
    """24 training images, 4 test images, and a val/ folder of (NORMAL, PNEUMONIA) images of other patients."""
    layout = {
        "train": {"NORMAL": normal(1, 12), "PNEUMONIA": pneumonia(1, 12)},
        "test": {"NORMAL": normal(500, 2), "PNEUMONIA": pneumonia(500, 2)},
    }
    if val:
        layout["val"] = {"NORMAL": normal(100, val[0]), "PNEUMONIA": pneumonia(100, val[1], "virus")}
    return kermany_folder(root, layout)


def site(root: Path, n_normal: int = N, n_pneumonia: int = N, seed: int = 10_000) -> Path:
    """A labelled site folder: ROOT/NORMAL, ROOT/PNEUMONIA with ``site-`` names (no Kermany patient)."""
    for cls, n in (("NORMAL", n_normal), ("PNEUMONIA", n_pneumonia)):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            write_image(root / cls / f"site-{cls.lower()}-{i:03d}.jpeg", seed=seed + i + (0 if cls == "NORMAL" else 1000))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return chest_xray(tmp_path_factory.mktemp("ext-data") / "chest_xray")


def options(data: Path, **kwargs) -> DataOptions:
    return DataOptions(data=str(data), **kwargs)


# --- the data's own val/ folder ------------------------------------------------------------------


@pytest.mark.parametrize(("val", "external"), [((N, N), True), ((N - 1, N + 5), False), ((8, 8), False)])
def test_a_val_folder_is_the_external_set_only_with_enough_images_of_each_class(tmp_path, capsys, val, external):
    root = chest_xray(tmp_path / "chest_xray", val)
    split = split_data(options(root), progress=False)
    roles = split.roles.set_index("path")["role"]
    in_val = split.roles.loc[split.roles["split"] == "val", "path"]
    assert set(roles[in_val]) == ({"external"} if external else {"unused"})
    assert split.has_external is external and split.deciding_set("external") == ("external" if external else "carved")
    assert set(roles[split.roles.loc[split.roles["split"] == "train", "path"]]) == {"train", "val"}  # val/ never trains

    from cxr_tune.data.__main__ import main

    assert main(["inspect", str(root)]) == 0
    out = capsys.readouterr().out
    if external:
        assert f"External validation: {root / 'val'} ({val[0]} NORMAL, {val[1]} PNEUMONIA images) selects" in out
        row = next(row for row in table_rows(out) if row[0] == "external")
        assert row[1:4] == [str(val[0]), str(val[1]), str(sum(val))]
    else:
        assert (f"No external validation set: selection uses validation carved from train (the val/ folder holds "
                f"{val[0]} NORMAL and {val[1]} PNEUMONIA images, too few to select on (at least {N} of each") in out
        assert "it is set aside" in out and "--val-data PATH" in out
        row = next(row for row in table_rows(out) if row[0] == "unused")
        assert row[1:4] == [str(val[0]), str(val[1]), str(sum(val))]


def test_val_data_none_and_use_official_val_keep_a_large_val_folder_out_of_selection(tmp_path):
    root = chest_xray(tmp_path / "chest_xray", (N, N))
    in_val = lambda split: set(split.roles.loc[split.roles["split"] == "val", "role"])  # noqa: E731
    off = split_data(options(root, val_data="none"), progress=False)
    assert in_val(off) == {"unused"} and not off.has_external and off.external_note == ""
    carved = split_data(options(root, use_official_val=True), progress=False)
    assert in_val(carved) == {"val"} and not carved.has_external


@pytest.mark.parametrize(("val", "val_data", "why"), [
    ((N, N + 2), "SITE", "--val-data named another folder"),
    ((N, N + 2), "none", "--val-data none"),
    ((8, 8), "auto", f"too few to select on (8 NORMAL, 8 PNEUMONIA; at least {N} of each are needed)"),
])
def test_a_val_folder_that_goes_unused_says_why_in_splits_and_in_one_line(tmp_path, capsys, val, val_data, why):
    """Before: with --val-data PATH (or none) a val/ folder that auto would have used went unused with an empty
    role_note, and inspect showed an ``unused`` row with no word on why."""
    root = chest_xray(tmp_path / "chest_xray", val)
    flag = str(site(tmp_path / "site")) if val_data == "SITE" else val_data
    split = split_data(options(root, val_data=flag), progress=False)
    in_val = split.roles[split.roles["split"] == "val"]
    assert set(in_val["role"]) == {"unused"} and set(in_val["role_note"]) == {why}

    from cxr_tune.data.__main__ import main

    assert main(["inspect", str(root), "--val-data", flag]) == 0
    out = capsys.readouterr().out
    said = f"Not used: the val/ folder's {val[0]} NORMAL and {val[1]} PNEUMONIA images ({why})."
    if val_data == "auto":  # the line on what selects already says why, once
        assert "Not used:" not in out and "too few to select on" in out
    else:
        assert said in out.split("Roles with these options", 1)[0]  # beside what selects, before the roles table


# --- --val-data PATH -----------------------------------------------------------------------------


def test_a_site_folder_becomes_the_external_role_and_a_shared_patient_leaves_training(data, tmp_path):
    ext = site(tmp_path / "site")
    # Same patient as train's IM-0001-0001.jpeg (other bytes): the training folder loses that patient.
    write_image(ext / "NORMAL" / "IM-0001-0009.jpeg", seed=77_777)
    split = split_data(options(data, val_data=str(ext)), progress=False)
    roles = split.roles
    external = roles[roles["role"] == "external"]
    assert sorted(Path(p).name for p in external["path"]) == sorted(p.name for p in ext.rglob("*.jpeg"))
    assert split.external == str(ext) and split.class_counts("external") == (N + 1, N)
    excluded = roles[roles["role"] == "excluded"]
    assert [Path(p).name for p in excluded["path"]] == ["IM-0001-0001.jpeg"]
    assert excluded["role_note"].tolist() == ["same patient is in the external validation set"]
    trained = set(roles.loc[roles["role"].isin(["train", "val"]), "group_id"])
    assert not trained & set(external["group_id"])


@pytest.mark.parametrize("shared_with", ["train", "test"])
def test_a_byte_identical_file_in_train_or_test_is_refused_naming_both_files(data, tmp_path, shared_with):
    ext = site(tmp_path / "site")
    original = data / shared_with / "PNEUMONIA" / ("person3_bacteria_3.jpeg" if shared_with == "train" else "person501_bacteria_501.jpeg")
    copy = ext / "PNEUMONIA" / "site-copy.jpeg"
    shutil.copyfile(original, copy)
    what = "training-folder" if shared_with == "train" else "test"
    with pytest.raises(UserError, match=f"1 external validation image\\(s\\) are byte-identical to {what} images") as caught:
        split_data(options(data, val_data=str(ext)), progress=False)
    assert f"{copy} = {original}" in str(caught.value)


def one_error_line(done) -> str:
    """The process ended with status 2 and a single ``error:`` line, before Ray started."""
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "ray" not in done.stdout.lower()
    return lines[0]


def val_data_args(cli: str, data: Path, val_data: Path, storage: Path) -> list[str]:
    """``train`` or ``search`` on ``data`` with ``--val-data val_data``; nothing may be written to ``storage``."""
    common = ["--data", str(data), "--val-data", str(val_data), "--storage", str(storage), "--name", "run"]
    return [*common, "--set", "epochs=1", "--set", "image_size=32"] if cli == "train" else ["--space", "smoke", *common]


def shared_file(data: Path, ext: Path) -> tuple[Path, Path]:
    original = data / "train" / "NORMAL" / "IM-0005-0001.jpeg"
    copy = ext / "NORMAL" / "site-copy.jpeg"
    shutil.copyfile(original, copy)
    return original, copy


@pytest.fixture
def no_ray(monkeypatch):
    """Starting Ray fails the test: every check here must come first."""
    import cxr_tune.ray_session

    def refuse(*args, **kwargs):
        raise AssertionError("Ray was started before the --val-data folder was checked")

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", refuse)


@pytest.mark.parametrize("cli", ["train", "search"])
@pytest.mark.parametrize("case", ["missing", "one class", "too few", "shared file"])
def test_a_bad_val_data_folder_is_a_user_error_before_ray(data, tmp_path, no_ray, cli, case):
    from cxr_tune.search.__main__ import main as search_main
    from cxr_tune.train.__main__ import main as train_main

    ext = tmp_path / "site"
    if case == "missing":
        message = f"--val-data '{ext}' does not exist"
    elif case == "one class":
        site(ext, n_pneumonia=0)
        shutil.rmtree(ext / "PNEUMONIA")
        message = f"--val-data '{ext}' has no PNEUMONIA folder"
    elif case == "too few":
        site(ext, n_normal=N - 1, n_pneumonia=N + 3)
        message = f"--val-data '{ext}' holds {N - 1} NORMAL and {N + 3} PNEUMONIA readable images; selecting on it needs at least {N} of each"
    else:
        original, copy = shared_file(data, site(ext))
        message = f"are byte-identical to training-folder images ({copy} = {original})"
    with pytest.raises(UserError) as caught:
        (train_main if cli == "train" else search_main)(val_data_args(cli, data, ext, tmp_path / "results"))
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "results" / "run").exists()


@pytest.mark.parametrize("cli", ["train", "search"])
def test_a_shared_file_stops_the_cli_with_one_line_and_status_2(data, tmp_path, cli):
    original, copy = shared_file(data, site(tmp_path / "site"))
    line = one_error_line(run_cli(f"cxr_tune.{cli}", *val_data_args(cli, data, tmp_path / "site", tmp_path / "results")))
    assert str(copy) in line and str(original) in line and "byte-identical" in line


def test_an_external_set_too_small_once_test_patients_leave_it_is_refused_or_set_aside(data, tmp_path):
    # person500 is in the test folder: its images leave the external set, which then keeps N - 3 pneumonias.
    ext = site(tmp_path / "site", n_pneumonia=N - 3)
    for i in range(4):
        write_image(ext / "PNEUMONIA" / f"person500_bacteria_{900 + i}.jpeg", seed=55_000 + i)
    with pytest.raises(UserError, match=rf"--val-data '{ext}' keeps {N} NORMAL and {N - 3} PNEUMONIA images once the patients it "
                                        rf"shares with the test folder are left out; selecting on it needs at least {MIN_EXTERNAL_PER_CLASS}"):
        split_data(options(data, val_data=str(ext)), progress=False)
    own = chest_xray(tmp_path / "own" / "chest_xray", val=(N, N - 3))
    for i in range(4):
        write_image(own / "val" / "PNEUMONIA" / f"person500_bacteria_{900 + i}.jpeg", seed=56_000 + i)
    split = split_data(options(own), progress=False)  # the data's own val/: set aside, carved validation selects
    assert not split.has_external and "the val/ folder keeps" in split.external_note and "set aside" in split.external_note
