"""Decode any image Pillow reads, or a DICOM file, into an 8-bit grayscale square; the one place pixels are made.

The cache build, ``inspect`` and ``predict`` all call :func:`decode_gray`, so a model sees exactly
the same pixels at prediction time as it saw in training. DICOM input (recognised by its ``DICM``
marker, whatever the file is called, or by a ``.dcm``/``.dicom`` name where the marker is missing) is mapped to 8 bits by :mod:`cxr_tune.data.dicom` and then
resized like any other image. Change what it does and bump :data:`PREPROCESS_VERSION`: every
image cache keyed on the old version is then rebuilt, and a model exported before it (its ``model.json``
records the version) that scores or adapts on an image the change affects (:data:`PREPROCESS_CHANGES`) gets a one-line
warning (:func:`cxr_tune.serving.warn_if_other_preprocessing`).
"""

from __future__ import annotations

import io
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from cxr_tune import storage
from cxr_tune.data import dicom, input_checks

#: Version of the pixel pipeline below; part of every image-cache key. Bump it with a line in PREPROCESS_CHANGES.
PREPROCESS_VERSION = 3

#: What :func:`input_kind` adds to the format of an image with an alpha band (RGBA, LA, PA): "PNG with alpha".
WITH_ALPHA = " with alpha"


@dataclass(frozen=True)
class PreprocessChange:
    """What one :data:`PREPROCESS_VERSION` changed: the words for people, and which inputs it changed, so that a model
    exported before it is warned only when it scores one of those (the others reach it as in training)."""

    said: str
    inputs: frozenset[str] | None = None  # the :func:`input_kind` values whose pixels changed (a format with alpha too); None: every input
    alpha_only: bool = False  # only images with an alpha band (their kind ends in WITH_ALPHA), of the inputs above

    def affects(self, kind: str) -> bool:
        if self.alpha_only and not kind.endswith(WITH_ALPHA):
            return False
        return self.inputs is None or kind in self.inputs or kind.removesuffix(WITH_ALPHA) in self.inputs


#: What each version changed: a model exported before a change is told of it when it scores an input the change affects.
PREPROCESS_CHANGES = {
    2: PreprocessChange(
        "JPEG and JPEG 2000 DICOMs decode with Pillow whatever other decoders are installed (with the [dicom] extra, "
        "pylibjpeg decoded them before: some pixels one grey level off); JPEG, PNG and uncompressed DICOM pixels are unchanged",
        # the transfer syntaxes pydicom's Pillow plugin decodes (JPEG baseline and extended, JPEG 2000 lossless and lossy)
        frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"}),
    ),
    3: PreprocessChange(
        "an image with an alpha band (RGBA, LA, PA) decodes from its gray or colour bands, the alpha ignored (it was composited "
        "over black: a PNG whose alpha is 0 everywhere became an all-black image); images without one are unchanged",
        alpha_only=True,
    ),
}


def changes_since(version: object) -> dict[int, PreprocessChange]:
    """The changes between a model's recorded ``preprocess_version`` and this code's; none for this code's version or a
    model from before the record (None, taken at its word); for a version this code does not know (a newer one), one
    that affects every input."""
    if version is None or version == PREPROCESS_VERSION:
        return {}
    if not isinstance(version, int) or isinstance(version, bool) or version > PREPROCESS_VERSION:
        return {PREPROCESS_VERSION: PreprocessChange(f"version {version!r} is not one this code knows; see cxr_tune/data/imaging.py")}
    return {v: change for v, change in sorted(PREPROCESS_CHANGES.items()) if version < v}


def input_kind(source: str | Path | bytes, *, name: str | None = None) -> str:
    """What decides how ``source`` decodes, as :class:`PreprocessChange` names it: a DICOM file's transfer syntax UID,
    else Pillow's format ("JPEG", "PNG", ...), with :data:`WITH_ALPHA` for an image with an alpha band. Reads the header
    only; "" for a file no longer readable (one decoded a moment before, then replaced or removed: it is not scored again).
    ``name``: as for :func:`decode_gray`."""
    try:
        name, source = _name(source, name), _read(source)
        if _is_dicom(source, name):
            return dicom.transfer_syntax(source)
        with _open(source) as image:
            return str(image.format) + (WITH_ALPHA if image.mode in _ALPHA_MODES else "")
    except (OSError, ValueError):  # Pillow's UnidentifiedImageError is an OSError, a DicomError a ValueError
        return ""


#: How a non-square X-ray becomes square: plain resize (squash). Recorded in exported models.
RESIZE_METHOD = "bilinear resize of the whole image to size x size (aspect ratio not kept)"

#: What :func:`decode_gray` does to an image file Pillow reads, call by call in order ({size}: the model's input side): the one
#: description export writes into ``model.json`` (``preprocessing.steps``) and ``model.onnx``'s ``metadata_props``, and the
#: model card gives, so another tool can make the same pixels (each step moves scores: without the draft, 1 of 40 real
#: decisions flipped). Change a step and this text, and bump :data:`PREPROCESS_VERSION` with :func:`decode_steps_of`.
DECODE_STEPS = (
    "PIL.Image.open(file); image.draft(\"L\", ({size}, {size})) before any pixel is read (a JPEG only: libjpeg decodes straight to "
    "grayscale at the largest reduction, 1/8, 1/4 or 1/2, that keeps both sides >= {size}; other formats ignore it); "
    "PIL.ImageOps.exif_transpose(image) (EXIF orientation applied); 8-bit grayscale: mode L as it is, 16/32-bit modes "
    "(I;16, I, F) min-max scaled, round((x - min) * 255 / (max - min)), CMYK convert(\"RGB\").convert(\"L\"), any other mode "
    "(RGBA/LA/PA too: the alpha band ignored) convert(\"L\"); "
    "image.resize(({size}, {size}), PIL.Image.Resampling.BILINEAR, reducing_gap=3.0) (aspect ratio not kept); uint8. "
    "A DICOM file: cxr_tune.data.dicom.read_gray8's 8-bit mapping, then the same resize"
)
#: :data:`DECODE_STEPS` as versions 1 and 2 made image files' pixels: version 3 changed images with an alpha band alone
#: (version 2 changed DICOM files only, which both texts leave to ``read_gray8``).
DECODE_STEPS_BEFORE_3 = DECODE_STEPS.replace(
    'CMYK convert("RGB").convert("L"), any other mode (RGBA/LA/PA too: the alpha band ignored) convert("L")',
    'RGBA/LA/PA composited over opaque black then convert("L"), CMYK convert("RGB").convert("L"), any other mode convert("L")',
)


def decode_steps_of(version: object) -> str | None:
    """The decode steps (with ``{size}`` to fill) of a model made by ``version`` of the pipeline, so an export from before
    ``model.json`` recorded them still gets its own; None for a version this code does not know."""
    if isinstance(version, bool) or not isinstance(version, int):
        return None
    return {1: DECODE_STEPS_BEFORE_3, 2: DECODE_STEPS_BEFORE_3, 3: DECODE_STEPS}.get(version)

_HIGH_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
_GRAY_MODES = {"1", "L", "LA", *_HIGH_BIT_MODES}  # modes that cannot hold colour
_ALPHA_MODES = {"RGBA", "LA", "PA"}  # modes with an alpha band, which to_gray8 ignores


class EmptyFile(ValueError):
    """A file of 0 bytes: said as such, not as a file Pillow cannot read."""

    def __init__(self) -> None:
        super().__init__("empty file (0 bytes)")


@dataclass(frozen=True)
class ImageInfo:
    """What a header-and-decode check learned about one file."""

    width: int
    height: int
    mode: str
    notes: tuple[str, ...] = ()  # why it may not be like the training X-rays (:mod:`cxr_tune.data.input_checks`), no model's size known


def to_gray8(image: Image.Image) -> Image.Image:
    """Any Pillow mode (L, RGB, RGBA, P, CMYK, I;16, I, F, 1, LA) as 8-bit grayscale ``L``.

    High-bit-depth images (16-bit PNG/TIFF exported from DICOM) are min-max scaled to 0..255;
    Pillow's own ``convert("L")`` would clip everything above 255 to white. An alpha band is ignored
    (``convert("L")`` reads the gray or colour bands alone): a radiograph has no transparency, and an export tool's
    alpha of 0 everywhere made the film all black when it was composited over black.
    """
    if image.mode == "L":
        return image
    if image.mode in _HIGH_BIT_MODES:
        return _scale_high_bit(image)
    if image.mode == "CMYK":
        return image.convert("RGB").convert("L")
    return image.convert("L")


def _scale_high_bit(image: Image.Image) -> Image.Image:
    """Min-max scale a 16/32-bit image to ``L``, one band of rows at a time.

    Same pixels as scaling the whole array in float64 at once, but the only full-size array is
    the 8-bit result: a 4000x4000 16-bit X-ray needs 16 MB here, not the ~400 MB of float64
    temporaries it took before, and prediction decodes several images at once. (Shrinking first
    is not an option: Pillow cannot resize 16-bit images, and the min and max would change.)
    """
    width, height = image.size
    rows = max(1, dicom.BAND_PIXELS // max(width, 1))

    def bands():
        for top in range(0, height, rows):
            yield top, np.asarray(image.crop((0, top, width, min(top + rows, height))))

    lo, hi = math.inf, -math.inf
    for _, pixels in bands():
        lo, hi = min(lo, float(pixels.min())), max(hi, float(pixels.max()))
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty((height, width), dtype=np.uint8)
    for top, pixels in bands():
        out[top : top + len(pixels)] = np.round((pixels.astype(np.float64) - lo) * scale)
    return Image.fromarray(out)


def _read(source: str | Path | bytes) -> str | Path | bytes:
    """The bytes of a file on object storage (``s3://...``), read through :mod:`cxr_tune.storage`; a local path or bytes as given."""
    if isinstance(source, str) and storage.is_uri(source):
        return storage.read_bytes(source)
    return source


def _open(source: str | Path | bytes) -> Image.Image:
    _quiet_large_image_warning()
    return Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)


#: The entry ``warnings.simplefilter("ignore", DecompressionBombWarning)`` puts in ``warnings.filters``.
_IGNORE_LARGE = ("ignore", None, Image.DecompressionBombWarning, None, 0)


def _quiet_large_image_warning() -> None:
    """Keep Pillow's DecompressionBombWarning (an image over ``Image.MAX_IMAGE_PIXELS``, under twice it, which decodes
    fine) off the console: it printed between a command's lines, naming Pillow's own file; predict says it in words
    instead (:func:`_large_image_notes`). A process-wide filter, not a ``catch_warnings`` block around each open: that
    swaps the process's filters, and predict decodes in threads (one block's end lets another thread's warning out).
    Added once, last, where it is missing (first use, or after a caller's ``catch_warnings`` block dropped it): a filter
    set before it wins (``-W error::RuntimeWarning``, a caller's), and the filters are not changed on every open (each
    change forgets which warnings were shown, so they print again)."""
    if _IGNORE_LARGE not in warnings.filters:
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning, append=True)


#: Names that say DICOM: such a file without the ``DICM`` marker (no Part-10 header) is read as DICOM when Pillow cannot read it.
DICOM_SUFFIXES = (".dcm", ".dicom")


def _name(source: str | Path | bytes, name: str | None) -> str | None:
    """The file's name or path: ``name`` when given, else a path's own; None for bytes without one."""
    return name if name is not None or isinstance(source, bytes) else os.fspath(source)


def _is_dicom(source: str | Path | bytes, name: str | None = None) -> bool:
    """Whether ``source`` is a DICOM file: by its marker, whatever its name (PACS exports often have no extension), or
    else by its ``name`` ending in :data:`DICOM_SUFFIXES` when Pillow cannot read it (old PACS and modality exports
    store the dataset alone, without the Part-10 header; a JPEG called ``.dcm`` stays a JPEG).
    Raises :class:`EmptyFile` for 0 bytes: every decode asks this first."""
    if isinstance(source, bytes):
        header = source[: dicom.HEADER_BYTES]
    else:
        storage.check_plain_file(source)  # a named pipe would block the read
        with open(source, "rb") as file:
            header = file.read(dicom.HEADER_BYTES)
    if not header:
        raise EmptyFile
    if dicom.is_dicom(header):
        return True
    return bool(name) and name.lower().endswith(DICOM_SUFFIXES) and not _pillow_reads(source)


def _pillow_reads(source: str | Path | bytes) -> bool:
    """Whether Pillow recognises ``source`` as an image (its header only)."""
    from PIL import UnidentifiedImageError

    try:
        with _open(source):
            return True
    except UnidentifiedImageError:
        return False


def _square(gray: Image.Image, size: int) -> np.ndarray:
    """The one resize every image, DICOM or not, goes through."""
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(gray, dtype=np.uint8).copy()


def decode_gray(source: str | Path | bytes, size: int, *, name: str | None = None) -> np.ndarray:
    """Decode ``source`` (a path or the file's bytes) to a ``(size, size)`` uint8 array.

    ``name``: the file's name or path when ``source`` is its bytes; a ``.dcm`` or ``.dicom`` file without the Part-10
    header is DICOM by its name alone (:func:`_is_dicom`).

    Raises whatever Pillow raises for an unreadable, truncated or non-image file, and
    :class:`~cxr_tune.data.dicom.DicomError` for a DICOM file without usable pixels; callers that
    must not stop on one bad file use :func:`try_decode_gray`. A path may be an object-storage URI.
    """
    name, source = _name(source, name), _read(source)
    if _is_dicom(source, name):
        return _square(Image.fromarray(dicom.read_gray8(source).pixels, "L"), size)
    with _open(source) as image:
        return _gray_square(image, size)


def _gray_square(image: Image.Image, size: int) -> np.ndarray:
    """An opened (not DICOM) image as the model's pixels: the one path every decode takes, as :data:`DECODE_STEPS` says."""
    # JPEG only: let libjpeg decode at the smallest scale that is still >= size (1/2, 1/4 or 1/8; much faster on
    # full-resolution X-rays). Not the same pixels as a full decode then the resize below. Where the scale s divides both
    # sides (the 224-px copies), half A's images at 64 px are 0.3-0.6 grey levels apart on average, at most 12. Where it
    # does not, the reduced picture's last row or column also covers up to s - 1 repeated edge pixels, so the film reaches
    # the resize slightly squeezed: the same images cropped by 1-7 px a side, 0.4-2.8 on average at 64 px (at most 54)
    # and 0.6-6.3 at 32 px (at most 71) (measured 2026-12-07). Training and prediction decode alike; the same image saved
    # as PNG or DICOM scores a little differently (README, "DICOM"). Kept: the committed models were trained on it.
    image.draft("L", (size, size))
    return _square(to_gray8(_upright(image)), size)


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says (a phone photo of a film is often stored on its side)."""
    return ImageOps.exif_transpose(image)


#: EXIF orientations :func:`_upright` turns by a quarter: transpose, 270, transverse and 90 degrees.
_QUARTER_TURNS = (5, 6, 7, 8)


def _upright_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of an opened image as decoded (by :func:`_upright`), from its header alone: no pixel is
    read, so a folder's scan stays cheap. ``data inspect`` and ``predict`` report this size, the one training sees."""
    width, height = image.size
    if image.format == "TIFF":  # Pillow reports a TIFF's size upright already (its plugin turns the pixels as they load)
        return width, height
    return (height, width) if image.getexif().get(ExifTags.Base.Orientation) in _QUARTER_TURNS else (width, height)


def decode_checked(source: str | Path | bytes, size: int, *, name: str | None = None) -> tuple[np.ndarray, list[input_checks.Note]]:
    """:func:`decode_gray`'s pixels, and why the image may not be like the training X-rays
    (:func:`cxr_tune.data.input_checks.notes`; empty when nothing says so). For ``predict``: the
    cache build does not pay for the checks. ``name``: as for :func:`decode_gray`."""
    name, source = _name(source, name), _read(source)
    if _is_dicom(source, name):
        gray = dicom.read_gray8(source)
        pixels = _square(Image.fromarray(gray.pixels, "L"), size)
        return pixels, _dicom_notes(gray, size, pixels)
    with _open(source) as image:
        (width, height), colour = _upright_size(image), image.mode not in _GRAY_MODES
        pixels = _gray_square(image, size)
    spread = 0.0
    if colour:  # decoded again in colour: the pixels above come from libjpeg's own gray decode, as in training
        with _open(source) as image:
            image.draft("RGB", (input_checks.COLOUR_PROBE, input_checks.COLOUR_PROBE))  # a JPEG decodes at a reduced scale
            spread = _colour_spread(image)
    return pixels, input_checks.notes(width=width, height=height, size=size, colour_spread=spread, pixels=pixels) + _large_image_notes(width, height)


def _large_image_notes(width: int, height: int) -> list[input_checks.Note]:
    """Pillow's DecompressionBombWarning in words, for predict's "check first" list and ``data inspect``'s: one image over
    twice the limit is refused (:func:`describe_failure`), one between the limit and twice it is decoded, scored and cached
    (at length), and is named here with its size."""
    limit, pixels = Image.MAX_IMAGE_PIXELS, width * height
    if limit is None or pixels <= limit:
        return []
    return [input_checks.Note(f"very large image: {width}x{height} px, {_megapixels(pixels)} MP",
                              f"Pillow warns above {_megapixels(limit)} MP: a scan this large, or a header that misstates its size")]


def _dicom_notes(gray: dicom.Gray8, size: int | None, pixels: np.ndarray) -> list[input_checks.Note]:
    """:func:`cxr_tune.data.input_checks.notes` of a DICOM file, from what its reader measured and read."""
    height, width = gray.pixels.shape
    return input_checks.notes(width=width, height=height, size=size, colour_spread=gray.colour_spread, pixels=pixels,
                              modality=gray.modality, view=gray.view)


def _sample_step(image: Image.Image) -> int:
    """Every how many rows and columns the checks look: about :data:`~cxr_tune.data.input_checks.COLOUR_PROBE` a side."""
    return max(1, max(image.size) // input_checks.COLOUR_PROBE)


def _colour_spread(image: Image.Image) -> float:
    """:func:`cxr_tune.data.input_checks.colour_spread` of a sample of ``image``'s pixels; 0 for a gray mode."""
    if image.mode in _GRAY_MODES:
        return 0.0
    step = _sample_step(image)
    return input_checks.colour_spread(np.asarray(image.convert("RGB"))[::step, ::step])


def try_decode_checked(source: str | Path | bytes, size: int, *, name: str | None = None) -> tuple[np.ndarray | None, list[input_checks.Note], str | None]:
    """:func:`decode_checked`, returning ``(None, [], reason)`` instead of raising on a bad file."""
    try:
        return *decode_checked(source, size, name=name), None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-file skip, not a crash
        return None, [], describe_failure(exc)


def try_decode_gray(source: str | Path | bytes, size: int, *, name: str | None = None) -> tuple[np.ndarray | None, str | None]:
    """:func:`decode_gray`, returning ``(None, reason)`` instead of raising on a bad file."""
    try:
        return decode_gray(source, size, name=name), None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-file skip, not a crash
        return None, describe_failure(exc)


def probe(data: bytes, *, name: str | None = None) -> ImageInfo:
    """Check that ``data`` is a complete image Pillow (or, for DICOM, pydicom) can decode; return its
    size, its mode and why it may not be like the training X-rays (as ``predict`` checks; for the size,
    against the smallest model input, since no model is known yet).

    Decodes the whole stream (at a reduced JPEG scale, so it is cheap) because a truncated file
    opens fine and only fails when its pixels are read. A DICOM file is mapped all the way to
    8 bits, so one whose window or LUT cannot be applied is caught here, not in training. ``name``: the file's, as for
    :func:`decode_gray`.
    """
    if _is_dicom(data, name):
        gray = dicom.read_gray8(data)
        height, width = gray.pixels.shape
        return ImageInfo(width=width, height=height, mode=gray.mode, notes=tuple(_dicom_notes(gray, None, gray.pixels)))
    with _open(data) as image:
        (width, height), mode = _upright_size(image), image.mode
        image.draft(image.mode if image.mode in ("L", "RGB") else None, (32, 32))
        image.load()
        # The checks, on what was decoded anyway (a JPEG at a reduced scale).
        spread, step = _colour_spread(image), _sample_step(image)
        gray = np.asarray(to_gray8(image))[::step, ::step]
    notes = input_checks.notes(width=width, height=height, size=None, colour_spread=spread, pixels=gray) + _large_image_notes(width, height)
    return ImageInfo(width=width, height=height, mode=mode, notes=tuple(notes))


def _megapixels(pixels: int) -> str:
    """``pixels`` in megapixels as a person reads them: "179", or "0.0024" below one."""
    return f"{pixels / 1e6:,.0f}" if pixels >= 1e6 else f"{pixels / 1e6:.2g}"


def describe_failure(exc: BaseException) -> str:
    """A short reason a person understands for why a file could not be used."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):
        return "not an image Pillow can read"
    if isinstance(exc, Image.DecompressionBombError):  # its own words warn of an attack; most are a huge scan or a wrong header
        pixels = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{_megapixels(int(pixels.group(1)))} MP, " if pixels else ""
        return (f"{size}larger than Pillow's {_megapixels(2 * Image.MAX_IMAGE_PIXELS)} MP limit (its decompression-bomb guard, "
                "Image.MAX_IMAGE_PIXELS x 2); skipped")
    if isinstance(exc, (dicom.DicomError, storage.NotPlainFile, storage.StoreError, EmptyFile)):
        return str(exc)  # already one sentence, e.g. which package decodes its transfer syntax
    text = str(exc).split("\n")[0]
    if "truncated" in text.lower():
        return "truncated image (file ends before the image data does)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, FileNotFoundError) and exc.filename:  # the path is on the line already; say what happened to it
        path = os.fsdecode(exc.filename)
        if os.path.islink(path):
            return f"broken link (its target {os.fsdecode(os.readlink(path))} does not exist)"
        return "no such file (gone since its folder was listed)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
