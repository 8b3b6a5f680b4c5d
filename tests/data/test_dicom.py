"""DICOM X-rays, as hospitals hand them over, give the pixels the same image as a PNG would.

Every DICOM here is written by pydicom from a known 8-bit image, stored the ways real files store
it (12 or 16 bits, MONOCHROME1, rescaled, windowed, with a VOI LUT, several frames, compressed),
and must decode back to that image.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, features
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLosslessSV1, JPEGLSLossless, generate_uid

from cxr_tune.data.cache import decode_batch
from cxr_tune.data.dicom import DicomError, read_gray8
from cxr_tune.data.imaging import decode_gray, input_kind, probe, try_decode_checked, try_decode_gray
from cxr_tune.data.sources import build_manifest
from tests.conftest import call_cli, kermany_folder
from tests.exports import write_export

PATIENT_NAME, PATIENT_ID = "Doe^Jane", "MRN-4711-SECRET"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def source_image(seed: int = 0, shape: tuple[int, int] = (48, 64)) -> np.ndarray:
    """A small 8-bit "X-ray": a gradient, a bright blob and noise, spanning 0..255 exactly."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    cy, cx = rng.uniform(0.3, 0.7, 2) * shape
    image = 150 * x / (shape[1] - 1) + 90 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 60) + rng.normal(0, 6, shape)
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    image[0, 0], image[-1, -1] = 0, 255
    return image


def bits12(image: np.ndarray) -> np.ndarray:
    """0..255 spread over 0..4095, the way a 12-bit detector would store it."""
    return image.astype(np.uint16) * 16 + image // 16


def dicom_bytes(pixels: np.ndarray | None, photometric: str = "MONOCHROME2", bits_stored: int = 8, *,
                syntax: str | None = None, frames: list[bytes] | None = None, **elements) -> bytes:
    """A DICOM file (with preamble and file meta) of ``pixels``, carrying a patient name and id.

    ``frames``: already-encoded frames to store encapsulated under ``syntax`` instead of raw pixels.
    ``pixels=None``: no pixel data at all (a report). ``elements``: extra attributes, e.g. a window.
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT_NAME, PATIENT_ID, "DX"
    if pixels is not None:
        ds.set_pixel_data(pixels, photometric, bits_stored)
    else:
        meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    if frames is not None:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = encapsulate(frames)
    for name, value in elements.items():
        setattr(ds, name, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def window(low: float, high: float) -> dict:
    """Window Center/Width (DICOM LINEAR) that maps ``low..high`` onto the whole output range."""
    return {"WindowCenter": (low + high) / 2 + 0.5, "WindowWidth": high - low + 1}


def windowed(image: np.ndarray, low: int, step: int, *, below: int, above: int) -> np.ndarray:
    """``low + image * step``, with 0 and 255 stored outside that span: only the window clips them back."""
    stored = low + image.astype(np.int64) * step
    stored[image == 0], stored[image == 255] = below, above
    return stored


def voi_lut_item(low: int, step: int) -> Dataset:
    """A 4096-entry VOI LUT with 8-bit entries, mapping ``low + k * step`` to ``k`` and clipping outside."""
    item = Dataset()
    item.add_new(0x00283002, "US", [4096, 0, 8])  # LUT Descriptor: entries, first input, bits per entry
    item.add_new(0x00283006, "US", [min(max(round((v - low) / step), 0), 255) for v in range(4096)])  # LUT Data
    return item


IMAGE = source_image()

# name -> the DICOM of IMAGE, stored one way a site might store it
STORAGES = {
    "MONOCHROME2 16-bit": lambda: dicom_bytes(IMAGE.astype(np.uint16) * 257, "MONOCHROME2", 16),
    "MONOCHROME2 12-bit": lambda: dicom_bytes(bits12(IMAGE), "MONOCHROME2", 12),
    "MONOCHROME1 12-bit": lambda: dicom_bytes(bits12(255 - IMAGE), "MONOCHROME1", 12),
    "MONOCHROME1 16-bit, two windows (first used)": lambda: dicom_bytes(
        windowed(255 - IMAGE, 10000, 200, below=0, above=65535).astype(np.uint16), "MONOCHROME1", 16,
        WindowCenter=[window(10000, 10000 + 255 * 200)["WindowCenter"], 300], WindowWidth=[255 * 200 + 1, 50]),
    # modality values = raw * 2 - 1024 = -500 + 8 * IMAGE; the window is in modality units
    "MONOCHROME2 12-bit, rescale and window": lambda: dicom_bytes(
        windowed(IMAGE, 262, 4, below=0, above=4095).astype(np.uint16), "MONOCHROME2", 12,
        RescaleSlope=2, RescaleIntercept=-1024, **window(-500, -500 + 255 * 8)),
    "MONOCHROME2 12-bit, rescale, no window": lambda: dicom_bytes(bits12(IMAGE), "MONOCHROME2", 12, RescaleSlope=3, RescaleIntercept=-2000),
    "MONOCHROME2 signed 16-bit": lambda: dicom_bytes((IMAGE.astype(np.int32) * 257 - 32768).astype(np.int16), "MONOCHROME2", 16),
    "MONOCHROME2 12-bit, VOI LUT": lambda: dicom_bytes(
        windowed(IMAGE, 1000, 8, below=0, above=4095).astype(np.uint16), "MONOCHROME2", 12, VOILUTSequence=[voi_lut_item(1000, 8)]),
    "MONOCHROME2 12-bit, two frames (first used)": lambda: dicom_bytes(np.stack([bits12(IMAGE), bits12(255 - IMAGE)]), "MONOCHROME2", 12),
}


@pytest.mark.parametrize("storage", list(STORAGES))
def test_each_way_of_storing_an_xray_decodes_to_the_same_image(storage):
    data = STORAGES[storage]()
    decoded = read_gray8(data).pixels
    assert decoded.shape == IMAGE.shape and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - IMAGE).max() <= 1, storage
    info = probe(data)
    assert (info.width, info.height) == (64, 48) and info.mode.startswith("DICOM MONO")


def test_an_eight_bit_dicom_keeps_its_gray_levels_like_an_eight_bit_png(tmp_path):
    dull = (IMAGE // 2 + 40).astype(np.uint8)  # 40..167: must not be stretched to 0..255
    dcm, png = tmp_path / "a.dcm", tmp_path / "a.png"
    dcm.write_bytes(dicom_bytes(dull, "MONOCHROME2", 8))
    Image.fromarray(dull).save(png)
    assert np.array_equal(read_gray8(dcm.read_bytes()).pixels, dull)
    assert np.array_equal(decode_gray(dcm, 32), decode_gray(png, 32))  # same resize as every image
    assert np.array_equal(decode_gray(dcm, 32), decode_gray(dcm.read_bytes(), 32))


def test_a_colour_dicom_becomes_gray_like_a_colour_png(tmp_path):
    rgb = np.stack([IMAGE, 255 - IMAGE, IMAGE // 2], axis=-1)
    assert probe(dicom_bytes(rgb, "RGB", 8)).mode == "DICOM RGB 8-bit"
    expected = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    assert np.array_equal(read_gray8(dicom_bytes(rgb, "RGB", 8)).pixels, expected)


def jpeg_dicom(image: np.ndarray = IMAGE) -> tuple[bytes, np.ndarray]:
    """A JPEG baseline DICOM of ``image`` (lossy), and the pixels Pillow decodes its JPEG to."""
    jpeg = io.BytesIO()
    Image.fromarray(image).save(jpeg, format="JPEG", quality=95)
    data = dicom_bytes(None, syntax=JPEGBaseline8Bit, frames=[jpeg.getvalue()], Rows=image.shape[0], Columns=image.shape[1], SamplesPerPixel=1,
                       PhotometricInterpretation="MONOCHROME2", BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0)
    return data, np.asarray(Image.open(jpeg))


def test_compressed_dicoms_that_pillow_decodes_work(tmp_path):
    lossy, pillows = jpeg_dicom()
    assert np.array_equal(read_gray8(lossy).pixels, pillows)  # the JPEG's own pixels, with or without the dicom extra
    if not features.check("jpg_2000"):
        pytest.skip("this Pillow has no JPEG 2000 codec")
    j2k = io.BytesIO()
    Image.fromarray(IMAGE).save(j2k, format="JPEG2000", no_jp2=True)  # reversible wavelet: lossless
    lossless = dicom_bytes(None, syntax=JPEG2000Lossless, frames=[j2k.getvalue()], Rows=48, Columns=64, SamplesPerPixel=1,
                           PhotometricInterpretation="MONOCHROME2", BitsAllocated=8, BitsStored=8, HighBit=7, PixelRepresentation=0)
    assert np.array_equal(read_gray8(lossless).pixels, IMAGE)


def with_plugins(monkeypatch, syntax: str, plugins: dict) -> None:
    """pydicom's decoding plugins for ``syntax``, in the order it tries them (the installed ones' order is GDCM, pylibjpeg, Pillow)."""
    decoder = get_decoder(syntax)
    monkeypatch.setattr(decoder, "_available", plugins)  # pydicom 3.0's table of the installed plugins (pinned)


def test_a_jpeg_dicom_decodes_to_the_same_pixels_whatever_other_decoders_are_installed(monkeypatch):
    """pydicom takes the first installed plugin, and the dicom extra's pylibjpeg comes before Pillow: the file above
    decoded to other pixels (104 of its 3,072 a grey level off) on a machine with the extra than on one without."""
    lossy, pillows = jpeg_dicom()

    def a_grey_level_off(src: bytes, runner) -> bytes:
        return (np.asarray(Image.open(io.BytesIO(src))).astype(np.int16) + 1).clip(0, 255).astype(np.uint8).tobytes()

    with_plugins(monkeypatch, JPEGBaseline8Bit, {"pylibjpeg": a_grey_level_off, **get_decoder(JPEGBaseline8Bit)._available})
    assert np.array_equal(read_gray8(lossy).pixels, pillows)


def test_what_pillow_cannot_decode_goes_to_the_other_decoders(monkeypatch):
    """E.g. a 12-bit JPEG, which pydicom's Pillow plugin refuses: the other installed plugins decode it."""
    lossy, pillows = jpeg_dicom()

    def refuse(src: bytes, runner) -> bytes:
        raise NotImplementedError("Pillow does not support 'JPEG Extended' for samples with 12-bit precision")

    def inverted(src: bytes, runner) -> bytes:  # told apart from Pillow's by its pixels
        return (255 - np.asarray(Image.open(io.BytesIO(src)))).tobytes()

    with_plugins(monkeypatch, JPEGBaseline8Bit, {"pylibjpeg": inverted, "pillow": refuse})
    assert np.array_equal(read_gray8(lossy).pixels, 255 - pillows)


def undecodable_dicom() -> tuple[bytes, str]:
    """A JPEG Lossless (or else JPEG-LS) DICOM this install has no decoder for, and its syntax UID."""
    for syntax in (JPEGLosslessSV1, JPEGLSLossless):
        if not get_decoder(syntax).is_available:
            frames = [b"\xff\xd8" + bytes(64) + b"\xff\xd9"]
            return dicom_bytes(None, syntax=syntax, frames=frames, Rows=48, Columns=64, SamplesPerPixel=1,
                               PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=12, HighBit=11,
                               PixelRepresentation=0), str(syntax)
    pytest.skip("decoders for every lossless JPEG syntax are installed (the dicom extra)")


def test_dicoms_without_usable_pixels_are_reported_with_a_reason():
    assert try_decode_gray(dicom_bytes(None), 16) == (None, "DICOM without pixel data (not an image, e.g. a report or structured document)")
    data, syntax = undecodable_dicom()
    image, reason = try_decode_gray(data, 16)
    assert image is None
    assert reason.startswith("DICOM transfer syntax") and f"({syntax}) cannot be decoded: install " in reason and "pylibjpeg" in reason
    assert reason.endswith("(pip install 'cxr_tune[dicom]')")  # by the package's name: '.[dicom]' worked only inside a checkout
    truncated = dicom_bytes(bits12(IMAGE), "MONOCHROME2", 12)[:-500]
    image, reason = try_decode_gray(truncated, 16)
    assert image is None and "less than expected" in reason


def write_site_folder(root: Path) -> Path:
    """A Kermany folder of JPEG/PNG files with DICOMs beside them, one without an extension."""
    kermany_folder(root, {"train": {"NORMAL": ["IM-0001-0001.jpeg", "IM-0002-0001.png"], "PNEUMONIA": ["person1_bacteria_1.jpeg"]}})
    (root / "train/NORMAL/IM-0003-0001.dcm").write_bytes(dicom_bytes(bits12(IMAGE), "MONOCHROME2", 12))
    (root / "train/PNEUMONIA/person2_virus_5.dcm").write_bytes(dicom_bytes(bits12(255 - IMAGE), "MONOCHROME1", 12))
    (root / "train/PNEUMONIA/IM0007").write_bytes(dicom_bytes(IMAGE.astype(np.uint16) * 257, "MONOCHROME2", 16))  # PACS export
    return root


def test_a_folder_mixing_dicom_jpeg_and_png_scans_fine(tmp_path):
    source = build_manifest(str(write_site_folder(tmp_path / "site")), progress=False)
    rows = source.manifest.set_index(source.manifest["path"].map(lambda p: Path(p).name))
    assert len(rows) == 6 and source.skipped.empty
    assert rows.loc["IM-0003-0001.dcm", "mode"] == "DICOM MONOCHROME2 12-bit"
    assert rows.loc["person2_virus_5.dcm", "mode"] == "DICOM MONOCHROME1 12-bit"
    assert tuple(rows.loc["IM0007", ["width", "height", "label"]]) == (64, 48, 1)
    assert rows.loc["person2_virus_5.dcm", "patient_id"] == "person2_virus"  # from the file name, as for JPEGs
    text = source.manifest.to_csv() + source.skipped.to_csv()
    assert PATIENT_NAME.split("^")[0] not in text and PATIENT_ID not in text  # nothing from the header


def test_the_scan_skips_bad_dicoms_with_the_reason(tmp_path):
    root = write_site_folder(tmp_path / "site")
    (root / "train/NORMAL/report.dcm").write_bytes(dicom_bytes(None))
    data, syntax = undecodable_dicom()
    (root / "train/PNEUMONIA/lossless.dcm").write_bytes(data)
    source = build_manifest(str(root), progress=False)
    reasons = dict(zip(source.skipped["path"].map(lambda p: Path(p).name), source.skipped["reason"], strict=True))
    assert reasons["report.dcm"].startswith("DICOM without pixel data")
    assert f"({syntax}) cannot be decoded" in reasons["lossless.dcm"]
    assert len(source.manifest) == 6


def test_predict_scores_dicoms_exactly_as_the_pngs_they_were_made_from(tmp_path):
    pngs, dicoms = tmp_path / "png", tmp_path / "dicom"
    pngs.mkdir(), dicoms.mkdir()
    for i in range(5):
        image = source_image(seed=10 + i)
        Image.fromarray(image).save(pngs / f"case{i}.png")
        stored = {0: dicom_bytes(bits12(image), "MONOCHROME2", 12), 1: dicom_bytes(bits12(255 - image), "MONOCHROME1", 12),
                  2: dicom_bytes(image.astype(np.uint16) * 257, "MONOCHROME2", 16),
                  3: dicom_bytes((255 - image).astype(np.uint16) * 257, "MONOCHROME1", 16),
                  4: headerless(dicom_bytes(bits12(image), "MONOCHROME2", 12))}[i]  # no Part-10 header: named .dcm
        (dicoms / ("case3" if i == 3 else f"case{i}.dcm")).write_bytes(stored)  # one without an extension
    model = write_export(tmp_path / "model", image_size=16)  # probability = mean brightness / 255
    out = tmp_path / "scores.csv"
    result = call_cli("cxr_tune.predict", "--model", str(model), str(pngs), str(dicoms), "--csv", str(out), "--quiet")
    assert result.returncode == 0, result.stderr
    scores: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(out.open()):
        path = Path(row["path"])
        scores.setdefault(path.parent.name, {})[path.stem] = float(row["probability"])
    assert len(scores["png"]) == len(scores["dicom"]) == 5
    assert len(set(scores["png"].values())) == 5  # four different images, so a mix-up would show
    for case, expected in scores["png"].items():
        assert scores["dicom"][case] == pytest.approx(expected, abs=1e-6), case


def test_a_dicom_declaring_more_pixels_than_pillow_allows_is_skipped_before_decoding(tmp_path, monkeypatch):
    # 65535 x 65535 declared over 3 KB of pixels: refused from the header, as Pillow refuses such a PNG
    bomb = dicom_bytes(IMAGE, "MONOCHROME2", 8, Rows=65535, Columns=65535)
    image, reason = try_decode_gray(bomb, 16)
    assert image is None and reason.startswith("DICOM image of 65535x65535 pixels x 1 frame(s) exceeds Pillow's limit of ")
    (tmp_path / "bomb.dcm").write_bytes(bomb)
    assert try_decode_checked(str(tmp_path / "bomb.dcm"), 16)[2] == reason  # predict's decode says the same
    with pytest.raises(DicomError, match="exceeds Pillow's limit"):
        probe(bomb)  # the data scan and inspect
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", IMAGE.size)  # Pillow's own setting is the limit
    assert try_decode_gray(dicom_bytes(IMAGE, "MONOCHROME2", 8), 16)[1] is None
    assert "exceeds Pillow's limit" in try_decode_gray(dicom_bytes(np.stack([IMAGE, IMAGE]), "MONOCHROME2", 8), 16)[1]


def deflated(pixels: np.ndarray, **elements) -> bytes:
    """``pixels`` as a Deflated Explicit VR Little Endian DICOM."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels, "MONOCHROME2", 8, **elements)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_deflated_dicom_that_inflates_past_the_pixel_limit_is_skipped(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500_000)  # 2 MB inflated at most
    assert np.array_equal(read_gray8(deflated(IMAGE)).pixels, IMAGE)
    padded = deflated(IMAGE, DataSetTrailingPadding=bytes(3_000_000))  # a few KB on disk, 3 MB inflated
    assert len(padded) < 10_000
    image, reason = try_decode_gray(padded, 16)
    assert image is None and reason.startswith("Deflated DICOM inflates to more than 2 MB (4 bytes per pixel of Pillow's limit")


def test_a_twelve_bit_jpeg_dicom_says_which_extra_decodes_it():
    """pydicom's 12-bit JPEG Extended file: Pillow refuses it; the reason says what decodes it, as JPEG-LS files' do."""
    from pydicom.data import get_testdata_file

    if "pylibjpeg" in get_decoder("1.2.840.10008.1.2.4.51").available_plugins:
        pytest.skip("the dicom extra is installed: the file decodes")
    image, reason = try_decode_gray(get_testdata_file("JPGExtended.dcm"), 16)
    assert image is None and "Pillow does not support 'JPEG Extended' for samples with 12-bit precision" in reason
    assert reason.endswith("; install pylibjpeg and pylibjpeg-libjpeg (pip install 'cxr_tune[dicom]')")


def test_pydicoms_warnings_on_a_header_it_reads_past_stay_off_the_console():
    """pydicom's SC_rgb_jpeg.dcm mixes implicit VR into an explicit VR header: it decodes, and pydicom's two-line
    UserWarning naming its own source file no longer reaches stderr between the command's lines."""
    import warnings

    from pydicom.data import get_testdata_file

    path = get_testdata_file("SC_rgb_jpeg.dcm")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        image, checks, reason = try_decode_checked(path, 16)
        probe(Path(path).read_bytes())
        input_kind(path)
    assert reason is None and image is not None
    assert [str(w.message) for w in seen] == []


def headerless(data: bytes) -> bytes:
    """The DICOM file ``data`` as old PACS and modality exports store it: the dataset alone, without the Part-10 header
    (no 128-byte preamble, no DICM marker, no file meta to name the transfer syntax)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.preamble, ds.file_meta = None, FileMetaDataset()
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return buffer.getvalue()


def test_a_dicom_without_the_part10_header_is_read_when_its_name_says_dicom(tmp_path):
    part10 = dicom_bytes(bits12(IMAGE), "MONOCHROME2", 12)
    old = headerless(part10)
    assert b"DICM" not in old[:200] and old[:2] == b"\x08\x00"  # it starts with its first element
    root = write_site_folder(tmp_path / "site")
    (root / "train/NORMAL/old.dcm").write_bytes(old)
    (root / "train/NORMAL/OLD2.DICOM").write_bytes(headerless(dicom_bytes(bits12(255 - IMAGE), "MONOCHROME1", 12)))
    (root / "train/NORMAL/report.dcm").write_bytes(headerless(dicom_bytes(None)))
    (root / "train/PNEUMONIA/old3").write_bytes(headerless(dicom_bytes(IMAGE, "MONOCHROME2", 8)))  # no name to say so
    jpeg = io.BytesIO()
    Image.fromarray(IMAGE).save(jpeg, format="JPEG")
    (root / "train/PNEUMONIA/renamed.dcm").write_bytes(jpeg.getvalue())  # a JPEG called .dcm stays a JPEG
    source = build_manifest(str(root), progress=False)
    modes = dict(zip(source.manifest["path"].map(lambda p: Path(p).name), source.manifest["mode"], strict=True))
    assert (modes["old.dcm"], modes["OLD2.DICOM"], modes["renamed.dcm"]) == ("DICOM MONOCHROME2 12-bit", "DICOM MONOCHROME1 12-bit", "L")
    reasons = dict(zip(source.skipped["path"].map(lambda p: Path(p).name), source.skipped["reason"], strict=True))
    assert reasons == {
        "report.dcm": "DICOM without the Part-10 header (no DICM marker) and pydicom could not read it: "
                      "DICOM without pixel data (not an image, e.g. a report or structured document)",
        "old3": "not an image Pillow can read",
    }
    expected = decode_gray(part10, 16)
    assert np.array_equal(decode_gray(root / "train/NORMAL/old.dcm", 16), expected)  # a path names itself
    pixels, checks, reason = try_decode_checked(old, 16, name="old.dcm")  # predict's bytes, with the file's name
    assert reason is None and np.array_equal(pixels, expected)
    assert try_decode_gray(old, 16) == (None, "not an image Pillow can read")  # bytes alone: by the marker, as before
    built = decode_batch({"path": np.array([str(root / "train/NORMAL/old.dcm")]), "content_hash": np.array(["h"])}, 16)
    assert built.column("error").to_pylist() == [""]  # the image cache decodes what the scan kept
    assert input_kind(old, name="old.dcm") == "1.2.840.10008.1.2"  # implicit VR little endian, as pydicom found it
