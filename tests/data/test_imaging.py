"""Every Pillow mode ends up 8-bit grayscale at the requested size; bad files fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cxr_tune.data.imaging import decode_gray, probe, to_gray8, try_decode_gray
from tests.conftest import write_image


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
def test_every_mode_becomes_uint8_gray_of_the_requested_size(tmp_path, mode):
    fmt = "TIFF" if mode in ("CMYK",) else "PNG"
    path = write_image(tmp_path / f"x.{fmt.lower()}", mode=mode, size=(37, 53), fmt=fmt)
    pixels = decode_gray(path, 24)
    assert pixels.shape == (24, 24) and pixels.dtype == np.uint8


def test_sixteen_bit_images_are_scaled_not_clipped():
    ramp = np.linspace(0, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    gray = np.asarray(to_gray8(Image.fromarray(ramp)))
    assert gray.min() == 0 and gray.max() == 255  # Pillow's convert("L") would clip almost all to 255
    assert np.all(np.diff(gray.ravel().astype(int)) >= 0)


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
