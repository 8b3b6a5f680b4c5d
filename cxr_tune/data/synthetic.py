"""A built-in SYNTHETIC chest X-ray set, so the project runs end to end with no download.

Each image is drawn procedurally: a body, two dark lung fields with vessel texture, ribs, the
spine and the heart shadow, the diaphragm, exposure differences and noise. PNEUMONIA adds one to
three patchy opacities of random size, place and contrast inside the lungs; some are faint enough
that a small CNN cannot be sure, so validation AUC lands well below 1.0. A patient gets one to four
images that share their anatomy. About 74 % of images are PNEUMONIA, like the real training split.

Generation is deterministic in ``seed``; the folder is written in the Kermany layout with Kermany
file names (``personNNNN_bacteria_MMMM.jpeg``, ``IM-NNNN-MMMM.jpeg``) and a ``SYNTHETIC.json``
marker, so every report that uses it says SYNTHETIC. Each seed numbers its patients apart from every
other seed's, so a draw with another seed can stand in for a second site (``--val-data``).
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from cxr_tune import storage
from cxr_tune.errors import UserError

GENERATOR_VERSION = 3
PATIENTS_PER_SEED = 100_000  # patient numbers of seed S start at S * 100,000 (seed 0's names are those of every earlier version)
DEFAULT_N = 1500
MIN_N = 20  # fewer cannot be split into train and test by patient
#: The file that marks a folder as the SYNTHETIC set, so every report about it says SYNTHETIC.
SYNTHETIC_MARKER = "SYNTHETIC.json"
PNEUMONIA_FRACTION = 0.74
TEST_FRACTION = 0.15


@dataclass(frozen=True)
class _Anatomy:
    """What stays the same across one patient's images."""

    width: int
    height: int
    body_rx: float
    lung_rx: float
    lung_ry: float
    lung_gap: float
    heart_size: float
    rib_phase: float
    texture_seed: int


def synthetic_root(cache_dir: str, n: int, seed: int) -> str:
    return storage.join(cache_dir, "synthetic", f"v{GENERATOR_VERSION}-n{n}-seed{seed}")


def ensure_synthetic(cache_dir: str, n: int = DEFAULT_N, seed: int = 0, *, progress: bool = False) -> str:
    """The synthetic set for ``(n, seed)`` under the cache, generated on first use (``progress``: with
    a line before and after the draw, which takes seconds).

    A cache on object storage (``--cache-dir s3://...``, the usual cluster setup) gets the set
    generated in a local scratch folder and uploaded, marker last, so every node reads the same
    files from the cache; an upload cut short has no marker and is made again. A local cache that
    cannot be written and holds no such set (a read-only shared cache) is one line before the draw.
    """
    root = synthetic_root(cache_dir, n, seed)
    if storage.exists(storage.join(root, SYNTHETIC_MARKER)):
        return root
    try:
        storage.check_writable(root, "the SYNTHETIC set's folder")
    except UserError as exc:
        raise UserError(f"{exc}, and the image cache '{cache_dir}' holds no draw of {n} images (seed {seed}) to reuse; "
                        "pass --cache-dir with a folder that can be written") from None
    if progress:
        print(f"Drawing the built-in SYNTHETIC set: {n} images (once; later runs reuse it) ...", flush=True)
    started = time.perf_counter()
    root = _draw(root, n, seed)
    if progress:
        print(f"SYNTHETIC set drawn in {time.perf_counter() - started:.1f} s: {root}", flush=True)
    return root


def _draw(root: str, n: int, seed: int) -> str:
    """Draw the set into ``root``: directly in a local folder, else through a local scratch folder (see :func:`ensure_synthetic`)."""
    if not storage.is_uri(root):
        return synthesize(root, n=n, seed=seed, replace_partial=True)
    with storage.scratch_folder("synthetic") as scratch:  # a draw killed here leaves it; the next draw removes it
        local = Path(synthesize(str(Path(scratch) / "set"), n=n, seed=seed))
        storage.remove_tree(root)  # a partial upload from an earlier attempt
        for split in sorted(p for p in local.iterdir() if p.is_dir()):
            storage.copy(str(split), storage.join(root, split.name))
        storage.copy(str(local / SYNTHETIC_MARKER), storage.join(root, SYNTHETIC_MARKER))
    return root


def synthesize(out: str, *, n: int = DEFAULT_N, seed: int = 0, replace_partial: bool = False) -> str:
    """Write ``n`` synthetic images to ``out`` (Kermany layout); atomic: all or nothing."""
    if n < MIN_N:
        raise UserError(f"--n {n} is too small for a train/test split by patient; use at least {MIN_N}")
    target = Path(storage.resolve(out))
    if storage.is_uri(out):
        raise UserError(f"'{out}': synthesize writes to a local folder; copy it to object storage afterwards")
    if target.exists() and any(target.iterdir()):
        if not (replace_partial and not (target / SYNTHETIC_MARKER).exists()):
            raise UserError(f"'{out}' already exists and is not empty; choose a new folder")
        shutil.rmtree(target)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        _write_all(tmp, n=n, seed=seed)
        (tmp / SYNTHETIC_MARKER).write_text(json.dumps({
            "synthetic": True,
            "generator_version": GENERATOR_VERSION,
            "n": n,
            "seed": seed,
            "note": "Procedurally drawn images, not real patients. Never report results on them as clinical.",
        }, indent=2))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            tmp.rename(target)
        except OSError:  # another process committed its draw there first (two commands on a new cache)
            if not (replace_partial and (target / SYNTHETIC_MARKER).exists()):
                raise UserError(f"'{out}' was written by another process while this one drew the set; choose a new folder") from None
            # the same n and seed draw the same bytes: use theirs
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


#: (label, split) of the first patients when a small draw misses one: two of each class to train on
#: (one can be carved off for validation) and one of each to test.
_COVER = ((0, "train"), (1, "train"), (0, "train"), (1, "train"), (0, "test"), (1, "test"))


def _plan(n: int, seed: int) -> list[tuple[int, int, int, str]]:
    """(patient, image index, label, split) for every image, patients holding 1-4 images.

    A small set can draw no test pneumonia, or one normal patient to train on, and then be refused
    by the split it was made for; its first patients then take the classes and folders of
    :data:`_COVER` (a draw that covers them, the default set's among them, is kept as drawn)."""
    rng = np.random.default_rng([seed, 0])
    plan: list[tuple[int, int, int, str]] = []
    patient = 0
    while len(plan) < n:
        patient += 1
        label = int(rng.random() < PNEUMONIA_FRACTION)
        split = "test" if rng.random() < TEST_FRACTION else "train"
        for k in range(min(int(rng.integers(1, 5)), n - len(plan))):
            plan.append((patient, k + 1, label, split))
    drawn = Counter((label, split) for _, label, split in {(p, label, split) for p, _, label, split in plan})  # patients per class and folder
    if patient < len(_COVER) or all(drawn[key] >= count for key, count in Counter(_COVER).items()):
        return plan
    forced = dict(enumerate(_COVER, start=1))
    return [(p, k, *forced.get(p, (label, split))) for p, k, label, split in plan]


def _write_all(folder: Path, *, n: int, seed: int) -> None:
    for split in ("train", "test"):
        for name in ("NORMAL", "PNEUMONIA"):
            (folder / split / name).mkdir(parents=True, exist_ok=True)

    def write(item: tuple[int, int, int, str]) -> None:
        patient, k, label, split = item
        pixels = draw_image(seed, patient, k, label)
        number = patient + seed * PATIENTS_PER_SEED  # two draws never share a patient: one can be another's site sample
        if label:
            kind = "bacteria" if patient % 3 else "virus"
            name = f"PNEUMONIA/person{number:04d}_{kind}_{k:04d}.jpeg"
        else:
            name = f"NORMAL/IM-{number:04d}-{k:04d}.jpeg"
        Image.fromarray(pixels, mode="L").save(folder / split / name, quality=92)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, _plan(n, seed)))


def _anatomy(rng: np.random.Generator) -> _Anatomy:
    return _Anatomy(
        width=int(rng.integers(200, 280)),
        height=int(rng.integers(200, 280)),
        body_rx=float(rng.uniform(0.78, 0.92)),
        lung_rx=float(rng.uniform(0.24, 0.31)),
        lung_ry=float(rng.uniform(0.48, 0.6)),
        lung_gap=float(rng.uniform(0.33, 0.42)),
        heart_size=float(rng.uniform(0.17, 0.26)),
        rib_phase=float(rng.uniform(0, 1)),
        texture_seed=int(rng.integers(0, 2**31)),
    )


def _soft(distance: np.ndarray, edge: float = 0.04) -> np.ndarray:
    """1 inside (distance < 1), 0 outside, with a soft edge."""
    return 1.0 / (1.0 + np.exp((distance - 1.0) / edge))


def draw_image(seed: int, patient: int, k: int, label: int) -> np.ndarray:
    """One synthetic chest X-ray as a uint8 array; deterministic in its arguments."""
    anatomy = _anatomy(np.random.default_rng([seed, 1, patient]))
    rng = np.random.default_rng([seed, 2, patient, k])
    h, w = anatomy.height, anatomy.width
    # Positioning differs a little between a patient's images.
    dx, dy, scale = rng.normal(0, 0.03), rng.normal(0, 0.03), rng.uniform(0.95, 1.05)
    y, x = np.mgrid[-1 : 1 : complex(0, h), -1 : 1 : complex(0, w)]
    x, y = (x - dx) / scale, (y - dy) / scale

    image = np.full((h, w), 0.08)
    body = _soft(np.hypot(x / anatomy.body_rx, y / 1.05))
    image += 0.42 * body
    lungs = np.zeros_like(image)
    for side in (-1, 1):
        cx = side * anatomy.lung_gap
        lung = _soft(np.hypot((x - cx) / anatomy.lung_rx, (y + 0.05) / anatomy.lung_ry))
        lungs = np.maximum(lungs, lung)
    image -= 0.26 * lungs
    texture_rng = np.random.default_rng(anatomy.texture_seed)
    vessels = gaussian_filter(texture_rng.normal(0, 1, (h, w)), sigma=w / 60)
    image += 0.05 * lungs * vessels / (vessels.std() + 1e-6)
    for rib in range(9):
        centre = -0.62 + rib * 0.16 + 0.04 * anatomy.rib_phase
        curve = centre + 0.35 * x**2
        image += 0.05 * body * np.exp(-(((y - curve) / 0.022) ** 2)) * (np.abs(x) > 0.08)
    image += 0.14 * _soft(np.abs(x) / 0.11, edge=0.15) * body  # spine and mediastinum
    heart = _soft(np.hypot((x - 0.12) / (anatomy.heart_size * 1.35), (y - 0.25) / anatomy.heart_size), edge=0.12)
    image += 0.16 * heart
    image += 0.25 * body * _soft(-(y - 0.52 - 0.12 * x**2) / 0.05, edge=0.5) * (y > 0.45)  # diaphragm

    if label:
        image += _opacities(rng, x, y, lungs, anatomy)
    else:
        image += _benign_spots(rng, x, y, lungs)

    # Exposure and contrast differ between machines and technicians; noise differs per film.
    image = (image - 0.3) * rng.uniform(0.8, 1.25) + 0.3 + rng.normal(0, 0.04)
    image += rng.normal(0, rng.uniform(0.015, 0.04), image.shape)
    image = gaussian_filter(image, sigma=0.6)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def _opacities(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, lungs: np.ndarray, anatomy: _Anatomy) -> np.ndarray:
    """Patchy consolidations: blobs of random size, place and contrast, broken up by noise."""
    out = np.zeros_like(x)
    h, w = x.shape
    for _ in range(int(rng.integers(1, 4))):
        side = rng.choice([-1, 1])
        cx = side * anatomy.lung_gap + rng.uniform(-0.6, 0.6) * anatomy.lung_rx
        cy = -0.05 + rng.uniform(-0.7, 0.7) * anatomy.lung_ry
        radius = rng.uniform(0.09, 0.25)
        blob = np.exp(-(np.hypot(x - cx, y - cy) / radius) ** 2)
        patches = gaussian_filter(rng.normal(0, 1, (h, w)), sigma=w / 45)
        patchy = np.clip(0.6 + 0.5 * patches / (patches.std() + 1e-6), 0, 1)
        contrast = rng.choice([rng.uniform(0.05, 0.1), rng.uniform(0.1, 0.3)], p=[0.25, 0.75])
        out += contrast * blob * patchy * lungs
    return out


def _benign_spots(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Small bright spots (vessels seen end-on, nipple shadows) that a model must not call disease."""
    out = np.zeros_like(x)
    for _ in range(int(rng.integers(0, 3))):
        cx, cy = rng.uniform(-0.6, 0.6), rng.uniform(-0.5, 0.4)
        out += rng.uniform(0.03, 0.08) * np.exp(-(np.hypot(x - cx, y - cy) / rng.uniform(0.03, 0.07)) ** 2) * lungs
    return out
