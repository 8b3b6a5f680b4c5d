"""Time the image-cache build through Ray Data against a plain single-process Pillow loop, and a cache hit.

What is timed is the data folder's training split (``train/``: what a search trains on and carves
its validation from), never its ``val/`` (the external set a search selects on) or ``test/``.
Both paths decode the same files with the same function (:func:`decode_gray`) at the same size.
The Ray Data build is timed twice in one Ray session: cold (the first Data job: worker processes
start and import) and warm; the plain loop runs before and after them, to see drift on a noisy
machine. A cache hit is the whole ``prepare`` path on unchanged data (folder scan, manifest and
cache lookup) in a fresh process, as a user runs it.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from cxr_tune.bench.common import other_data, real_data, results_folder, write_result
from cxr_tune.data.imaging import try_decode_gray
from cxr_tune.data.sources import Source, build_manifest


def plain_loop(paths: list[str], size: int) -> float:
    started = time.perf_counter()
    for path in paths:
        try_decode_gray(Path(path).read_bytes(), size, name=path)
    return time.perf_counter() - started


def training_split(source: Source) -> pd.DataFrame:
    """The folder's ``train/`` rows (never ``val/``, the external set, or ``test/``); a scan without train images stops earlier."""
    return source.manifest[source.manifest["split"] == "train"]


def scope_line(description: str, n: int, size: int, cpus: int) -> str:
    """The summary's first line: what was timed, on which data (SYNTHETIC says so, as every report names data)."""
    return f"Training split (train/) of the {description}: {n} distinct images, decoded to {size}x{size} grayscale; Ray with {cpus} CPUs."


def run(data: str | None, size: int, full_res_images: int = 0, out: str | None = None) -> None:
    """Caches, scans and re-encoded copies go to a temporary folder, removed at the end (also on an error or Ctrl-C):
    at full resolution they take about 100 KB an image."""
    folder = results_folder("data", out, other_data(data))
    root = real_data(data)
    with tempfile.TemporaryDirectory(prefix="cxr-bench-data-", ignore_cleanup_errors=True) as work:
        _run(root, size, full_res_images, Path(work), folder)


def _run(root: str, size: int, full_res_images: int, work: Path, folder: Path) -> None:
    import ray

    from cxr_tune.data.cache import prepare_cache
    from cxr_tune.ray_session import ray_session

    source = build_manifest(root, str(work / "cache"))
    train = training_split(source)
    paths = list(train.drop_duplicates("content_hash")["path"])
    n = len(paths)
    plain_before = plain_loop(paths, size)
    started = time.perf_counter()
    with ray_session():
        ray_start = time.perf_counter() - started
        cpus = int(ray.cluster_resources()["CPU"])
        cold = prepare_cache(train, size, str(work / "cold")).build_seconds
        warm = prepare_cache(train, size, str(work / "warm")).build_seconds
        keep = full_res_images or n
        full = _full_resolution(paths[:: max(1, n // keep)][:keep], work / "full", size)
        prepare_cache(source.manifest, size, str(work / "warm"))  # not timed: `data prepare` looks up the whole folder's cache
    plain_after = plain_loop(paths, size)
    plain = (plain_before + plain_after) / 2
    hit = _cache_hit_seconds(root, size, str(work / "warm"))
    summary = [
        scope_line(source.description, n, size, cpus),
        "",
        "| path | seconds | images/s | speed vs plain loop |",
        "|---|---:|---:|---:|",
        f"| plain single-process Pillow loop (mean of before/after: {plain_before:.2f} s, {plain_after:.2f} s) | {plain:.2f} | {n / plain:.0f} | 1.00 |",
        f"| Ray Data build, cold (first Data job in the session) | {cold:.2f} | {n / cold:.0f} | {plain / cold:.2f} |",
        f"| Ray Data build, warm | {warm:.2f} | {n / warm:.0f} | {plain / warm:.2f} |",
        f"| same, {full['n']} of the images re-encoded at {FULL_RES[0]}x{FULL_RES[1]} px like the original download: plain loop | {full['plain']:.2f} | {full['n'] / full['plain']:.0f} | 1.00 |",
        f"| same, full resolution: Ray Data build (warm) | {full['ray']:.2f} | {full['n'] / full['ray']:.0f} | {full['plain'] / full['ray']:.2f} |",
        "",
        f"Ray start-up (not in the builds above): {ray_start:.1f} s. A build also writes the Parquet cache; the plain loop only decodes.",
        "Cold vs warm: the first Ray Data job of a session also starts and imports its worker processes and Ray Data's own actors;"
        " a search pays that once, before its first trial.",
        f"Cache hit, whole `python -m cxr_tune.data prepare` in a new process (imports, scan of the whole data folder, manifest, lookup): {hit['process']:.2f} s; "
        f"the lookup itself inside the process: {hit['lookup']:.3f} s. No Ray is started on a hit.",
    ]
    write_result("data_cache", "Ray Data image cache vs a plain Pillow loop", summary, {
        "data": source.description, "split": "train", "images": n, "image_size": size, "ray_cpus": cpus, "plain_s": [plain_before, plain_after],
        "ray_cold_s": cold, "ray_warm_s": warm, "ray_start_s": ray_start,
        "ratio_cold": plain / cold, "ratio_warm": plain / warm, "cache_hit": hit, "full_resolution": full,
    }, folder)


FULL_RES = (1400, 1100)


def _full_resolution(paths: list[str], folder: Path, size: int) -> dict[str, float]:
    """The original download is grayscale at 400-2,900 px; decoding there is the heavy part."""
    from PIL import Image

    from cxr_tune.data.cache import prepare_cache

    for i, path in enumerate(paths):
        cls = "PNEUMONIA" if "PNEUMONIA" in path else "NORMAL"
        target = folder / "train" / cls / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).convert("L").resize(FULL_RES, Image.Resampling.BICUBIC).save(target, quality=90)
    manifest = build_manifest(str(folder), str(folder.parent / "full-cache")).manifest
    plain = plain_loop(list(manifest["path"]), size)
    prepare_cache(manifest, size // 2, str(folder.parent / "full-warmup"))  # warm the Data workers
    ray_seconds = prepare_cache(manifest, size, str(folder.parent / "full-cache")).build_seconds
    return {"n": len(manifest), "plain": plain, "ray": ray_seconds}


def _cache_hit_seconds(root: str, size: int, cache_dir: str) -> dict[str, float]:
    from cxr_tune.data.cache import find_cache

    build_manifest(root, cache_dir)  # the hit path assumes the manifest was cached by the earlier build
    started = time.perf_counter()
    manifest = build_manifest(root, cache_dir).manifest
    assert find_cache(cache_dir, manifest, size) is not None
    lookup = time.perf_counter() - started
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cxr_tune.data", "prepare", root, "--image-size", str(size), "--cache-dir", cache_dir],
                          capture_output=True, text=True, check=True)
    process = time.perf_counter() - started
    assert "Reused image cache" in done.stdout, done.stdout
    return {"lookup": lookup, "process": process}
