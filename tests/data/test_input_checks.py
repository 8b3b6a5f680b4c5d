"""Images unlike the training X-rays in a way the file shows are named with the reason; X-rays are not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_tune.data.imaging import decode_checked, decode_gray
from tests.conftest import SHARED_DATA, call_cli, kermany_folder, table_rows, write_image
from tests.data.test_dicom import dicom_bytes, source_image
from tests.exports import write_export

SIZE = 16


def xray_like(seed: int = 0, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    """Gray levels that vary like an X-ray's (not flat)."""
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def checked(path: Path) -> list[str]:
    pixels, notes = decode_checked(path, SIZE)
    assert np.array_equal(pixels, decode_gray(path, SIZE))  # the checks never change what the model scores
    return notes


def test_gray_xrays_pass_whether_stored_gray_or_as_colour_files(tmp_path):
    gray = xray_like()
    Image.fromarray(gray).save(tmp_path / "gray.png")
    Image.fromarray(gray).convert("RGB").save(tmp_path / "as_rgb.jpeg", quality=90)  # how many exports store X-rays
    write_image(tmp_path / "sixteen_bit.png", mode="I;16")
    assert checked(tmp_path / "gray.png") == checked(tmp_path / "as_rgb.jpeg") == checked(tmp_path / "sixteen_bit.png") == []


def test_a_colour_picture_a_blank_frame_and_a_thumbnail_are_named(tmp_path):
    gray = xray_like().astype(np.float64)
    tinted = np.stack([gray, gray * 0.85, gray * 0.6], axis=-1).astype(np.uint8)  # a sepia photo of a film
    Image.fromarray(tinted).save(tmp_path / "photo.jpeg", quality=90)
    Image.fromarray(np.full((48, 64), 30, np.uint8)).save(tmp_path / "blank.png")
    Image.fromarray(xray_like(shape=(12, 10))).save(tmp_path / "thumbnail.png")
    [colour] = checked(tmp_path / "photo.jpeg")
    assert colour.startswith("colour image") and "X-rays are gray" in colour
    [blank] = checked(tmp_path / "blank.png")
    assert blank.startswith("nearly blank")
    [small] = checked(tmp_path / "thumbnail.png")
    assert small.startswith("10x12 px, smaller than the model's 16x16 px input")


def test_a_dicom_says_when_it_is_a_lateral_view_or_not_a_radiograph(tmp_path):
    pixels = source_image()
    frontal = tmp_path / "frontal.dcm"
    frontal.write_bytes(dicom_bytes(pixels, ViewPosition="PA"))
    assert checked(frontal) == []
    other = tmp_path / "other.dcm"
    other.write_bytes(dicom_bytes(pixels, Modality="CT", ViewPosition="LL"))
    modality, view = checked(other)
    assert modality.startswith("DICOM modality CT") and view.startswith("lateral view (DICOM ViewPosition LL")
    gray = pixels.astype(np.float64)
    photo = tmp_path / "photo.dcm"  # a secondary capture of a colour picture, stored as an X-ray would be
    photo.write_bytes(dicom_bytes(np.stack([gray, gray * 0.85, gray * 0.6], axis=-1).astype(np.uint8), "RGB", 8))
    [colour] = checked(photo)
    assert colour.startswith("colour image")
    grey_rgb = tmp_path / "grey_rgb.dcm"
    grey_rgb.write_bytes(dicom_bytes(np.stack([pixels] * 3, axis=-1), "RGB", 8))
    assert checked(grey_rgb) == []


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data (the real chest X-rays)")
def test_none_of_a_sample_of_the_real_training_and_validation_xrays_is_named():
    files = [f for folder in sorted(SHARED_DATA.glob("*/*")) for f in sorted(folder.glob("*.jpeg"))[::40]]
    assert len(files) > 100
    assert {str(f): notes for f in files if (notes := decode_checked(f, 64)[1])} == {}


def test_predict_lists_the_images_to_check_and_writes_why_in_its_csv(tmp_path):
    model = write_export(tmp_path / "best", image_size=SIZE)
    folder = tmp_path / "new"
    folder.mkdir()
    Image.fromarray(xray_like()).save(folder / "xray.png")
    gray = xray_like(seed=1).astype(np.float64)
    Image.fromarray(np.stack([gray, gray * 0.5, gray * 0.2], axis=-1).astype(np.uint8)).save(folder / "photo.png")
    done = call_cli("cxr_tune.predict", "--model", str(model), str(folder), "--csv", str(tmp_path / "out.csv"))
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("Check 1 image(s) before trusting the score", 1)[1].splitlines()[1:]
    assert len(listed) == 1 and listed[0].startswith(f"  {folder / 'photo.png'}: colour image"), done.stdout
    table = pd.read_csv(tmp_path / "out.csv", keep_default_na=False).set_index("path")
    assert list(table.columns) == ["probability", "prediction", "threshold", "check", "content_hash"]
    assert table.loc[str(folder / "xray.png"), "check"] == "" and table.loc[str(folder / "photo.png"), "check"].startswith("colour image")


def test_inspect_lists_a_data_folders_images_unlike_xrays_and_keeps_them(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", {"train": {"NORMAL": ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg"],
                                                               "PNEUMONIA": ["person1_virus_1.jpeg", "person2_virus_2.jpeg"]}})
    write_image(root / "train" / "NORMAL" / "IM-0003-0001.png", mode="RGB")
    (root / "train" / "PNEUMONIA" / "person3_virus_3.dcm").write_bytes(dicom_bytes(source_image(), ViewPosition="LL"))
    done = call_cli("cxr_tune.data", "inspect", str(root), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr
    listed = done.stdout.split("Images unlike chest X-rays (colour, blank, tiny, very large, a DICOM lateral view or not a radiograph): 2, used as they are", 1)[1]
    lines = listed.splitlines()[1:3]
    assert lines[0].startswith(f"  {root / 'train' / 'NORMAL' / 'IM-0003-0001.png'}: colour image"), done.stdout
    assert lines[1].startswith(f"  {root / 'train' / 'PNEUMONIA' / 'person3_virus_3.dcm'}: lateral view"), done.stdout
    counts = {row[1]: int(row[2]) for row in table_rows(done.stdout) if row[0] == "train" and row[1] in ("NORMAL", "PNEUMONIA")}
    assert counts == {"NORMAL": 3, "PNEUMONIA": 3}  # used as they are: the folder is the user's to change


def test_a_data_folders_image_over_pillows_warning_size_is_named_with_its_pixel_size_as_predict_names_it(tmp_path, monkeypatch):
    """data inspect said nothing of an image between Pillow's warning size and twice it (a 121 MP scan, decoded, and cached at
    length), though it lists every other image predict names; now it lists it with its size. The limit is lowered to keep it small."""
    from cxr_tune.data.report import unlike_report
    from cxr_tune.data.sources import build_manifest

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    root = tmp_path / "chest_xray"
    for name in ("NORMAL/IM-0001-0001.png", "PNEUMONIA/person1_virus_1.png"):
        write_image(root / "train" / name, size=(30, 30))  # 900 pixels: under the limit, nothing to say
    large = write_image(root / "train" / "NORMAL" / "IM-0003-0001.png", size=(40, 30))  # 1,200 pixels: over 1,000, under twice it
    manifest = build_manifest(str(root)).manifest
    note = "very large image: 40x30 px, 0.0012 MP (Pillow warns above 0.001 MP: a scan this large, or a header that misstates its size)"
    assert manifest.set_index("path")["check"][str(large)] == note
    assert checked(large) == [note]  # predict's words
    assert f"  {large}: {note}" in unlike_report(manifest).splitlines()
    assert unlike_report(manifest).startswith("Images unlike chest X-rays (colour, blank, tiny, very large, a DICOM lateral view or not a radiograph): 1,")


def test_a_data_folders_image_smaller_than_any_model_input_is_named_as_predict_names_it(tmp_path):
    from cxr_tune.data.sources import build_manifest

    root = kermany_folder(tmp_path / "chest_xray", {"train": {"NORMAL": ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg"],
                                                               "PNEUMONIA": ["person1_virus_1.jpeg", "person2_virus_2.jpeg"]}})
    tiny = write_image(root / "train" / "NORMAL" / "IM-0003-0001.png", size=(4, 4))
    write_image(root / "train" / "NORMAL" / "IM-0004-0001.png", size=(16, 16))  # the smallest input: nothing to say
    checks = build_manifest(str(root)).manifest.set_index("path")["check"]
    assert checks[str(tiny)] == "4x4 px, smaller than the smallest model input (16x16 px): enlarged, so blurred"
    assert (checks.drop(str(tiny)) == "").all()
    done = call_cli("cxr_tune.data", "inspect", str(root), "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 0 and f"  {tiny}: {checks[str(tiny)]}" in done.stdout.splitlines(), done.stdout
    assert checked(tiny)[0].startswith("4x4 px, smaller than the model's 16x16 px input: enlarged, so blurred")  # predict's words
