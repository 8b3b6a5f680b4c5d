"""The Ray Data image cache: decode, grayscale and resize every image once, keep it as Parquet.

Key: a fingerprint of the files' contents (their hashes), the image size and
:data:`~cxr_tune.data.imaging.PREPROCESS_VERSION`, so a moved folder still hits and a changed
file, size or pixel pipeline misses. Byte-identical files are decoded and stored once.

Layout of one cache folder (``<cache>/images/<size>px-<key>/``)::

    data-<build id>/   Parquet files of one build
    meta.json          the commit: names the data folder readers use, written last, once

A build writes its Parquet files under its own ``data-<build id>/`` and commits by creating
``meta.json`` in one write that never replaces an existing one. Nothing is renamed (object stores
cannot rename folders) and no committed data is ever deleted: a builder that finds ``meta.json``
already there (another process won the race) uses that cache and deletes only its own folder. A
``data-*`` folder that no ``meta.json`` names is an interrupted build and is never read.

A build in which a file could not be read at all (gone since the scan, permission denied, a store's error) is
used by the run that made it but never committed, and deleted when that command ends: the next run builds again and
reads that file again, instead of leaving it out for good. A file whose bytes do not decode is a failure of those bytes, committed with the cache.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxr_tune import storage
from cxr_tune.errors import UserError
from cxr_tune.data.imaging import PREPROCESS_VERSION, RESIZE_METHOD, describe_failure, try_decode_gray
from cxr_tune.data.input_checks import MAX_SIZE, MIN_SIZE
from cxr_tune.ray_session import wait_for_free_cpu

META = "meta.json"
CACHE_FORMAT = 3  # layout (2: raw image bytes in a binary column; 3: data-<build id>/ named by meta.json)
# Pixels one decoding task holds at most: its process peaks at a few times this (measured: a quarter of 20,000
# images at 224 px, 240 MiB, took 1.16 GB). Large enough that the real data's caches (5,502 images, 64-224 px, on
# 2 CPUs) keep the four blocks they were built with.
BLOCK_BYTES = 128 * 2**20


@dataclass(frozen=True)
class ImageCache:
    """A committed cache folder and what its build found."""

    path: str
    image_size: int
    n_images: int
    failures: pd.DataFrame  # content_hash, path, reason, retry: files that passed the scan but not decoding (retry: not even read)
    reused: bool
    build_seconds: float
    data_name: str = "data"  # the folder meta.json names, inside ``path``
    saved: bool = True  # False: a file could not be read, so the build is this run's only (see the module's docstring)

    @property
    def data_path(self) -> str:
        """The Parquet folder every reader opens (the one the commit named)."""
        return storage.join(self.path, self.data_name)


def cache_key(manifest: pd.DataFrame, image_size: int) -> str:
    """Fingerprint of (file contents, image size, preprocessing version)."""
    digest = hashlib.sha256(f"v{PREPROCESS_VERSION}|format{CACHE_FORMAT}|size{image_size}|".encode())
    for content_hash in sorted(set(manifest["content_hash"])):
        digest.update(content_hash.encode())
    return digest.hexdigest()[:24]


def cache_path(cache_dir: str, manifest: pd.DataFrame, image_size: int) -> str:
    return storage.join(cache_dir, "images", f"{image_size}px-{cache_key(manifest, image_size)}")


def find_cache(cache_dir: str, manifest: pd.DataFrame, image_size: int) -> ImageCache | None:
    """The committed cache for these inputs, or None. Reads one small JSON file, decodes nothing."""
    path = cache_path(cache_dir, manifest, image_size)
    meta_path = storage.join(path, META)
    if not storage.exists(meta_path):
        return None
    return _from_meta(path, image_size, storage.read_json(meta_path), reused=True)


def _from_meta(path: str, image_size: int, meta: dict, *, reused: bool, saved: bool = True) -> ImageCache:
    failures = pd.DataFrame(meta["failures"], columns=["content_hash", "path", "reason", "retry"])
    return ImageCache(
        path=path,
        image_size=image_size,
        n_images=int(meta["n_images"]),
        failures=failures.assign(retry=failures["retry"].fillna(False).astype(bool)),  # caches built before it: False
        reused=reused,
        build_seconds=float(meta["build_seconds"]),
        data_name=str(meta.get("data", "data")),
        saved=saved,
    )


def parquet_files(cache: ImageCache) -> int:
    """How many Parquet files the cache's build wrote: one per block, and :func:`prepare_cache` makes two per CPU
    Ray had (more for a large cache: :func:`build_blocks`). A run reads its training images in the files' order, so
    a cache built with another CPU count trains in another order."""
    return len(storage.glob(cache.data_path, "*.parquet"))


def check_buildable(cache_dir: str, image_size: int) -> None:
    """One line, before Ray starts, when a cache must be built in a folder that cannot be written (a
    read-only shared cache that does not hold these images at this size)."""
    if not storage.is_uri(cache_dir):
        try:
            storage.check_writable(cache_dir, "the image cache")
        except UserError as exc:
            raise UserError(f"{exc}, and it holds no {image_size} px copy of these images to reuse; "
                            "pass --cache-dir with a folder that can be written") from None


def prepare_cache(manifest: pd.DataFrame, image_size: int, cache_dir: str) -> ImageCache:
    """Return the cache for ``manifest`` at ``image_size``, building it with Ray Data if missing.

    Needs a running Ray (see :func:`cxr_tune.ray_session.ray_session`).
    """
    check_image_size(image_size)
    found = find_cache(cache_dir, manifest, image_size)
    if found is not None:
        return found
    check_buildable(cache_dir, image_size)
    import ray.data

    start = time.perf_counter()
    final = cache_path(cache_dir, manifest, image_size)
    data_name = f"data-{uuid.uuid4().hex[:12]}"
    data_path = storage.join(final, data_name)
    unique = manifest.drop_duplicates("content_hash")[["content_hash", "path"]].reset_index(drop=True)
    committed: bool | None = False
    try:
        blocks = build_blocks(len(unique), image_size, int(ray.cluster_resources().get("CPU", 1)))
        wait_for_free_cpu(1.0, "build the image cache")  # each decoding task takes a whole CPU
        chunks = [unique.iloc[i::blocks].reset_index(drop=True) for i in range(blocks)]
        (
            ray.data.from_pandas(chunks)
            .map_batches(decode_batch, fn_kwargs={"size": image_size}, batch_format="numpy", batch_size=None)
            .write_parquet(data_path, mode="overwrite")
        )
        failures = _failures(data_path, unique)
        seconds = time.perf_counter() - start
        meta = {
            "cache_format": CACHE_FORMAT,
            "data": data_name,
            "image_size": image_size,
            "preprocess_version": PREPROCESS_VERSION,
            "resize": RESIZE_METHOD,
            "n_images": int(len(unique) - len(failures)),
            "failures": failures.to_dict(orient="records"),
            "build_seconds": round(seconds, 3),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        committed = None  # unknown while the commit runs: a failed PUT may still have landed
        if failures["retry"].any():  # this run's only (kept: committed is None), so the next one reads the unread files again
            _remove_when_the_command_ends(data_path)
            return _from_meta(final, image_size, meta, reused=False, saved=False)
        committed = _commit(final, meta)
    finally:
        if committed is False:  # failed before committing, or lost the race: only our own folder goes
            storage.remove_tree(data_path)
    if committed:
        return _from_meta(final, image_size, meta, reused=False)
    found = find_cache(cache_dir, manifest, image_size)  # another build committed first: use it
    if found is None:
        raise RuntimeError(f"'{storage.join(final, META)}' vanished after another build committed it; was the cache folder deleted?")
    return found


_UNSAVED_BUILDS: list[str] = []


def _remove_when_the_command_ends(data_path: str) -> None:
    """An unsaved build is read by its own run only; left behind, each such run added a full copy of the cache that
    nothing ever read or deleted (no ``meta.json`` names it)."""
    if not _UNSAVED_BUILDS:
        atexit.register(remove_unsaved_builds)
    _UNSAVED_BUILDS.append(data_path)


def remove_unsaved_builds() -> None:
    """Delete this process's unsaved builds (at its exit: its run has read them)."""
    while _UNSAVED_BUILDS:
        path = _UNSAVED_BUILDS.pop()
        try:
            storage.remove_tree(path)
        except (OSError, UserError):  # at exit, a store gone away: the folder stays, never read (no meta.json names it)
            pass


def build_blocks(n_images: int, image_size: int, cpus: int) -> int:
    """How many blocks (and Parquet files) a build of ``n_images`` makes. Few, large ones: each Ray task costs
    real time on small machines, so two per CPU keep every core busy without paying for dozens of them; more
    when a block would hold over :data:`BLOCK_BYTES` of pixels, so a decoding task's memory stays bounded."""
    by_cpu = min(2 * cpus, n_images // 50)
    by_bytes = math.ceil(n_images * image_size * image_size / BLOCK_BYTES)
    return max(1, by_cpu, by_bytes)


def _commit(folder: str, meta: dict) -> bool:
    """Create ``folder/meta.json`` naming this build's data; False when another build committed first."""
    return storage.write_bytes_once(storage.join(folder, META), json.dumps(meta, indent=2).encode("utf-8"))


def check_image_size(image_size: int) -> None:

    if not MIN_SIZE <= image_size <= MAX_SIZE:
        raise UserError(f"--image-size {image_size} is out of range; use {MIN_SIZE}..{MAX_SIZE} (64-224 is usual)")


def decode_batch(batch: dict[str, np.ndarray], size: int) -> pa.Table:
    """Ray Data UDF: paths to images, stored as raw ``size*size`` uint8 bytes; a failed file gets an ``error``.

    Raw bytes in a binary column, not a tensor column: Parquet writes a tensor column one value
    at a time, which made writing the cache slower than decoding it.
    """
    images, errors, retry = [], [], []
    for path in batch["path"]:
        pixels, error, unread = _read_and_decode(str(path), size)
        images.append(b"" if pixels is None else pixels.tobytes())
        errors.append(error or "")
        retry.append(unread)
    return pa.table({
        "content_hash": pa.array(batch["content_hash"].astype(str)),
        "image": pa.array(images, type=pa.binary()),
        "error": pa.array(errors, type=pa.string()),
        "retry": pa.array(retry, type=pa.bool_()),  # not read at all: may read next time (see the module's docstring)
    })


def _read_and_decode(path: str, size: int) -> tuple[np.ndarray | None, str | None, bool]:
    """:func:`try_decode_gray` of the file at ``path``, and whether it failed before its bytes were read
    (gone, permission denied: a failure that can go away, unlike bytes that do not decode)."""
    try:
        data = storage.read_bytes(path)
    except Exception as exc:  # noqa: BLE001 - one unreadable file is reported, never fatal
        return None, describe_failure(exc), True
    return *try_decode_gray(data, size, name=path), False


# CPUs asked by the tasks that select a role's rows from the cache (see role_datasets).
REBUILD_CPUS = 0.05


def role_datasets(cache: ImageCache, roles_frame: pd.DataFrame, roles: tuple[str, ...] = ("train", "val")) -> dict:
    """One materialized Ray Dataset per role: ``image`` (uint8 HxW), ``label`` and, except for
    ``train``, ``content_hash``. Each distinct image appears once per role.

    Materialized here, once, so that trials iterate blocks already in the object store and never
    need a Ray Data task of their own. The tasks ask for only a sliver of a CPU: when a node dies,
    Ray rebuilds the blocks it held by re-running them while the trials' workers hold nearly every
    CPU, and a task that waited for a whole free CPU would wait forever.
    """
    import warnings

    import ray
    import ray.data

    # Ray Data warns when a small cache has fewer files than the task cap below; nothing to act on.
    warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks")
    out = {}
    parallel = max(1, int(ray.cluster_resources().get("CPU", 1)))
    # Ray Data's default Parquet reader (DataSource V2) lists files on a pool of footer-reading
    # actors, one process each: on a cache of a few files that costs more than the read itself
    # (measured: the train and val datasets of a 300-image cache in 3.2 s instead of 8.0 s with a
    # fresh Ray, 0.7 s instead of 3.9 s after; half the CPU). V1 reads the same files in plain tasks
    # (its file-sampling progress bar off: the console is the search's).
    context = ray.data.DataContext.get_current()
    saved = context.use_datasource_v2, context.enable_progress_bars
    context.use_datasource_v2 = context.enable_progress_bars = False
    try:
        for role in roles:
            out[role] = _role_dataset(cache, roles_frame, role, parallel)
    finally:
        context.use_datasource_v2, context.enable_progress_bars = saved
    return out


def _role_dataset(cache: ImageCache, roles_frame: pd.DataFrame, role: str, parallel: int):
    """The materialized dataset of one role (see :func:`role_datasets`)."""
    import ray.data

    rows = roles_frame.loc[roles_frame["role"] == role].drop_duplicates("content_hash")
    labels = dict(zip(rows["content_hash"], rows["label"].astype(int), strict=True))
    wait_for_free_cpu(REBUILD_CPUS, "read the image cache")
    dataset = ray.data.read_parquet(cache.data_path, num_cpus=REBUILD_CPUS, concurrency=parallel).map_batches(
        # Train gets tensors only: the training loop converts every column to torch. (Selected
        # here, not by a separate select_columns task that would need a whole CPU to rebuild.)
        _select, fn_kwargs={"labels": labels, "size": cache.image_size, "with_hash": role != "train"},
        batch_format="numpy", batch_size=None, num_cpus=REBUILD_CPUS, compute=ray.data.TaskPoolStrategy(size=parallel),
    )
    # read_parquet samples the files in tasks of a whole CPU, which the cluster's count of free CPUs still holds for a
    # moment after they end: reading then, Ray Data warned that the read "will hang" (it did not).
    wait_for_free_cpu(REBUILD_CPUS, "read the image cache")
    dataset = dataset.materialize()
    # Trials iterate these every epoch; per-epoch progress bars from every worker would bury
    # the search's own progress lines.
    dataset.context.enable_progress_bars = False
    dataset.context.print_on_execution_start = False
    return dataset


def _select(batch: dict[str, np.ndarray], labels: dict[str, int], size: int, with_hash: bool) -> dict[str, np.ndarray]:
    hashes = batch["content_hash"].astype(str)
    keep = np.array([h in labels for h in hashes], dtype=bool) & (batch["error"].astype(str) == "")
    raw = [batch["image"][i] for i in np.flatnonzero(keep)]
    images = np.frombuffer(b"".join(raw), dtype=np.uint8).reshape(len(raw), size, size)
    out = {"image": images, "label": np.array([labels[h] for h in hashes[keep]], dtype=np.float32)}
    if with_hash:
        out["content_hash"] = hashes[keep]
    return out


def load_images(rows: pd.DataFrame, image_size: int, cache_dir: str, manifest: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """Pixels for ``rows`` (``content_hash``, ``path``, ``label``), one per distinct image, without Ray.

    Reads them from the image cache when it exists, else decodes the files (the same
    :func:`decode_gray`). Returns ``(images (N, S, S) uint8, the rows kept, in the same order)``;
    files that fail to decode are left out.
    """
    rows = rows.drop_duplicates("content_hash").reset_index(drop=True)
    cache = find_cache(cache_dir, manifest, image_size)
    pixels: dict[str, bytes] = {}
    if cache is not None:
        fs, inner = storage.filesystem(cache.data_path)
        table = pq.read_table(inner, filesystem=fs, columns=["content_hash", "image", "error"],
                              filters=[("content_hash", "in", list(rows["content_hash"]))])
        for content_hash, image, error in zip(*(table.column(c).to_pylist() for c in ("content_hash", "image", "error")), strict=True):
            if not error:
                pixels[content_hash] = image
    else:
        for row in rows.itertuples():
            image, _, _ = _read_and_decode(row.path, image_size)
            if image is not None:
                pixels[row.content_hash] = image.tobytes()
    kept = rows[rows["content_hash"].isin(pixels)].reset_index(drop=True)
    images = np.frombuffer(b"".join(pixels[h] for h in kept["content_hash"]), dtype=np.uint8)
    return images.reshape(len(kept), image_size, image_size), kept


def _failures(data_path: str, unique: pd.DataFrame) -> pd.DataFrame:
    fs, inner = storage.filesystem(data_path)
    table = pq.read_table(inner, filesystem=fs, columns=["content_hash", "error", "retry"]).to_pandas()
    bad = table[table["error"].astype(str) != ""].rename(columns={"error": "reason"})
    bad = bad.merge(unique, on="content_hash", how="left")
    return bad[["content_hash", "path", "reason", "retry"]].astype({"retry": bool}).reset_index(drop=True)
