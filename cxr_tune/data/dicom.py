"""Read a DICOM file (as hospitals store X-rays) into the 8-bit grayscale pixels the project uses.

:func:`cxr_tune.data.imaging.decode_gray` sends DICOM input here and resizes the result exactly
as it resizes a JPEG, so training, the data scan, ``predict`` and ``adapt`` see the same pixels.
The mapping is the display pipeline DICOM defines, done with pydicom's own functions:

1. the modality LUT (Rescale Slope/Intercept, or a Modality LUT Sequence);
2. the VOI LUT, or else the first window (Window Center/Width), when the file has one; its output
   range becomes 0..255. Without either, the modality values are min-max scaled to 0..255, the
   rule :func:`cxr_tune.data.imaging.to_gray8` applies to 16-bit PNGs. (8-bit data with nothing
   to map is kept as it is, as an 8-bit PNG is.);
3. MONOCHROME1 (bright = air) is inverted, so bright = dense as in the Kermany JPEGs.

Only the first frame of a multi-frame file is used; colour files (RGB, YBR, PALETTE COLOR) become
gray the way Pillow turns an RGB JPEG gray. Privacy: only the image-pixel elements (group 0028),
the pixel data, the Modality and the View Position (for :mod:`cxr_tune.data.input_checks`) are
parsed from the file; nothing that names a patient is read.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cxr_tune.data import input_checks

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

#: Part 10 DICOM files start with a 128-byte preamble and then these 4 bytes, extension or not.
MAGIC = b"DICM"
MAGIC_OFFSET = 128
HEADER_BYTES = MAGIC_OFFSET + len(MAGIC)

#: Rows of pixels mapped at a time hold at most this many pixels, so the float64 scratch arrays of
#: the LUT steps here and of ``imaging._scale_high_bit`` stay a few MB whatever the image size; the
#: steps are per pixel, so the result is the same as mapping the whole frame at once.
BAND_PIXELS = 1 << 18

_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
_EXTENDED_OFFSETS = (0x7FE00001, 0x7FE00002)  # frame offsets some compressed files need to find frame 1
_KIND_TAGS = (0x00080060, 0x00185101)  # Modality, View Position


class DicomError(ValueError):
    """A DICOM file the project cannot turn into pixels; the message is the reason a user sees."""


@dataclass(frozen=True)
class Gray8:
    """The first frame of a DICOM file as display-ready 8-bit grayscale, and what it was."""

    pixels: np.ndarray  # (rows, columns) uint8, bright = dense
    mode: str  # e.g. "DICOM MONOCHROME2 12-bit", shown by ``inspect`` beside Pillow's modes
    modality: str | None = None  # Modality, e.g. "DX"; None when the file does not say
    view: str | None = None  # View Position, e.g. "PA" or "LL"; None when the file does not say
    colour_spread: float = 0.0  # of a colour file (:func:`cxr_tune.data.input_checks.colour_spread`); 0 for a monochrome one


def is_dicom(head: bytes) -> bool:
    """Whether a file starting with ``head`` (its first :data:`HEADER_BYTES` bytes or more) is DICOM."""
    return head[MAGIC_OFFSET:HEADER_BYTES] == MAGIC


#: The reason's start for a file without the Part-10 header that does not give an image: that it is DICOM at all is
#: only its name's word (see :func:`cxr_tune.data.imaging.decode_gray`).
HEADERLESS = "DICOM without the Part-10 header (no DICM marker) and pydicom could not read it"


def read_gray8(source: bytes | str | Path) -> Gray8:
    """The first frame of the DICOM file ``source`` (its bytes or path), mapped to 8-bit grayscale.

    Raises :class:`DicomError` with a one-line reason when the file has no pixel data, its
    transfer syntax cannot be decoded with the installed packages, its pixels are corrupt, or its
    header declares more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` (checked before decoding).
    A file without the Part-10 header (old PACS and modality exports: the dataset alone) is read
    as pydicom finds it, its reason starting with :data:`HEADERLESS`.
    """
    try:
        return _read_gray8(source)
    except DicomError as exc:
        if _has_marker(source):
            raise
        raise DicomError(f"{HEADERLESS}: {exc}") from exc


def _has_marker(source: bytes | str | Path) -> bool:
    if isinstance(source, bytes):
        return is_dicom(source[:HEADER_BYTES])
    with open(source, "rb") as file:
        return is_dicom(file.read(HEADER_BYTES))


def _read_gray8(source: bytes | str | Path) -> Gray8:
    from pydicom.pixels import pixel_array

    _check_pixel_count(_read(source, stop_before_pixels=True))  # before anything the size decides is allocated
    ds = _read(source, stop_before_pixels=False)
    if not any(tag in ds for tag in _PIXEL_DATA_TAGS):
        raise DicomError("DICOM without pixel data (not an image, e.g. a report or structured document)")
    syntax, plugin = _check_decodable(ds)
    try:
        try:
            with _quiet():
                frame = pixel_array(ds, index=0, decoding_plugin=plugin)  # the first frame only; YBR is returned as RGB
        except Exception:  # noqa: BLE001 - e.g. a 12-bit JPEG or 16-bit colour JPEG 2000, which Pillow cannot decode
            if not plugin:
                raise
            with _quiet():
                frame = pixel_array(ds, index=0)  # every installed plugin, in pydicom's order
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the file is unusable
        raise DicomError(f"DICOM pixel data ({syntax}) could not be decoded: {_first_line(exc)}{_extra_hint(ds, plugin)}") from exc
    photometric = str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip().upper()
    mode = f"DICOM {photometric} {int(ds.get('BitsStored') or ds.get('BitsAllocated') or 8)}-bit"
    said = {"modality": _text(ds, "Modality"), "view": _text(ds, "ViewPosition")}
    try:
        if photometric not in ("MONOCHROME1", "MONOCHROME2"):
            gray, spread = _colour(frame, ds, photometric)
            return Gray8(gray, mode, **said, colour_spread=spread)
        pixels = _monochrome(frame, ds)
    except DicomError:
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a window width of 0 or a broken LUT: unusable, not fatal
        raise DicomError(f"DICOM pixel values could not be mapped to gray levels: {_first_line(exc)}") from exc
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels  # MONOCHROME1 shows air white; flip so bright = dense
    return Gray8(pixels, mode, **said)


def _read(source: bytes | str | Path, *, stop_before_pixels: bool) -> Dataset:
    """The tags needed to map pixels (:func:`_wanted_tags`) of ``source``; the header read
    (``stop_before_pixels``) first checks a Deflated file's inflated size (:func:`_check_inflated_size`).
    Read with pydicom's ``force``, so a file without the Part-10 header is read too (its name alone sent it here,
    :func:`cxr_tune.data.imaging.decode_gray`); one with the header reads alike either way."""
    import pydicom

    try:
        with _quiet():  # the file meta read by _check_inflated_size too
            if stop_before_pixels:
                _check_inflated_size(source)
            ds = pydicom.dcmread(io.BytesIO(source) if isinstance(source, bytes) else source, force=True,
                                 specific_tags=_wanted_tags(), stop_before_pixels=stop_before_pixels)
        _name_found_syntax(ds)
        return ds
    except (FileNotFoundError, PermissionError, DicomError):
        raise  # an unopenable file is reported like any other; a DicomError already says why
    except Exception as exc:  # noqa: BLE001 - a malformed header is a per-file skip, whatever pydicom raises
        raise DicomError(f"unreadable DICOM header ({_first_line(exc)})") from exc


@contextmanager
def _quiet() -> Iterator[None]:
    """Without pydicom's UserWarnings, e.g. "Expected explicit VR, but found implicit VR": each is a header fault it
    reads past, printed as two lines naming its own source file between a command's lines. Where reading past it
    fails, the file is skipped with the reason; where it works, the pixels are the file's and nothing is left to say.
    (The filter is process-wide: the scan's threads may let one through, or leave it on, which quiets only pydicom.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        yield


def _name_found_syntax(ds: Dataset) -> None:
    """A file without the Part-10 header has no file meta to name its transfer syntax: name the encoding pydicom found
    its dataset in (implicit or explicit VR, little or big endian). Its pixels are uncompressed: compressed ones need
    the file meta to say how. A Part-10 file that names none is left so (:func:`_check_decodable` says so)."""
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "preamble", b"") is not None or ds.file_meta.get("TransferSyntaxUID"):
        return
    implicit, little = ds.original_encoding
    if implicit is not None and little is not None:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _pixel_limit() -> int | None:
    """Pillow's decompression-bomb limit (None: switched off), read at each call as Pillow does."""
    from PIL import Image

    return Image.MAX_IMAGE_PIXELS


def _check_pixel_count(header: Dataset) -> None:
    """Refuse a file whose header declares more pixels than Pillow accepts, as Pillow refuses such a
    PNG: decoding allocates what the header declares, whatever the file's own size."""
    limit = _pixel_limit()
    try:
        rows, columns = int(header.get("Rows") or 0), int(header.get("Columns") or 0)
        frames = int(header.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        raise DicomError("DICOM with an unreadable image size (Rows, Columns or Number of Frames)") from None
    if limit is not None and rows * columns * frames > limit:
        raise DicomError(f"DICOM image of {columns}x{rows} pixels x {frames} frame(s) exceeds Pillow's limit of "
                         f"{limit} pixels (a possible decompression bomb)")


#: A Deflated file's dataset may inflate to at most this many bytes per pixel Pillow accepts: a 16-bit
#: X-ray (2 bytes a pixel) at the pixel limit fits twice over, with room for its header.
INFLATED_BYTES_PER_PIXEL = 4
_INFLATE_CHUNK = 1 << 20


def _check_inflated_size(source: bytes | str | Path) -> None:
    """Refuse a Deflated Explicit VR file whose dataset inflates past the limit, counting it in chunks:
    pydicom inflates the whole dataset into memory at once, even to read only the header."""
    import zlib

    from pydicom.filereader import _read_file_meta_info, read_preamble  # dcmread's own steps (pydicom is pinned)
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    limit = _pixel_limit()
    with io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb") as file:
        read_preamble(file, True)  # without the Part-10 header (forced): no preamble, and no file meta to say Deflated
        meta = _read_file_meta_info(file)
        if limit is None or meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
            return
        limit *= INFLATED_BYTES_PER_PIXEL
        inflater, size, data = zlib.decompressobj(-zlib.MAX_WBITS), 0, file.read(_INFLATE_CHUNK)
        while data and not inflater.eof:
            size += len(inflater.decompress(data, _INFLATE_CHUNK))
            if size > limit:
                raise DicomError(f"Deflated DICOM inflates to more than {limit / 1e6:.0f} MB ({INFLATED_BYTES_PER_PIXEL} bytes "
                                 "per pixel of Pillow's limit; a possible decompression bomb)")
            data = inflater.unconsumed_tail or file.read(_INFLATE_CHUNK)


def _wanted_tags() -> list[int]:
    """Every group 0028 element, the pixel data and the frame offsets (all that maps pixels), and
    what says which kind of image it is (:data:`_KIND_TAGS`)."""
    from pydicom.datadict import DicomDictionary

    return [tag for tag in DicomDictionary if tag >> 16 == 0x0028] + [*_PIXEL_DATA_TAGS, *_EXTENDED_OFFSETS, *_KIND_TAGS]


def _text(ds: Dataset, keyword: str) -> str | None:
    """A short text element's value, stripped; None when absent or empty."""
    value = str(ds.get(keyword) or "").strip()
    return value or None


#: pydicom's decoding plugins tried first, where one of them is installed for a file's transfer syntax: Pillow (a
#: dependency) for the JPEG baseline, 8-bit JPEG extended and JPEG 2000 files it decodes, pydicom's own for RLE.
#: Left to itself pydicom takes the first installed plugin in its own order (GDCM, then pylibjpeg, then Pillow), so
#: the ``dicom`` extra changed a JPEG baseline file's pixels by a grey level here and there: a model would meet
#: other pixels on a machine with other decoders than the one it was trained on. The others decode only what
#: these cannot (JPEG Lossless, JPEG-LS, 12-bit JPEG, HTJ2K), the same file the same way wherever it decodes.
PREFERRED_PLUGINS = ("pillow", "pydicom")


def _check_decodable(ds: Dataset) -> tuple[str, str]:
    """The transfer syntax's name and the decoding plugin to try first ("" for pydicom's choice: an
    uncompressed file, or a syntax none of :data:`PREFERRED_PLUGINS` decodes), after checking pydicom
    can decode it here; else why not."""
    from pydicom.pixels import get_decoder

    uid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not uid:
        raise DicomError("DICOM without a transfer syntax in its file meta; cannot tell how its pixels are stored")
    name = f"{uid.name.split(',')[0]} ({uid})" if uid.is_transfer_syntax else str(uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        raise DicomError(f"DICOM transfer syntax {name} is not one pydicom can decode") from None
    if not decoder.is_available:
        raise DicomError(f"DICOM transfer syntax {name} cannot be decoded: {_install_hint(decoder.missing_dependencies)}")
    return name, next((plugin for plugin in PREFERRED_PLUGINS if plugin in decoder.available_plugins), "")


def transfer_syntax(source: bytes | str | Path) -> str:
    """The transfer syntax UID of the DICOM file ``source`` (how its pixels are stored), from its header; "" when it
    names none (such a file is not decoded at all)."""
    ds = _read(source, stop_before_pixels=True)
    return str((ds.file_meta if hasattr(ds, "file_meta") else {}).get("TransferSyntaxUID") or "")


#: Modules that decide which DICOM files this machine can decode (pydicom and its pylibjpeg codecs, GDCM).
DECODER_MODULES = ("pydicom", "pylibjpeg", "libjpeg", "openjpeg", "rle", "gdcm")


def decoders_installed() -> str:
    """Which of :data:`DECODER_MODULES` are importable here: a scan that skipped a file for want of a
    decoder is not reused once one is installed (the skip's own hint says to install it)."""
    from importlib.util import find_spec

    return ",".join(name for name in DECODER_MODULES if find_spec(name) is not None)


def _install_hint(missing: list[str]) -> str:
    """What to install, from pydicom's list of its unusable plugins (it knows which codec each syntax needs).

    The ``dicom`` extra pins pylibjpeg and its codecs, which cover every syntax pydicom 3.0 decodes; it is named
    by the package, so the hint works for an install from a wheel as for one from a checkout.
    """
    for entry in missing:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"
        label, _, needs = entry.partition(" - requires ")
        if label == "pylibjpeg" and needs:
            packages = [re.split(r"[<>=!~ ]", spec.strip(), maxsplit=1)[0] for spec in re.split(r",| and ", needs) if spec.strip()]
            return f"install {' and '.join(packages)} (pip install 'cxr_tune[dicom]')"
    return "install one of: " + "; ".join(missing) if missing else "no decoder for it is installed"


def _extra_hint(ds: Dataset, plugin: str) -> str:
    """``"; install ..."`` when Pillow failed on a file the ``dicom`` extra's decoders, not installed here, may read (a
    12-bit JPEG, a 16-bit colour JPEG 2000); "" otherwise: pydicom's own RLE decoder failing means a corrupt file."""
    from pydicom.pixels import get_decoder

    missing = get_decoder(ds.file_meta.TransferSyntaxUID).missing_dependencies
    if plugin != "pillow" or not any(entry.startswith("pylibjpeg ") for entry in missing):
        return ""
    return f"; {_install_hint(missing)}"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    # pydicom's "all plugins failed" message says why on its second line
    return " ".join(lines[:2])[:200] if lines else type(exc).__name__


def _row_bands(frame: np.ndarray) -> list[slice]:
    rows = max(1, BAND_PIXELS // max(frame.shape[1], 1))
    return [slice(top, top + rows) for top in range(0, frame.shape[0], rows)]


def _voi_kind(ds: Dataset) -> str | None:
    """``"lut"``, ``"window"`` or None: which VOI step the file asks for (pydicom's own precedence)."""
    sequence = ds.get("VOILUTSequence")
    if sequence and sequence[0].get("LUTDescriptor") is not None and sequence[0].get("LUTData") is not None:
        return "lut"
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        return "window"
    return None


def _has_modality_step(ds: Dataset) -> bool:
    if ds.get("ModalityLUTSequence"):
        return True
    if "RescaleSlope" in ds and "RescaleIntercept" in ds:
        return (float(ds.RescaleSlope), float(ds.RescaleIntercept)) != (1.0, 0.0)
    return False


def _monochrome(frame: np.ndarray, ds: Dataset) -> np.ndarray:
    """Modality LUT, then VOI LUT or window (or min-max), to uint8; see the module docstring."""
    from pydicom.pixels import apply_modality_lut, apply_voi, apply_windowing

    voi = _voi_kind(ds)
    if voi is None and frame.dtype == np.uint8 and ds.get("BitsStored") == 8 and not _has_modality_step(ds):
        return frame  # already 8-bit display values: kept as they are, like an 8-bit PNG (1-bit data is scaled)

    def display(rows: np.ndarray) -> np.ndarray:
        values = apply_modality_lut(rows, ds)
        if voi == "lut":
            # LUT inputs are integers; a rescale makes them float64 even when they are whole numbers
            return apply_voi(np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values, ds, index=0)
        if voi == "window":
            return apply_windowing(values, ds, index=0)  # index 0: the first window when there are several
        return values

    if voi == "lut":
        _widen_8bit_lut(ds)
    bands = _row_bands(frame)
    if voi is not None:
        lo, hi = _voi_output_range(ds, voi)
    else:
        lo = min(float(display(frame[band]).min()) for band in bands)
        hi = max(float(display(frame[band]).max()) for band in bands)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = np.empty(frame.shape, dtype=np.uint8)
    for band in bands:
        # Same expression as imaging._scale_high_bit; the clip only guards a LUT entry outside its range
        out[band] = np.clip(np.round((display(frame[band]).astype(np.float64) - lo) * scale), 0, 255)
    return out


def _widen_8bit_lut(ds: Dataset) -> None:
    """Declare an 8-bit VOI LUT as 16-bit: same entries, but pydicom 3.0.2 then indexes it correctly.

    Its ``apply_voi`` builds the table indices in the LUT's entry type, so with 8-bit entries every
    input of 256 or more wraps around (a 12-bit CR with a 4096-entry, 8-bit LUT comes out garbled).
    The entries are read as 16-bit words either way, so only the index type changes.
    """
    item = ds.VOILUTSequence[0]
    entries, first_input, bits = item.LUTDescriptor[:3]
    if bits == 8:
        item.LUTDescriptor = [entries, first_input, 16]


def _voi_output_range(ds: Dataset, voi: str) -> tuple[float, float]:
    """The values the VOI step can output, which become black and white.

    Found by running pydicom's own step on its extreme inputs rather than restating its rules: the
    whole input domain of a VOI LUT, and -inf/+inf for a window (they land on its lowest and highest
    output, for LINEAR, LINEAR_EXACT and SIGMOID alike).
    """
    from pydicom.pixels import apply_voi, apply_windowing

    if voi == "lut":
        entries, first_input = ds.VOILUTSequence[0].LUTDescriptor[:2]
        domain = np.arange(first_input, first_input + (entries or 1 << 16), dtype=np.int64)
        outputs = apply_voi(domain, ds, index=0)
    else:
        with np.errstate(over="ignore"):  # SIGMOID takes exp(inf) = inf, which is the intended limit
            outputs = apply_windowing(np.array([-np.inf, np.inf]), ds, index=0)
    return float(np.min(outputs)), float(np.max(outputs))


def _colour(frame: np.ndarray, ds: Dataset, photometric: str) -> tuple[np.ndarray, float]:
    """RGB (and YBR, which pydicom returns as RGB, and PALETTE COLOR) as Pillow's luma of the RGB,
    and how far from gray its colours are (on every few rows and columns, as for other files)."""
    from PIL import Image
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        frame = apply_color_lut(frame, ds)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise DicomError(f"DICOM with photometric interpretation {photometric} is not supported")
    if frame.dtype != np.uint8:
        # Deeper colour: one min-max over all three channels keeps their balance, then 8-bit luma
        lo, hi = float(frame.min()), float(frame.max())
        frame = np.round((frame.astype(np.float64) - lo) * (255.0 / (hi - lo) if hi > lo else 0.0)).astype(np.uint8)
    step = max(1, max(frame.shape[:2]) // input_checks.COLOUR_PROBE)
    gray = np.asarray(Image.fromarray(np.ascontiguousarray(frame), "RGB").convert("L"), dtype=np.uint8)
    return gray, input_checks.colour_spread(frame[::step, ::step])
