"""Why an input may not be an image like those the model learned from: said beside its score.

A CNN scores anything it is given, a colour photo of a screen or a blank frame included, and its
probability looks as sure as any other. ``predict`` therefore names each image that differs from
the training X-rays in a way the file itself shows, with the reason, so that a person checks it
before trusting its score. The checks see the file, not the patient: an image that passes them can
still be unlike the training set (an adult, another hospital's device), which only a labelled
sample from the new site measures (``predict`` on NORMAL/PNEUMONIA folders, ``adapt``).

The limits, measured on the 5,531 images of the training split and half A of the official test
split (``../shared/data/chest_xray_224``, 2026-12-05): their colour spread is 0.0 for every image
(gray stored as RGB); the standard deviation of their gray levels at 64 px, as
:func:`cxr_tune.data.imaging.decode_gray` makes them, is at least 18.7 (median 55.8). ``predict``
names none of them, nor does ``data inspect``.

Call: ``notes(width=w, height=h, size=64, colour_spread=0.0, pixels=square)`` -> ``[]`` or reasons (:class:`Note`: each
a ``str``, with its ``short`` form for a caption).
"""

from __future__ import annotations

import numpy as np

#: Mean difference, in gray levels, between the brightest and darkest colour channel of each pixel
#: above which an image is a colour picture (X-rays are gray: 0 on the training images).
COLOUR_SPREAD_LIMIT = 8.0

#: Standard deviation of the model's square input, in gray levels, below which the image is
#: nearly one flat gray (blank, black or burnt out): well under the real images' lowest.
BLANK_STD_LIMIT = 5.0
REAL_LOWEST_STD = 18.7  # measured, see above

#: About how many pixels a side the colour spread is measured on (every few rows and columns of a
#: larger image): a colour cast is no finer than that.
COLOUR_PROBE = 128

#: The smallest square input a model takes (``--image-size``, ``image_size``): a smaller image is
#: enlarged whatever the model, so a data folder's scan names it before any model exists.
MIN_SIZE = 16
MAX_SIZE = 1024  # the largest: the cache, HParams, the bench and a model.json all take MIN_SIZE..MAX_SIZE

#: DICOM modalities of plain radiographs (computed and digital radiography), as in the training set.
RADIOGRAPH_MODALITIES = ("CR", "DX")

#: DICOM ViewPosition values of a lateral (side) view; the training X-rays are all frontal (AP/PA).
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD")


class Note(str):
    """One reason, in words: the whole of it (the ``str``, as predict's list and ``--csv`` give it) and ``short``, its first
    words alone, as an ``--explain`` caption gives it (``colour image``): ``Note("colour image", "its colour channels ...")``
    reads "colour image (its colour channels ...)". Without ``why`` the short form is the whole reason."""

    short: str

    def __new__(cls, short: str, why: str = "") -> Note:
        note = super().__new__(cls, f"{short} ({why})" if why else short)
        note.short = short
        return note


def notes(*, width: int, height: int, size: int | None, colour_spread: float, pixels: np.ndarray,
          modality: str | None = None, view: str | None = None) -> list[Note]:
    """The reasons, in words, why one image may not be like the training X-rays (each a :class:`Note`); empty when none.

    ``width``/``height``: the stored image's size; ``size``: the model's input side (None: no model
    yet, as when a data folder is scanned: then the limit is :data:`MIN_SIZE`);
    ``colour_spread``: :data:`COLOUR_SPREAD_LIMIT`'s measure;
    ``pixels``: the gray image (the ``(size, size)`` input the model scores, or a sample of the
    file's pixels); ``modality``/``view``: the DICOM Modality and ViewPosition, when the file is DICOM.
    """
    found = []
    if modality and modality.upper() not in RADIOGRAPH_MODALITIES:
        found.append(Note(f"DICOM modality {modality}", f"the model learned from plain radiographs: {'/'.join(RADIOGRAPH_MODALITIES)}"))
    if view and view.upper() in LATERAL_VIEWS:
        found.append(Note("lateral view", f"DICOM ViewPosition {view}; the model learned from frontal views"))
    if colour_spread > COLOUR_SPREAD_LIMIT:
        found.append(Note("colour image", f"its colour channels differ by {colour_spread:.0f} gray levels on average; X-rays are gray"))
    if size is not None and min(width, height) < size:
        found.append(Note(f"{width}x{height} px, smaller than the model's {size}x{size} px input: enlarged, so blurred"))
    if size is None and min(width, height) < MIN_SIZE:
        found.append(Note(f"{width}x{height} px, smaller than the smallest model input ({MIN_SIZE}x{MIN_SIZE} px): enlarged, so blurred"))
    spread = float(np.std(pixels))
    if spread < BLANK_STD_LIMIT:
        found.append(Note("nearly blank", f"its gray levels have a standard deviation of {spread:.1f}; real chest X-rays' lowest is {REAL_LOWEST_STD}"))
    return found


def colour_spread(rgb: np.ndarray) -> float:
    """Mean over pixels of (brightest - darkest channel) of an ``(h, w, 3)`` uint8 image: 0 for gray."""
    channels = rgb.astype(np.int16)
    return float((channels.max(axis=-1) - channels.min(axis=-1)).mean())
