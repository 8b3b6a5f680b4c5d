"""Paths that may be local folders or object-store URIs (``s3://``, ``gs://``), through pyarrow.

On a laptop everything is a local folder; on a cluster the cache and the experiments live on
shared storage every node can see. One small set of helpers covers both, so no other module has to
care which it is.
"""

from __future__ import annotations

import io
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from platformdirs import user_cache_dir

CACHE_ENV = "CXR_TUNE_CACHE"


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` locations (object stores), False for local paths."""
    return "://" in str(path) and not str(path).startswith("file://")


def resolve(path: str | os.PathLike) -> str:
    """An absolute local path, or the URI unchanged."""
    text = str(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return text if is_uri(text) else str(Path(text).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` for URIs and the OS separator for local paths."""
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``path`` and the path inside it."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), resolve(path)


def default_cache_dir() -> str:
    """``$CXR_TUNE_CACHE`` if set, else the user's cache folder (``~/.cache/cxr_tune`` on Linux)."""
    return resolve(os.environ.get(CACHE_ENV) or user_cache_dir("cxr_tune"))


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        return Path(path).read_bytes()
    fs, inner = filesystem(path)
    with fs.open_input_stream(inner) as stream:
        return stream.readall()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never half of it."""
    fs, inner = filesystem(path)
    parent = inner.rsplit("/", 1)[0] if is_uri(path) else str(Path(inner).parent)
    fs.create_dir(parent, recursive=True)
    if is_uri(path):  # an object PUT is atomic already
        with fs.open_output_stream(inner) as stream:
            stream.write(data)
        return
    tmp = f"{inner}.tmp-{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, inner)


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_frame(path: str, frame: pd.DataFrame) -> None:
    """Write a DataFrame as one Parquet file, atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(path, buffer.getvalue())


def read_frame(path: str) -> pd.DataFrame:
    fs, inner = filesystem(path)
    return pq.read_table(inner, filesystem=fs).to_pandas()


def makedirs(path: str) -> None:
    fs, inner = filesystem(path)
    fs.create_dir(inner, recursive=True)


def remove_tree(path: str) -> None:
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type != pafs.FileType.NotFound:
        fs.delete_dir(inner)


def move(src: str, dst: str) -> None:
    """Rename ``src`` to ``dst``: atomic for local folders; a copy on object stores."""
    fs, src_inner = filesystem(src)
    _, dst_inner = filesystem(dst)
    fs.move(src_inner, dst_inner)
