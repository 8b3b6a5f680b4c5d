"""Every Pillow mode ends up 8-bit grayscale at the requested size; bad files fail clearly."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cxr_tune.data.imaging import decode_gray, input_kind, probe, to_gray8, try_decode_gray
from tests.conftest import write_image


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_every_mode_becomes_uint8_gray_of_the_requested_size(tmp_path, mode):
    fmt = "TIFF" if mode in ("CMYK",) else "PNG"
    path = write_image(tmp_path / f"x.{fmt.lower()}", mode=mode, size=(37, 53), fmt=fmt)
    pixels = decode_gray(path, 24)
    assert pixels.shape == (24, 24) and pixels.dtype == np.uint8


def test_a_radiograph_saved_with_an_alpha_band_decodes_from_its_gray_bands_whatever_the_alpha(tmp_path):
    """An RGBA PNG whose alpha is 0 everywhere (an export tool's) was composited over black: cached all black (mean 0.0
    for a film of mean 95), trained on as NORMAL, and ``inspect`` called it blank. The cache, ``inspect`` and ``predict``
    decode it alike from its gray bands; a model exported before is warned when it scores one (it saw black)."""
    from cxr_tune.data.imaging import changes_since, decode_checked

    film = np.tile(np.linspace(20, 220, 40).astype(np.uint8), (30, 1))
    rgba = np.dstack([film, film, film, np.zeros_like(film)])
    path = tmp_path / "IM-9004-0001.png"
    Image.fromarray(rgba, "RGBA").save(path)
    expected = np.asarray(Image.fromarray(film).resize((16, 16), Image.Resampling.BILINEAR, reducing_gap=3.0))
    assert np.array_equal(decode_gray(path, 16), expected)
    pixels, notes = decode_checked(path, 16)  # predict's decode
    assert np.array_equal(pixels, expected) and not notes
    assert probe(path.read_bytes()).notes == ()  # inspect: not "nearly blank"
    assert any(change.affects(input_kind(path)) for change in changes_since(2).values())
    assert not any(change.affects(input_kind(write_image(tmp_path / "gray.png", fmt="PNG"))) for change in changes_since(2).values())


def test_a_colour_image_decodes_to_pillows_luma_of_all_three_bands(tmp_path):
    """An RGB PNG whose red, green and blue differ in every pixel decodes (at its own size: no resize) to Pillow's
    ``convert("L")``, 0.299 R + 0.587 G + 0.114 B, as DECODE_STEPS records; not one band of it."""
    rng = np.random.default_rng(5)
    colour = Image.fromarray(np.dstack([rng.integers(0, 80, (16, 16)), rng.integers(90, 170, (16, 16)), rng.integers(180, 256, (16, 16))])
                             .astype(np.uint8), "RGB")
    colour.save(tmp_path / "colour.png")
    assert np.array_equal(decode_gray(tmp_path / "colour.png", 16), np.asarray(colour.convert("L")))


def test_sixteen_bit_images_are_scaled_not_clipped():
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    gray = np.asarray(to_gray8(Image.fromarray(ramp)))
    assert gray.min() == 0 and gray.max() == 255  # Pillow's convert("L") would clip almost all to 255
    assert np.all(np.diff(gray.ravel().astype(int)) >= 0)


def test_a_sixteen_bit_film_that_does_not_start_at_zero_spans_0_to_255(tmp_path):
    """A 16-bit PNG whose values run 1000..3000 (a detector's offset) decodes to exactly 0..255, its
    darkest pixel black and its brightest white: min-max, not a scale by the maximum alone."""
    values = np.linspace(1000, 3000, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "offset.png")
    pixels = decode_gray(tmp_path / "offset.png", 16)
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.array_equal(pixels, np.round((values - 1000.0) * 255 / 2000).astype(np.uint8))


def test_bytes_and_path_give_the_same_pixels(tmp_path):
    path = write_image(tmp_path / "a.jpeg", mode="RGB", size=(300, 200))
    assert np.array_equal(decode_gray(path, 32), decode_gray(path.read_bytes(), 32))


def test_truncated_and_non_images_fail_with_a_reason(tmp_path):
    path = write_image(tmp_path / "a.jpeg", size=(200, 200))
    truncated = path.read_bytes()[: len(path.read_bytes()) // 2]
    with pytest.raises(OSError):
        probe(truncated)
    assert try_decode_gray(truncated, 16) == (None, "truncated image (file ends before the image data does)")
    assert try_decode_gray(b"hello", 16) == (None, "not an image Pillow can read")
    with pytest.raises(ValueError, match="empty"):
        probe(b"")
    (tmp_path / "empty.jpeg").write_bytes(b"")
    assert try_decode_gray(tmp_path / "empty.jpeg", 16) == try_decode_gray(b"", 16) == (None, "empty file (0 bytes)")


def _old_to_gray8(image: Image.Image) -> np.ndarray:
    """The whole-array float64 scaling decode_gray used before; the reference for the banded one."""
    pixels = np.asarray(image, dtype=np.float64)
    lo, hi = float(pixels.min()), float(pixels.max())
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return np.round((pixels - lo) * scale).astype(np.uint8)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I", "F"])
def test_high_bit_scaling_gives_the_same_pixels_as_before(mode):
    values = np.random.default_rng(1).integers(0, 65535, (613, 389)).astype(np.uint16)  # several row bands
    if mode == "I;16B":
        image = Image.frombytes(mode, values.shape[::-1], values.astype(">u2").tobytes())
    else:
        image = Image.fromarray(values).convert(mode) if mode != "I;16" else Image.fromarray(values)
    new = np.asarray(to_gray8(image)).astype(int)
    assert np.abs(new - _old_to_gray8(image)).max() <= 1
    flat = Image.fromarray(np.full((40, 30), 700, dtype=np.uint16))
    assert np.asarray(to_gray8(flat)).max() == 0


def test_a_large_sixteen_bit_image_decodes_in_bounded_memory(tmp_path):
    import tracemalloc

    values = np.random.default_rng(2).integers(100, 4000, (4000, 4000), dtype=np.uint16)
    path = tmp_path / "big.tif"
    Image.fromarray(values).save(path)  # uncompressed TIFF: quick to write and read
    tracemalloc.start()
    try:
        pixels = decode_gray(path, 64)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pixels.shape == (64, 64) and pixels.dtype == np.uint8
    # float64 at full resolution alone is 4x the 16-bit array (128 MB here); now the 8-bit result
    # (16 MB) plus one small band is all that is allocated
    assert peak < values.nbytes, f"peak {peak / 1e6:.0f} MB"


def test_a_broken_link_says_so_without_repeating_its_path(tmp_path):
    import os

    from cxr_tune.data.imaging import try_decode_checked

    os.symlink(tmp_path / "nowhere.jpeg", tmp_path / "IM-0003-0001.jpeg")
    assert try_decode_checked(tmp_path / "IM-0003-0001.jpeg", 16)[2] == f"broken link (its target {tmp_path / 'nowhere.jpeg'} does not exist)"
    assert try_decode_checked(tmp_path / "gone.jpeg", 16)[2] == "no such file (gone since its folder was listed)"


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_the_size_probe_reports_is_the_size_of_the_image_turned_upright_in_every_format(fmt):
    """A TIFF with orientation 6 was reported 400x300 where it decodes 300x400: Pillow reports a TIFF's size upright
    already, and turning it once more swapped it back (JPEG, PNG and WebP report the stored size)."""
    import io

    from PIL import ImageOps

    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        buffer = io.BytesIO()
        Image.new("L", (40, 30), 128).save(buffer, fmt, exif=exif)
        data = buffer.getvalue()
        upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).size
        info = probe(data)
        assert (info.width, info.height) == upright, (fmt, orientation)


def test_input_kind_names_what_decides_how_a_file_decodes(tmp_path):
    """What PREPROCESS_CHANGES entries name the inputs they changed by: Pillow's format, a DICOM's transfer syntax."""
    from pydicom.uid import JPEGBaseline8Bit

    from tests.data.test_dicom import jpeg_dicom

    png = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png, format="PNG")
    assert input_kind(png.getvalue()) == "PNG"
    assert input_kind(jpeg_dicom()[0]) == JPEGBaseline8Bit
    assert input_kind(tmp_path / "gone.dcm") == ""  # removed since it was decoded: not scored again


def test_the_recorded_decode_steps_followed_by_hand_make_decode_gray_s_pixels(tmp_path):
    """What export records for another tool (DECODE_STEPS) is enough to make the very pixels: a JPEG stored on its side
    whose sides the reduced decode does not divide, and a 16-bit PNG. Before: the steps named no draft, EXIF or reducing_gap."""
    from PIL import ImageOps

    from cxr_tune.data.imaging import DECODE_STEPS

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (301, 437, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turned a quarter
    photo.save(tmp_path / "side.jpeg", quality=90, exif=exif)
    Image.fromarray(np.linspace(0, 4000, 90 * 70).reshape(90, 70).astype(np.uint16)).save(tmp_path / "deep.png")
    steps = DECODE_STEPS.format(size=32)
    assert all(call in steps for call in ('draft("L", (32, 32))', "exif_transpose(image)", "reducing_gap=3.0"))

    def by_hand(path):
        image = Image.open(path)
        image.draft("L", (32, 32))
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I"):
            a = np.asarray(image, np.float64)
            image = Image.fromarray(np.round((a - a.min()) * 255 / (a.max() - a.min())).astype(np.uint8))
        return np.asarray(image.convert("L").resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=3.0))

    for name in ("side.jpeg", "deep.png"):
        assert np.array_equal(by_hand(tmp_path / name), decode_gray(tmp_path / name, 32)), name


def test_an_image_over_pillows_warning_size_is_flagged_to_check_first_without_pillows_raw_warning(tmp_path, monkeypatch):
    """An 11000x11000 scan (121 MP: over Image.MAX_IMAGE_PIXELS, 89 MP, under twice it, where Pillow refuses) printed
    Pillow's DecompressionBombWarning on predict's console, naming a file in site-packages, and was scored with no note.
    predict lists it to check first instead; the cache decodes it without a word. The limit is lowered to keep it small."""
    import warnings

    from cxr_tune.data.imaging import decode_checked

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = write_image(tmp_path / "IM-0001-0001.png")  # 40x30: 1,200 pixels
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always", UserWarning)  # a caller's own filters, in front
        pixels, notes = decode_checked(path, 16)  # predict's decode
        cached = decode_gray(path, 16)  # the cache's
    assert notes == ["very large image: 40x30 px, 0.0012 MP (Pillow warns above 0.001 MP: a scan this large, or a header that misstates its size)"]
    assert np.array_equal(pixels, cached)
    assert [str(warning.message) for warning in shown] == []


def test_decoding_leaves_the_warning_filters_alone_and_a_callers_filter_for_the_large_image_warning_wins(tmp_path, monkeypatch):
    """Every open put Pillow's warning filter back in front of the caller's: ``-W error::RuntimeWarning`` (its class)
    was overridden, and each change to the filters forgets which warnings were shown (they print again)."""
    import warnings

    from cxr_tune.data.imaging import decode_checked

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = write_image(tmp_path / "IM-0001-0001.png")  # 40x30: 1,200 pixels
    decode_gray(path, 16)
    with warnings.catch_warnings(record=True):
        warnings.filterwarnings("error", category=Image.DecompressionBombWarning)  # as -W error::RuntimeWarning asks of it
        filters = list(warnings.filters)
        with pytest.raises(Image.DecompressionBombWarning):  # before: decoded, the filter put back in front of the caller's
            decode_checked(path, 16)
        assert warnings.filters == filters
