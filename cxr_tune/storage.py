"""Paths that may be local folders or object-store URIs (``s3://``, ``gs://``), through pyarrow.

On a laptop everything is a local folder; on a cluster the cache and the experiments live on
shared storage every node can see. One small set of helpers covers both, so no other module has to
care which it is: never build a :class:`pathlib.Path` from a location that may be a URI
(``Path("s3://b/x")`` is ``s3:/b/x``); use :func:`join`, :func:`parent` and :func:`name`.

S3-compatible stores other than AWS (MinIO, Ceph, a test server) are reached with the standard
``AWS_ENDPOINT_URL`` variable, which pyarrow's S3 filesystem reads itself, like the other
``AWS_*`` variables (credentials, ``AWS_REGION``).

An object store that cannot be reached or refuses a request (no such bucket, access denied, no
connection) raises :class:`StoreError`: one line naming the path and the reason, never pyarrow's
traceback; a missing bucket is said to be one, not taken for a missing file.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from cxr_tune.errors import UserError, damaged

CACHE_ENV = "CXR_TUNE_CACHE"


def is_uri(path: str | os.PathLike) -> bool:
    """True for ``scheme://...`` locations (object stores), False for local paths."""
    return "://" in str(path) and not str(path).startswith("file://")


def check_plain_uri(path: str | os.PathLike) -> None:
    """Refuse an object-store URI with a query or a fragment (``s3://b/data?versionId=abc``, ``gs://b/runs#x``) in
    one line: pyarrow takes a query for its own options and drops a fragment, and :func:`join` puts parts after
    either, so files would be read from, or written to, other keys. Called on the locations users give
    (:func:`resolve`, :func:`check_writable`). Names listed from a store are plain names, not URIs: :func:`join`
    escapes them. An empty folder name (``s3://team//exp``) is refused too: pyarrow reaches no such key, and said so
    in a traceback ("Empty path component")."""
    text = str(path)
    if is_uri(text) and ("?" in text or "#" in text):
        plain = re.split(r"[?#]", text, maxsplit=1)[0]
        raise UserError(f"'{text}': a '?' or '#' in a URI starts a query or fragment (object versions and URL query strings "
                        f"are not read); give the plain path '{plain}', or write a '?' or '#' that is part of a name as %3F or %23")
    scheme, _, rest = text.partition("://")
    if is_uri(text) and "" in rest.rstrip("/").split("/"):
        raise UserError(f"'{text}': an empty folder name ('//') in a URI names no object the store can reach; "
                        f"write it with single slashes: '{scheme}://{re.sub('/+', '/', rest).strip('/')}'")


def resolve(path: str | os.PathLike) -> str:
    """An absolute local path, or the URI unchanged (one with a query or fragment refused: :func:`check_plain_uri`).
    A path through a symbolic-link loop is the user's to fix."""
    text = str(path)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if is_uri(text):
        check_plain_uri(text)
        return text
    try:
        return str(Path(text).expanduser().resolve())
    except RuntimeError:  # Python < 3.13 raises this for a loop; 3.13 an OSError (ELOOP) only where the path is used
        raise UserError(f"'{text}' leads through a loop of symbolic links; point it at a real file or folder") from None


def same_folder(a: str, b: str) -> bool:
    """Whether two paths name one folder (local paths through their real paths; URIs as written, less a final ``/``)."""
    if is_uri(a) or is_uri(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies under it (:func:`same_folder`'s comparison: local paths through their
    real paths, URIs as written)."""
    return bool(lying_in([path], folder))


def lying_in(paths: Iterable[str], folder: str) -> list[str]:
    """The ``paths`` that are ``folder`` or lie under it, by :func:`within`'s rule, with the folder's real path found once
    and one ``os.path.realpath`` per local path: a model's selection note asks this of every scored file (3 real paths
    a file took 2.1 s for 20,000)."""
    real_folder = None if is_uri(folder) else os.path.realpath(folder)
    kept = []
    for path in paths:
        if is_uri(path) or real_folder is None:
            here, there, sep = path.rstrip("/"), folder.rstrip("/"), "/"
        else:
            here, there, sep = os.path.realpath(path), real_folder, os.sep
        if here == there or here.startswith(there.rstrip(sep) + sep):
            kept.append(path)
    return kept


#: What a URI's path holds as written (RFC 3986 ``pchar`` and ``/``); anything else is %-escaped, as pyarrow reads it.
_URI_PATH_SAFE = "/!$&'()*+,;=:@"


def _escaped(part: str) -> str:
    """A plain name (or ``a/b`` path) as it is written in a URI: ``img#1.jpeg`` -> ``img%231.jpeg``. pyarrow
    unescapes a URI's path and reads a raw ``#`` as a fragment, ``?`` as a query, ``%23`` as ``#``; a space or a
    non-ASCII letter does not parse at all."""
    return quote(part, safe=_URI_PATH_SAFE)


def join(base: str, *parts: str) -> str:
    """Join path parts with ``/`` for URIs and the OS separator for local paths.

    ``parts`` are plain names (a constant, a name listed from a store, a user's folder name), never URI text:
    on a URI they are escaped (``#``, ``?``, ``%``, spaces, non-ASCII), so that the URI names the object called
    that, whatever its name holds; ``base`` is a URI as written and stays as it is.

    >>> join("s3://bucket/data", "NORMAL", "img#1.jpeg"), join("/data", "NORMAL", "img#1.jpeg")
    ('s3://bucket/data/NORMAL/img%231.jpeg', '/data/NORMAL/img#1.jpeg')
    """
    if is_uri(base):
        return "/".join([base.rstrip("/"), *(_escaped(p.strip("/")) for p in parts)])
    return str(Path(base, *parts))


def parent(path: str) -> str:
    """The folder that holds ``path``: ``s3://b/x/y.png`` -> ``s3://b/x``; a bucket is its own parent.

    >>> parent("s3://bucket/runs/a.csv"), parent("/data/runs/a.csv")
    ('s3://bucket/runs', '/data/runs')
    """
    text = str(path)
    if not is_uri(text):
        return str(Path(text).parent)
    scheme, rest = text.split("://", 1)
    rest = rest.rstrip("/")
    return f"{scheme}://{rest.rsplit('/', 1)[0] if '/' in rest else rest}"


def plain(part: str, like: str) -> str:
    """A part of ``like`` (a path below a folder of it) as the plain name :func:`join` takes: unescaped on a URI
    (``NORMAL/scan%201.jpeg`` -> ``NORMAL/scan 1.jpeg``), as it is locally. What a file is called, the same on a
    store as in a local copy (a patient id built from it, say)."""
    return unquote(part) if is_uri(like) else part


def name(path: str) -> str:
    """The last part of ``path``, a plain name as :func:`join` takes it: ``s3://b/x/y.png`` -> ``y.png``,
    ``s3://b/x/img%231.png`` -> ``img#1.png`` (a bucket's name for a bucket)."""
    text = str(path)
    if not is_uri(text):
        return Path(text).name
    return unquote(text.split("://", 1)[1].rstrip("/").rsplit("/", 1)[-1])


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``path`` and the path inside it.

    For ``s3://`` pyarrow reads ``AWS_ENDPOINT_URL`` (and credentials, region) from the
    environment, so the same URI reaches AWS, MinIO or a test server.
    """
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(_bounded_retries(path))
        except ValueError as exc:  # pyarrow.ArrowInvalid: a scheme it has no filesystem for (https://, C://)
            raise UserError(f"'{path}' is neither a local path nor an object-store URI this project can read (s3://...): {exc}") from None
    return pafs.LocalFileSystem(), resolve(path)


GCS_RETRY_SECONDS = 30


def _bounded_retries(uri: str) -> str:
    """``uri`` asking pyarrow's Google Cloud Storage client to give up after :data:`GCS_RETRY_SECONDS`.

    Its default is to retry for 15 minutes, so a machine with no credentials or no network sat silent
    that long before any error (seen: still waiting after 2 minutes). A URI that already names a limit keeps it
    (the tests give one); a user's URI with a query is refused (:func:`check_plain_uri`): :func:`join` appends parts after it."""
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in ("gs", "gcs") or "retry_limit_seconds=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}retry_limit_seconds={GCS_RETRY_SECONDS}"


def full_path(inner: str, like: str) -> str:
    """A path as pyarrow gives it inside a filesystem (and Ray, whose checkpoints' ``path`` is one), as the full path
    on the store ``like`` is on: for people and records, ``bucket/runs/x`` reads as a local relative path.

    >>> full_path("bucket/runs/x", "s3://bucket/runs"), full_path("/data/runs/x", "/data/runs")
    ('s3://bucket/runs/x', '/data/runs/x')
    """
    if not is_uri(like) or is_uri(inner):
        return inner
    return f"{like.split('://', 1)[0]}://{_escaped(inner.lstrip('/'))}"  # pyarrow's paths are plain names: escaped as join escapes them


def default_cache_dir() -> str:
    """``$CXR_TUNE_CACHE`` if set, else the user's cache folder (``~/.cache/cxr_tune`` on Linux)."""
    from platformdirs import user_cache_dir  # here, not at the top: the GPU device machine, which runs modelfile, lacks it

    return resolve(os.environ.get(CACHE_ENV) or user_cache_dir("cxr_tune"))


def local_dir(preferred: str) -> str:
    """A local folder for what must be a local file (SQLite, logs): ``preferred`` (a cache folder) when it is local,
    else the default cache folder, else the user's cache folder (when both caches are on object storage)."""
    from platformdirs import user_cache_dir

    for folder in (preferred, default_cache_dir()):
        if not is_uri(folder):
            return folder
    return user_cache_dir("cxr_tune")


def local_cache_dir() -> str:
    """The local folder for the user's own local files that belong to no experiment (benchmark logs and kept runs)."""
    return local_dir(default_cache_dir())


def local_file_for(folder: str, filename: str, kind: str, cache_dir: str) -> str:
    """``folder/filename`` when ``folder`` is local; for a folder on object storage, a local file under
    ``kind`` in the cache, keyed by the folder's full URI (one name under two storages is two files)."""
    if not is_uri(folder):
        return join(folder, filename)
    import hashlib

    return str(Path(local_dir(cache_dir), kind, hashlib.sha256(folder.encode()).hexdigest()[:16], filename))


# --- when the object store says no ----------------------------------------------------------------


class StoreError(UserError, OSError):
    """An object store that could not be reached or refused a request: a :class:`UserError` (one line,
    exit 2), and an ``OSError`` too, so what copes with a folder it cannot write (a read-only shared
    cache) copes with a bucket it cannot write alike."""


def _store_reason(path: str, exc: OSError) -> str:
    """What went wrong, in words, from pyarrow's ``OSError`` (``... AWS Error ACCESS_DENIED during HeadObject operation: ...``)."""
    text = str(exc).strip()
    named = re.search(r"[Bb]ucket '([^']+)'", text)  # a copy's message names the bucket that failed, source or destination
    bucket = named.group(1) if named else path.split("://", 1)[1].split("/", 1)[0]
    if "NO_SUCH_BUCKET" in text or "not found. To create buckets" in text:
        return f"the bucket '{bucket}' does not exist"
    if any(code in text for code in ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "EXPIRED_TOKEN",
                                     "HTTP status 403")):
        return f"access denied; check the credentials (AWS_ACCESS_KEY_ID, AWS_PROFILE, an instance profile) and that they may use the bucket '{bucket}'"
    if "OAuth2 access token" in text or "Retry policy exhausted" in text:  # Google Cloud Storage, after GCS_RETRY_SECONDS
        return ("no answer from Google Cloud Storage within its retry limit; check the network and the credentials "
                "(gcloud auth application-default login, or GOOGLE_APPLICATION_CREDENTIALS)")
    if "NETWORK_CONNECTION" in text:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "the object store"
        return f"no connection to {endpoint}; check the network and AWS_ENDPOINT_URL"
    detail = text.splitlines()[0] if text else type(exc).__name__
    return "the object store answered: " + detail.split("AWS Error ", 1)[-1].rstrip(".")


class NoPermission(UserError, PermissionError):
    """A local file or folder this process may not look at (chmod 000, another user's folder): one line
    naming it (exit 2), and still a ``PermissionError`` for what copes with one (a data scan names it)."""


@contextmanager
def reported(path: str, doing: str) -> Iterator[None]:
    """Turn pyarrow's ``OSError`` for a URI into a :class:`StoreError` naming ``path`` ("'PATH' cannot be
    DOING: REASON"), and a local one for want of permission into :class:`NoPermission`, which pyarrow
    otherwise raised as a traceback ("Failed stat()ing path"). A missing file stays a ``FileNotFoundError``,
    which callers expect; other local errors stay as they are."""
    try:
        yield
    except (FileNotFoundError, StoreError, NoPermission):
        raise
    except OSError as exc:
        if not is_uri(path):
            if isinstance(exc, PermissionError):
                raise NoPermission(f"'{path}' cannot be {doing}: permission denied (check the permissions of it and of the folders it is in)") from None
            raise
        raise StoreError(f"'{path}' cannot be {doing}: {_store_reason(path, exc)}") from None


_BUCKETS_SEEN: set[tuple[str, str]] = set()


def _check_bucket(fs: pafs.FileSystem, inner: str, path: str) -> None:
    """Raise :class:`StoreError` when ``path``'s bucket does not exist: the store answers "not found" for a
    key in a missing bucket as for a missing key, and "not a cxr_tune experiment" would hide the cause.
    A bucket that exists is asked about once a process (by endpoint); one the credentials may not
    look at (a policy that allows only a prefix) passes, the key's own answer standing."""
    bucket = inner.split("/", 1)[0]
    seen = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "", f"{path.split('://', 1)[0]}://{bucket}")
    if seen in _BUCKETS_SEEN:
        return
    try:
        missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError:
        return
    if missing:
        raise StoreError(f"'{path}' cannot be reached: the bucket '{bucket}' does not exist")
    _BUCKETS_SEEN.add(seen)


# --- asking -------------------------------------------------------------------------------------


def _type(path: str) -> pafs.FileType:
    fs, inner = filesystem(path)
    with reported(path, "reached"):
        kind = fs.get_file_info(inner).type
        if kind == pafs.FileType.NotFound and is_uri(path):
            _check_bucket(fs, inner, path)
    return kind


def exists(path: str) -> bool:
    return _type(path) != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    """True for a folder (on object stores: a prefix with objects under it, or a folder marker)."""
    return _type(path) == pafs.FileType.Directory


def is_file(path: str) -> bool:
    return _type(path) == pafs.FileType.File


def listdir(path: str) -> list[str]:
    """Names of the files and folders directly inside ``path``, sorted; empty when it does not exist.

    >>> listdir("s3://bucket/runs")  # doctest: +SKIP
    ['checkpoint_000', 'checkpoint_001', 'trials.csv']
    """
    fs, inner = filesystem(path)
    with reported(path, "listed"):
        infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    return sorted(i.base_name for i in infos)


def glob(path: str, pattern: str = "*") -> list[str]:
    """Full paths of the children of ``path`` whose names match ``pattern`` (``fnmatch``), sorted.

    One level only, like ``Path(path).glob("checkpoint_*")``: ``glob(runs, "checkpoint_*")``.
    """
    return [join(path, child) for child in listdir(path) if fnmatch.fnmatchcase(child, pattern)]


# --- reading ------------------------------------------------------------------------------------


class NotPlainFile(OSError):
    """A path that names a pipe, socket or device: reading it could block forever."""


def _is_special(path: str | os.PathLike) -> bool:
    """A local path that exists and is neither a regular file nor a folder: a pipe, socket or device
    (False when it is missing or cannot be looked at: the read or write itself says so)."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


def check_plain_file(path: str | os.PathLike) -> None:
    """Raise :class:`NotPlainFile` for a pipe, socket or device (a named pipe among the images would
    hang the reader), so it is reported like any unreadable file."""
    if _is_special(path):
        raise NotPlainFile("not a regular file (a pipe, socket or device)")


def read_bytes(path: str) -> bytes:
    if not is_uri(path):
        check_plain_file(path)
        return Path(path).read_bytes()
    fs, inner = filesystem(path)
    with reported(path, "read"), fs.open_input_stream(inner) as stream:
        return stream.readall()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path: str, *, lines: bool = False) -> Any:
    """A JSON file a run wrote (``lines``: one value a line, as ``compute.jsonl``); one cut short or not JSON is
    :func:`cxr_tune.errors.damaged`'s one line naming it, not a traceback from the decoder."""
    try:
        text = read_text(path)
        return [json.loads(line) for line in text.splitlines() if line.strip()] if lines else json.loads(text)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise damaged(path, exc) from None


def read_frame(path: str) -> pd.DataFrame:
    """A Parquet file (or a folder of them) as a DataFrame."""
    fs, inner = filesystem(path)
    with reported(path, "read"):
        return pq.read_table(inner, filesystem=fs).to_pandas()


def read_csv(path: str, **kwargs: Any) -> pd.DataFrame:
    """``pd.read_csv`` for local paths and URIs alike (pandas alone would need s3fs for ``s3://``).

    >>> read_csv("s3://bucket/exp/trials.csv")  # doctest: +SKIP
    """
    return pd.read_csv(io.BytesIO(read_bytes(path)), **kwargs)


# --- writing ------------------------------------------------------------------------------------


def check_folder_name(name: str, base: str, flag: str = "--name") -> None:
    """Refuse a name that would not stay one folder under ``base``: a path separator or a leading
    dot, and ``#``, ``?`` or ``%``, which a URI reads as syntax (on object storage ``exp#2`` would
    be the object ``exp``); and on object storage any character a URI must escape (whitespace,
    ``[``, non-ASCII letters: :func:`join` escapes them, but Ray writes its experiment under the plain
    name, and a resume that reads it back escaped found a second folder); and an empty or blank name, which would
    name ``base`` itself (a command's default name is for a flag left out, not given empty)."""
    if not name.strip():
        raise UserError(f"{flag} is empty: give a folder name, or leave {flag} out for a timestamped one")
    if "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"{flag} {name!r} must be a plain folder name")
    bad = sorted({c for c in name if c in "#?%" or (is_uri(base) and _escaped(c) != c)})
    if bad:
        raise UserError(f"{flag} {name!r}: {' '.join(repr(c) for c in bad)} cannot be in a folder name"
                        + (" on object storage" if not set(bad) & set("#?%") else " (a URI reads them as syntax)"))


def check_writable(path: str, what: str, *, folder: bool = True, read_only_ok: bool = False) -> None:
    """Stop with one line before any work when a command could not write ``path`` (a ``folder``, or a
    file): it, or the nearest part of it that exists, is a file where a folder is needed (or the
    other way round), or that folder is read-only (unless ``read_only_ok``: a shared cache built
    once may be read-only; one that does not exist yet must be made, so it is checked as any). Leaves nothing behind (as root, whom os.access lets write anywhere, /proc
    and /sys included, it makes and drops an unnamed file there to find out). On object storage: the
    bucket is missing, or the store cannot be reached or refuses the credentials (a bucket policy that
    forbids only writing is found by the first write, in one line too); or its URI has a query or fragment
    (:func:`check_plain_uri`)."""
    if is_uri(path):
        check_plain_uri(path)
        try:
            kind = _type(path)
        except StoreError as exc:
            raise StoreError(f"{what} {exc}") from None
        if folder and kind == pafs.FileType.File:
            raise UserError(f"{what} '{path}' is a file, not a folder")
        if not folder and kind == pafs.FileType.Directory:
            raise UserError(f"{what} '{path}' is a folder; name a file in it")
        return
    if not folder and is_stream(str(path)):
        return  # /dev/null, /dev/stdout, a named pipe: written straight through
    target = Path(resolve(path))
    if len(target.name.encode()) > _LONGEST_NAME:  # a write's temporary copy beside it, ".NAME.tmp-12345678", must fit too
        raise UserError(f"{what} '{path}' cannot be written: its name is longer than {_LONGEST_NAME} bytes")
    existing = next(p for p in (target, *target.parents) if p.exists())
    if existing == target:
        if folder and not target.is_dir():
            raise UserError(f"{what} '{path}' is a file, not a folder")
        if not folder and target.is_dir():
            raise UserError(f"{what} '{path}' is a folder; name a file in it")
        if not folder:
            existing = target.parent  # a file is replaced by a write in its folder
    elif not existing.is_dir():
        raise UserError(f"{what} '{path}' cannot be written: '{existing}' is a file, not a folder")
    # Only a folder that is there may be read-only: nothing is there to reuse (/proc/nope passed silently, one under a file did not)
    read_only_ok = read_only_ok and existing == target
    if not read_only_ok and not os.access(existing, os.W_OK | os.X_OK):
        if hasattr(os, "statvfs") and os.statvfs(existing).f_flag & os.ST_RDONLY:  # mounted read-only (EROFS): no chmod makes it writable
            raise UserError(f"{what} '{path}' cannot be written: '{existing}' is on a read-only file system")
        raise UserError(f"{what} '{path}' cannot be written: no permission to write in '{existing}'")
    if not read_only_ok and hasattr(os, "geteuid") and os.geteuid() == 0:  # root passes os.access everywhere, /proc and /sys included
        try:
            with tempfile.TemporaryFile(dir=existing):  # gone when closed (unnamed where the filesystem allows)
                pass
        except OSError as exc:
            raise UserError(f"{what} '{path}' cannot be written: a file cannot be made in '{existing}' ({exc.strerror or exc})") from None


def makedirs(path: str) -> None:
    fs, inner = filesystem(path)
    with reported(path, "written"):
        fs.create_dir(inner, recursive=True)


_LONGEST_NAME = 255 - len("..tmp-12345678")  # a filesystem's 255 bytes, less what a temporary copy's name adds
_DESCRIPTORS = re.compile(r"^/(dev/(stdout|stderr|fd/\d+)|proc/self/fd/\d+)$")


def is_stream(path: str) -> bool:
    """A local path, as given, that a write must go into rather than replace: this process's own
    output (/dev/stdout, /dev/fd/1: a terminal, a pipe, or the file a shell redirected it to, which
    must be appended to, not swapped for another), or an existing device or pipe (/dev/null, a fifo)."""
    return bool(_DESCRIPTORS.match(os.path.normpath(path))) or _is_special(path)


@contextmanager
def _local_tmp(inner: str, data: bytes) -> Iterator[str]:
    """``data`` in a synced temporary file beside ``inner``, for the block to rename or link into place. The file is gone
    after the block whatever happens, a Ctrl-C or SIGTERM while it is written included (each left ``NAME.tmp-XXXXXXXX``
    beside the output for good)."""
    Path(inner).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{inner}.tmp-{uuid.uuid4().hex[:8]}"  # check_writable keeps names short enough for this suffix
    try:
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:  # a full disk's write names no file, an open names the temporary one: say which output it was
            exc.filename = inner
            raise
        yield tmp
    finally:
        if os.path.lexists(tmp):  # renamed into place: nothing left
            os.unlink(tmp)


def _put(path: str, data: bytes) -> None:
    """One object PUT: atomic already. No folder is created first: object stores have none, and a
    policy that allows writing under a prefix may forbid looking at the folders above it."""
    fs, inner = filesystem(path)
    with reported(path, "written"), fs.open_output_stream(inner) as stream:
        stream.write(data)


def write_bytes_atomic(path: str, data: bytes) -> None:
    """Write ``data`` so that readers see the old file or the whole new one, never half of it."""
    if is_uri(path):
        _put(path, data)
        return
    if is_stream(str(path)):  # replacing /dev/null, a pipe or a redirected stdout with a new file would break it, or lose what is written
        with open(path, "ab") as handle:
            handle.write(data)
        return
    inner = resolve(path)
    with _local_tmp(inner, data) as tmp:
        os.replace(tmp, inner)


def write_bytes_once(path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists already; True when this call created it.

    Readers never see half a file. Local folders: exclusive and atomic (a hard link of a complete
    temporary file; two callers racing, exactly one wins). Object stores cannot create-if-absent
    through pyarrow: there it is a check and then a PUT, and two callers within that moment both
    get True, the later PUT winning. Callers must treat a True as "mine may be replaced", never
    delete what another caller may have written.
    """
    if is_uri(path):
        if exists(path):
            return False
        _put(path, data)
        return True
    inner = resolve(path)
    with _local_tmp(inner, data) as tmp:
        try:
            os.link(tmp, inner)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: the object-store guarantee
            if os.path.exists(inner):
                return False
            os.replace(tmp, inner)
            return True


def write_text_atomic(path: str, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_frame(path: str, frame: pd.DataFrame) -> None:
    """Write a DataFrame as one Parquet file, atomically."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_bytes_atomic(path, buffer.getvalue())


def write_csv(path: str, frame: pd.DataFrame, **kwargs: Any) -> None:
    """Write a DataFrame as CSV (without its index unless ``index=True``), atomically."""
    kwargs.setdefault("index", False)
    write_bytes_atomic(path, frame.to_csv(**kwargs).encode("utf-8"))


# --- copying, moving, removing ------------------------------------------------------------------


def copy(src: str, dst: str) -> None:
    """Copy a file or a whole folder from ``src`` to ``dst``, each local or a URI.

    Uploads (``copy("runs/exp1", "s3://b/exp1")``), downloads and copies within one store alike.
    A folder lands *as* ``dst`` (not inside it); files already in ``dst`` with other names stay.
    """
    src_fs, src_inner = filesystem(src)
    dst_fs, dst_inner = filesystem(dst)
    kind = _type(src)
    if kind == pafs.FileType.NotFound:
        raise FileNotFoundError(f"'{src}' does not exist")
    if kind == pafs.FileType.File and not is_uri(dst):
        Path(dst_inner).parent.mkdir(parents=True, exist_ok=True)
    with reported(src if is_uri(src) else dst, f"copied to '{dst}'" if is_uri(src) else f"written from '{src}'"):
        pafs.copy_files(src_inner, dst_inner, source_filesystem=src_fs, destination_filesystem=dst_fs)


def remove(path: str) -> None:
    """Delete a file or a whole folder; nothing happens when it does not exist."""
    fs, inner = filesystem(path)
    with reported(path, "removed"):
        kind = fs.get_file_info(inner).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(inner)
        elif kind != pafs.FileType.NotFound:
            fs.delete_file(inner)


def remove_tree(path: str) -> None:
    """Delete the folder ``path`` and everything in it; nothing happens when it does not exist."""
    fs, inner = filesystem(path)
    with reported(path, "removed"):
        if fs.get_file_info(inner).type != pafs.FileType.NotFound:
            fs.delete_dir(inner)


SCRATCH = re.compile(r"cxr_tune-[a-z]+-(\d+)-")  # what scratch_folder names: what it holds, its process's pid, tempfile's random part


def scratch_folder(what: str) -> tempfile.TemporaryDirectory:
    """A temporary folder in ``$TMPDIR`` named after ``what`` and this process (``cxr_tune-report-<pid>-XXXXXXXX``):
    ``with scratch_folder("report") as folder: ...``. Removed at the block's end, like any ``TemporaryDirectory``; one
    whose process was killed first (kill -9, or Ray stopping a worker inside ``ray.train.report``) stayed for good, so
    each call first removes those (:func:`remove_abandoned_scratch`)."""
    remove_abandoned_scratch()
    return tempfile.TemporaryDirectory(prefix=f"cxr_tune-{what}-{os.getpid()}-")


def remove_abandoned_scratch() -> None:
    """Remove the temp folder's :func:`scratch_folder` folders whose process is gone. A folder whose process lives (or
    whose pid a new process took), and any other program's, is kept."""
    if os.name != "posix":  # os.kill(pid, 0) tests a process only on POSIX (on Windows it stops it)
        return
    for entry in os.scandir(tempfile.gettempdir()):
        named = SCRATCH.match(entry.name)
        if named and entry.is_dir(follow_symlinks=False):
            try:
                os.kill(int(named.group(1)), 0)
            except ProcessLookupError:
                shutil.rmtree(entry.path, ignore_errors=True)  # another command may be removing it too
            except (OSError, OverflowError):  # PermissionError: alive, another user's
                pass


def sibling_tmp(path: str) -> str:
    """A fresh temporary path beside ``path``: same folder, so a rename stays on one filesystem."""
    return join(parent(path), f".{name(path)}.tmp-{uuid.uuid4().hex[:8]}")


def replace_dir(src: str, dst: str, *, first: tuple[str, ...] = (), last: str = "model.json") -> None:
    """Put the folder ``src`` in the place of ``dst``; ``src`` is gone afterwards. Locally readers find the
    old folder or the new one, never neither and never a mix.

    Local: one atomic exchange of the two folders (Linux ``renameat2(RENAME_EXCHANGE)``), then the
    old one is deleted; where the system cannot exchange, two renames with the old folder kept
    until the new one is in place. Object stores cannot rename: the new files are copied over the
    old ones, the files named in ``first`` first, the file named ``last`` (the one that marks a folder complete) at
    the end, and files only the old folder had are deleted. A kill during that copy leaves a mix of the two, neither
    folder whole: what reads ``dst`` must tell (an export's ``model.json`` holds its files' hashes, which are ``first``,
    so that no other new file, a model card say, can sit beside an old model that still loads).
    """
    if is_uri(src) or is_uri(dst):
        files = sorted(listdir(src), key=lambda child: (child == last, child not in first))
        for child in files:
            copy(join(src, child), join(dst, child))
        for child in set(listdir(dst)) - set(files):
            remove(join(dst, child))
        remove_tree(src)
        return
    src_inner, dst_inner = resolve(src), resolve(dst)
    if not os.path.exists(dst_inner):
        Path(dst_inner).parent.mkdir(parents=True, exist_ok=True)
        os.rename(src_inner, dst_inner)
        return
    if not _exchange(src_inner, dst_inner):
        old = f"{dst_inner}.old-{uuid.uuid4().hex[:8]}"
        os.rename(dst_inner, old)
        os.rename(src_inner, dst_inner)
        src_inner = old
    shutil.rmtree(src_inner, ignore_errors=True)


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux >= 3.15, glibc >= 2.28); False where that is not available."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, a.encode(), at_fdcwd, b.encode(), rename_exchange) == 0
