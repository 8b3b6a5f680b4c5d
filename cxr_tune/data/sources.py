"""Turn a data location into a manifest: one row per readable image, with patient and group.

The manifest is a pandas DataFrame with columns ``path, label, patient_id, group_id, split,
content_hash, width, height, mode``. ``label`` is 1 for PNEUMONIA. ``split`` is the folder the file
came from (train/val/test). ``group_id`` joins images of one patient *and* byte-identical files,
even when the copies carry different patient ids, so that no split can leak a patient or an image.

Building a manifest reads and decodes every file once (threaded, with a progress bar); the result
is cached under the cache directory keyed by the folder's file names, sizes and modification
times (and, for local files, change times and inodes: ``cp -p`` or a de-identification tool can put the old
modification time back on new pixels of the same size, but not those), so the second call on unchanged data costs
one directory listing (and a read of each file that could not be read at all last time: a permission fixed on its
folder changes nothing of the file's).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow.fs as pafs

from cxr_tune import storage
from cxr_tune.data.dicom import decoders_installed
from cxr_tune.data.imaging import DICOM_SUFFIXES, describe_failure, probe
from cxr_tune.data.synthetic import DEFAULT_N, SYNTHETIC_MARKER, ensure_synthetic
from cxr_tune.errors import UserError

CLASSES = ("NORMAL", "PNEUMONIA")  # label 0, 1
SPLITS = ("train", "val", "test")
OPTIONAL_SPLITS = ("val", "test")  # a class folder in these may be empty or absent; train/ needs both classes
EXTERNAL = "external"  # the split name of a separate external-validation folder (--val-data PATH)
MANIFEST_VERSION = 10  # 2: pneumonia patient ids keep the infection type; 3: DICOM files are read, not skipped; 4: check; 5: tiny images checked; 6: unnamed files keyed by sub-folder or path; 7: Mendeley v3 names; 8: width and height upright by the EXIF orientation, as decoded; 9: .dcm/.dicom files without the DICM marker read as DICOM; 10: images over Pillow's warning size checked
MANIFEST_COLUMNS = [
    "path", "label", "patient_id", "group_id", "split", "content_hash", "width", "height", "mode",
    "check",  # why an image may not be a chest X-ray like Kermany's (cxr_tune.data.input_checks); "" for most
]
SKIPPED_COLUMNS = ["path", "split", "reason"]
LAYOUT_HINT = "ROOT/{train,val,test}/{NORMAL,PNEUMONIA}/<images> (the Kermany chest_xray layout; val and test optional)"

# Kermany numbers pneumonia patients per infection type: ``person12_bacteria`` and ``person12_virus``
# are two children. In the official training split 808 of 1,635 person numbers carry both types,
# and the 170 numbers that recur between the official train and test splits never recur with the
# same type; the trailing image numbers are one counter per type. So the patient key keeps the type.
# The current Mendeley download (version 3, CellData/chest_xray) renames the same images NORMAL-<id>-<n>,
# BACTERIA-<id>-<n> and VIRUS-<id>-<n>, with ids of 6-7 digits that are not counters: one id is one patient
# whatever the type (were two patients to share an id, joining them could only over-group, never leak).
# Each pattern's group 1 after the prefix is the key.
_PATIENT_PATTERNS = (
    (re.compile(r"^(person\d+_(?:bacteria|virus))_"), ""),
    (re.compile(r"^(NORMAL2-IM-\d+)-\d+"), ""),
    (re.compile(r"^(IM-\d+)-\d+"), ""),
    (re.compile(r"^(?:NORMAL|BACTERIA|VIRUS)-(\d+)-\d+"), "patient-"),
)
# How each rule is said, by ``inspect`` and the model card alike: named patients (the patterns above), then a
# file whose name carries none (:func:`_unnamed_patient`), in a sub-folder of its class folder or directly in it.
NAMED_PATIENTS = ("the Kermany file names (`personN_bacteria`, `personN_virus`, `IM-NNNN`, `NORMAL2-IM-NNNN`) and the current "
                  "Mendeley names (`NORMAL-<id>-<n>`, `BACTERIA-<id>-<n>`, `VIRUS-<id>-<n>`, by the id)")
FOLDER_PATIENT = "grouped by that sub-folder, one patient each (CLASS/<patient>/<image>)"
IMAGE_PATIENT = "each treated as their own patient"
#: The kinds of patient key (:func:`patient_keys`), in the order the model card names them.
PATIENT_KEY_KINDS = ("Kermany name", "Mendeley id", "sub-folder", "own image")


@dataclass(frozen=True)
class Source:
    """A data set ready to split: the readable images and the files that were skipped, and why."""

    root: str
    manifest: pd.DataFrame
    skipped: pd.DataFrame
    synthetic: bool

    @property
    def description(self) -> str:
        """How every report names this data; synthetic data always says SYNTHETIC."""
        if self.synthetic:
            return f"SYNTHETIC chest X-rays (generated, not real patients) at {self.root}"
        return f"real data at {self.root}"


@dataclass(frozen=True)
class _File:
    path: str
    split: str
    label: int
    size: int
    mtime_ns: int
    unnamed_patient: str  # the patient key when the file name carries none (see _unnamed_patient)
    changed: str  # a local file's change time and inode, "" on object storage (see _walk_files)


def patient_id(file_name: str) -> str | None:
    """The patient a Kermany file name belongs to, or None when the name has no patient in it.

    >>> patient_id("person1000_bacteria_2931.jpeg"), patient_id("NORMAL2-IM-0123-0001.jpeg"), patient_id("VIRUS-1003233-0002.jpeg")
    ('person1000_bacteria', 'NORMAL2-IM-0123', 'patient-1003233')
    """
    for pattern, prefix in _PATIENT_PATTERNS:
        match = pattern.match(file_name)
        if match:
            return prefix + match.group(1)
    return None


def patient_keys(patients: pd.Series) -> dict[str, int]:
    """Distinct patients per rule that keyed them (:data:`PATIENT_KEY_KINDS`), from a manifest's or ``splits.csv``'s
    ``patient_id`` column: what export records so the model card can say which grouping was applied."""
    distinct = pd.Series(patients.astype(str).unique())
    kinds = np.select([distinct.str.startswith("folder:"), distinct.str.startswith("image:"), distinct.str.startswith("patient-")],
                      ["sub-folder", "own image", "Mendeley id"], "Kermany name")
    return {kind: int((kinds == kind).sum()) for kind in PATIENT_KEY_KINDS}


def locate_root(data: str) -> str:
    """The folder that holds ``train/``; steps into ``chest_xray/`` the way the downloads nest it.

    Raises :class:`UserError` naming the path and the expected layout when there is no such folder.
    """
    root = storage.resolve(data)
    fs, inner = storage.filesystem(root)
    with storage.reported(data, "reached"):
        info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        raise UserError(f"data path '{data}' does not exist; expected {LAYOUT_HINT}")
    if info.type != pafs.FileType.Directory:
        raise UserError(f"data path '{data}' is a file, not a folder; expected {LAYOUT_HINT}")
    for _ in range(3):  # Mendeley: chest_xray/; Kaggle: chest_xray/chest_xray/
        names = _child_dirs(fs, inner, root)
        if _find(names, "train") is not None:
            break
        nested = _find(names, "chest_xray")
        if nested is None:
            break
        inner, root = f"{inner}/{nested}", storage.join(root, nested)
    names = _child_dirs(fs, inner, root)
    train = _find(names, "train")
    if train is None:
        if any(_find(names, c) for c in CLASSES):
            raise UserError(
                f"'{data}' holds NORMAL/PNEUMONIA directly, like a single split; pass the folder "
                f"above it instead, laid out as {LAYOUT_HINT}"
            )
        raise UserError(f"'{data}' has no train/ folder; expected {LAYOUT_HINT}")
    missing = [c for c in CLASSES if _find(_child_dirs(fs, f"{inner}/{train}", storage.join(root, train)), c) is None]
    if missing:
        raise UserError(
            f"'{storage.join(root, train)}' has no {' or '.join(missing)} folder; expected {LAYOUT_HINT}"
        )
    return root


def build_manifest(data: str, cache_dir: str | None = None, *, progress: bool = True) -> Source:
    """Scan ``data`` (Kermany layout) into a :class:`Source`; reuse the cached scan when unchanged."""
    root = locate_root(data)
    files, folders, ignored = _list_files(root)
    synthetic = storage.exists(storage.join(root, SYNTHETIC_MARKER))
    manifest, skipped = _scan_cached(root, files, ignored, cache_dir, progress=progress)
    _check_classes(folders, manifest, skipped)
    return Source(root=root, manifest=manifest, skipped=skipped, synthetic=synthetic)


def load_source(
    data: str | None,
    cache_dir: str | None = None,
    *,
    synthetic_n: int | None = None,
    synthetic_seed: int = 0,
    progress: bool = True,
) -> Source:
    """``data`` if given, else the built-in synthetic set (generated once into the cache)."""
    if data is not None:
        return build_manifest(data, cache_dir, progress=progress)

    cache_dir = cache_dir or storage.default_cache_dir()
    root = ensure_synthetic(cache_dir, n=DEFAULT_N if synthetic_n is None else synthetic_n, seed=synthetic_seed, progress=progress)
    return build_manifest(root, cache_dir, progress=progress)


def load_external(path: str, cache_dir: str | None = None, *, progress: bool = True) -> Source:
    """A labelled external-validation folder (``PATH/NORMAL``, ``PATH/PNEUMONIA``) as a source whose
    rows have split ``external``.

    Raises :class:`UserError` naming the folder when it is missing, lacks a class folder, or a
    class holds no readable image: selecting on one class cannot measure a balance.
    """
    root = storage.resolve(path)
    fs, inner = storage.filesystem(root)
    with storage.reported(path, "reached"):
        info = fs.get_file_info(inner)
    if info.type != pafs.FileType.Directory:
        what = "does not exist" if info.type == pafs.FileType.NotFound else "is a file, not a folder"
        raise UserError(f"--val-data '{path}' {what}; expected a folder holding NORMAL/ and PNEUMONIA/ image folders")
    files: list[_File] = []
    folders: dict[tuple[str, int], str] = {}
    ignored: list[dict] = []
    _list_classes(root, EXTERNAL, files, folders, ignored)
    missing = [c for i, c in enumerate(CLASSES) if (EXTERNAL, i) not in folders]
    if missing:
        raise UserError(
            f"--val-data '{path}' has no {' or '.join(missing)} folder; external validation needs labelled images "
            f"of both classes in PATH/NORMAL and PATH/PNEUMONIA"
        )
    files.sort(key=lambda f: f.path)
    manifest, skipped = _scan_cached(root, files, pd.DataFrame(ignored, columns=SKIPPED_COLUMNS), cache_dir, progress=progress)
    _check_classes(folders, manifest, skipped)
    return Source(root=root, manifest=manifest, skipped=skipped, synthetic=storage.exists(storage.join(root, SYNTHETIC_MARKER)))


def add_groups(manifest: pd.DataFrame) -> pd.DataFrame:
    """Set ``group_id``: connected components of "same patient" and "byte-identical file" (see :func:`group_ids`)."""
    frame = manifest.copy()
    frame["group_id"] = group_ids(frame)
    return frame[MANIFEST_COLUMNS]


def group_ids(frame: pd.DataFrame) -> np.ndarray:
    """Per row of ``frame`` (``patient_id``, ``content_hash``), its group: connected components of
    "same patient" and "byte-identical file", named after the smallest patient id in the group so
    it stays stable across runs. The one patient-group rule: splits, external sets and exports use it.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if frame.empty:
        return np.zeros(0, dtype=object)
    patients, patient_idx = np.unique(frame["patient_id"].to_numpy(str), return_inverse=True)
    _, hash_idx = np.unique(frame["content_hash"].to_numpy(str), return_inverse=True)
    n_nodes = len(patients) + int(hash_idx.max()) + 1
    graph = coo_matrix(
        (np.ones(len(frame)), (patient_idx, hash_idx + len(patients))), shape=(n_nodes, n_nodes)
    )
    _, component = connected_components(graph, directed=False)
    patient_component = component[: len(patients)]
    names = pd.Series(patients).groupby(patient_component).min()
    return names.loc[patient_component[patient_idx]].to_numpy()


# --- scanning -----------------------------------------------------------------------------------


def _child_dirs(fs: pafs.FileSystem, inner: str, folder: str) -> list[str]:
    """The folders in ``inner`` (``folder`` as the user names it); see :func:`_children`."""
    return _children(fs, inner, folder)[0]


def _children(fs: pafs.FileSystem, inner: str, folder: str) -> tuple[list[str], list[str]]:
    """(the folders, the other entries) in ``inner`` (``folder`` as the user names it); one that cannot
    be listed stops with its name: its images would otherwise be missing without a word."""
    try:
        with storage.reported(folder, "listed"):
            infos = fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
    except PermissionError as exc:
        raise UserError(f"cannot read the folder '{folder}': {describe_failure(exc)}") from None
    return ([i.base_name for i in infos if i.type == pafs.FileType.Directory],
            [i.base_name for i in infos if i.type != pafs.FileType.Directory])


#: Why a hidden or system folder's files are not read (``.thumbnails``, ``__MACOSX``, a NAS's ``@eaDir``).
NOT_READ = "hidden or system folder (thumbnails, indexes, a recycle bin); not read"


def is_hidden_or_system(name: str) -> bool:
    """Whether a folder named ``name`` holds what a computer, not a person, put there: hidden folders
    (``.thumbnails``), macOS zip residue (``__MACOSX``), a NAS's indexes and bins (Synology ``@eaDir``,
    ``#recycle``) and Windows' (``$RECYCLE.BIN``, ``System Volume Information``). Their thumbnails of the
    X-rays would be trained on as more patients' images."""
    return name.startswith((".", "@", "#recycle", "$RECYCLE")) or name in ("__MACOSX", "System Volume Information")


def hidden_folder_of(relative: str) -> str | None:
    """The first hidden or system folder on ``relative``, a file's '/'-separated path below a listed
    folder (``"@eaDir/a.jpeg/thumb.jpg"`` gives ``"@eaDir"``), or None."""
    parts = relative.split("/")[:-1]
    hidden = next((k for k, part in enumerate(parts) if is_hidden_or_system(part)), None)
    return None if hidden is None else "/".join(parts[: hidden + 1])


def _find(names: Iterable[str], wanted: str) -> str | None:
    """The entry of ``names`` equal to ``wanted`` ignoring case (NORMAL, normal, Normal)."""
    return next((n for n in names if n.lower() == wanted.lower()), None)


def _list_files(root: str) -> tuple[list[_File], dict[tuple[str, int], str], pd.DataFrame]:
    """Every file under ``root/<split>/<class>/`` and the class folders found (split, label) -> path.

    Other folders are reported as ignored, not read.
    """
    fs, inner = storage.filesystem(root)
    files: list[_File] = []
    folders: dict[tuple[str, int], str] = {}
    ignored: list[dict] = []
    for split_dir in _child_dirs(fs, inner, root):
        split = split_dir.lower()
        if split not in SPLITS:
            reason = NOT_READ if is_hidden_or_system(split_dir) else "folder is not train/val/test; ignored"
            ignored.append({"path": storage.join(root, split_dir), "split": "", "reason": reason})
            continue
        _list_classes(storage.join(root, split_dir), split, files, folders, ignored)
    files.sort(key=lambda f: f.path)
    return files, folders, pd.DataFrame(ignored, columns=SKIPPED_COLUMNS)


def _list_classes(folder: str, split: str, files: list[_File], folders: dict[tuple[str, int], str], ignored: list[dict]) -> None:
    """Add the files under ``folder/{NORMAL,PNEUMONIA}/`` to ``files``; other folders and the files
    directly in ``folder`` (whose class nothing says) to ``ignored``."""
    fs, inner = storage.filesystem(folder)
    class_dirs, loose = _children(fs, inner, folder)
    ignored += [{"path": storage.join(folder, name), "split": split, "reason": "file outside the NORMAL/PNEUMONIA folders; ignored"}
                for name in sorted(loose)]
    for class_dir in class_dirs:
        label = next((i for i, c in enumerate(CLASSES) if c.lower() == class_dir.lower()), None)
        if label is None:
            reason = NOT_READ if is_hidden_or_system(class_dir) else "folder is not NORMAL/PNEUMONIA; ignored"
            ignored.append({"path": storage.join(folder, class_dir), "split": split, "reason": reason})
            continue
        class_path = storage.join(folder, class_dir)
        folders[(split, label)] = class_path
        for path, size, mtime_ns, changed in _walk_files(class_path, split, ignored):
            unnamed = _unnamed_patient(storage.plain(path[len(class_path) + 1 :], like=path), f"{split}/{class_dir}")
            files.append(_File(path=path, split=split, label=label, size=size, mtime_ns=mtime_ns, unnamed_patient=unnamed, changed=changed))


def _unnamed_patient(relative: str, class_key: str) -> str:
    """The patient of a file whose name carries no patient id, from its path below the class folder:
    the first sub-folder (``NORMAL/<patient>/1.png``, the usual site export), else the file itself.
    Never shared across class folders or splits: ``1.png`` of two folders is two patients.

    >>> _unnamed_patient("patient7/1.png", "train/NORMAL"), _unnamed_patient("1.png", "train/NORMAL")
    ('folder:train/NORMAL/patient7', 'image:train/NORMAL/1.png')
    """
    parts = relative.replace(os.sep, "/").split("/")
    return f"folder:{class_key}/{parts[0]}" if len(parts) > 1 else f"image:{class_key}/{relative}"


def _walk_files(folder: str, split: str, ignored: list[dict]) -> list[tuple[str, int, int, str]]:
    """(path, size, mtime_ns, changed) of every file under ``folder`` (locally as :func:`walk_folder` finds them);
    a folder below it not read goes to ``ignored`` with the reason. ``changed``: a local file's change time and inode,
    which no tool sets back (``touch -r``, ``cp -p`` and ``rsync -t`` set the modification time); "" for an object store's
    listing, which has neither (an object rewritten there gets a new modification time from the store)."""
    if storage.is_uri(folder):
        stored, not_read = walk_stored(folder)
        ignored += [{"path": path, "split": split, "reason": reason} for path, reason in not_read]
        return [(path, size, mtime_ns, "") for path, size, mtime_ns in stored]

    listed, not_read = walk_folder(folder)
    ignored += [{"path": path, "split": split, "reason": reason} for path, reason in not_read]
    out = []
    for path in listed:
        try:
            stat = os.stat(path)
        except OSError:
            stat = os.lstat(path)  # a dangling link is still listed, and reported unreadable
        out.append((path, stat.st_size, stat.st_mtime_ns, f"{stat.st_ctime_ns}|{stat.st_ino}"))
    return out


def walk_folder(folder: str) -> tuple[list[str], list[tuple[str, str]]]:
    """(every file below the local ``folder``, the folders below it not read with the reason): what
    training's scan and ``predict`` read from a folder. Dangling links are listed as files, so that they
    are reported unreadable. Links to folders are followed, each real folder once: a link back to a
    folder above (a loop) or to one already read is listed with the reason, not followed. ``folder``
    itself that cannot be listed stops with a :class:`UserError`, not a folder with no files. Hidden and
    system folders (:func:`is_hidden_or_system`) are listed, not read."""
    files: list[str] = []
    not_read: list[tuple[str, str]] = []
    read = {os.path.realpath(folder): folder}  # real folder -> the path it was read through

    def unlisted(exc: OSError) -> None:
        if exc.filename == folder:
            raise UserError(f"cannot read the folder '{folder}': {describe_failure(exc)}")
        not_read.append((exc.filename, describe_failure(exc)))

    for directory, dirs, names in os.walk(folder, onerror=unlisted, followlinks=True):
        here, kept = os.path.realpath(directory), []
        for name in sorted(dirs):
            path = os.path.join(directory, name)
            real = os.path.realpath(path)
            if is_hidden_or_system(name):
                not_read.append((path, NOT_READ))
            elif _named_like_an_image(name) and not _holds_anything(path):
                not_read.append((path, "a folder, not an image file (empty); not read"))
            elif here == real or here.startswith(real.rstrip(os.sep) + os.sep):
                not_read.append((path, f"link to a folder above it ({real}); not followed, it would loop"))
            elif real in read:
                not_read.append((path, f"link to a folder already read as {read[real]}; read once"))
            else:
                read[real] = path
                kept.append(name)
        dirs[:] = kept  # os.walk descends into these only
        files += [os.path.join(directory, name) for name in names]
    return files, not_read


def _named_like_an_image(name: str) -> bool:
    """Whether ``name`` ends as an image file's does (.jpeg, .png, .dcm, ...): a folder so named, empty, is most likely
    an image a copy or unzip made a folder of, and is listed rather than passed over."""
    from PIL import Image

    return name.lower().endswith((*Image.registered_extensions(), *DICOM_SUFFIXES))


def _holds_anything(folder: str) -> bool:
    try:
        return bool(os.listdir(folder))
    except OSError:  # os.walk reports it as it descends
        return True


def walk_stored(folder: str) -> tuple[list[tuple[str, int, int]], list[tuple[str, str]]]:
    """:func:`walk_folder` for a folder on object storage: ((URI, size, mtime_ns) of every file below ``folder``,
    sorted; the hidden or system folders below it, not read, with the reason). Empty when it does not exist."""
    base = folder.rstrip("/")
    fs, inner = storage.filesystem(base)
    with storage.reported(folder, "listed"):
        infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
    files, hidden = [], set()
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        relative = info.path[len(inner) :].lstrip("/")
        below = hidden_folder_of(relative)
        if below is None:
            files.append((storage.join(base, relative), int(info.size or 0), int(info.mtime_ns or 0)))
        else:
            hidden.add(below)
    return sorted(files), [(storage.join(base, below), NOT_READ) for below in sorted(hidden)]


def _scan_cached(root: str, files: list[_File], ignored: pd.DataFrame, cache_dir: str | None, *, progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest with groups, skipped files) of ``files``: from the cache when nothing changed, else read and cached.

    A file that could not be read at all (permission denied, a store's error) may read now although nothing of its
    own changed (``chmod`` of its folder, a store's permission): it is read again on every cache hit."""
    key = _scan_fingerprint(root, files, ignored)
    cached = _load_cached(cache_dir, key)
    if cached is not None:
        manifest, skipped, retry = cached
        return _read_again(manifest, skipped, [f for f in files if f.path in retry]) if retry else (manifest, skipped)
    manifest, skipped = _scan(files, progress=progress)
    skipped = pd.concat([skipped, ignored.assign(retry=False)], ignore_index=True)
    manifest = add_groups(manifest)
    _save_cached(cache_dir, key, manifest, skipped)  # with the retry flags
    return manifest, skipped[SKIPPED_COLUMNS]


def _read_again(manifest: pd.DataFrame, skipped: pd.DataFrame, files: list[_File]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cached scan with ``files`` (skipped as unread) read again: what a fresh scan would give now."""
    read, still = _scan(files, progress=False)
    if not read.empty:
        manifest = add_groups(pd.concat([manifest, read], ignore_index=True).sort_values("path", kind="stable").reset_index(drop=True))
    reasons = dict(zip(still["path"], still["reason"], strict=True))
    skipped = skipped[~skipped["path"].isin(set(read["path"]))].reset_index(drop=True)
    return manifest, skipped.assign(reason=[reasons.get(path, reason) for path, reason in zip(skipped["path"], skipped["reason"], strict=True)])


def _scan_fingerprint(root: str, files: list[_File], ignored: pd.DataFrame) -> str:
    digest = hashlib.sha256(f"v{MANIFEST_VERSION}|{root}|{decoders_installed()}".encode())
    for f in files:
        digest.update(f"{f.path}|{f.size}|{f.mtime_ns}|{f.changed}\n".encode())
    # The folders left out are cached with the scan: one that became readable or unreadable, or went, is a change.
    for path, reason in ignored[["path", "reason"]].itertuples(index=False):
        digest.update(f"ignored|{path}|{reason}\n".encode())
    return digest.hexdigest()[:24]


def content_hash(data: bytes) -> str:
    """A file's identity by its bytes: byte-identical files (one film saved twice) share it, whatever their names, and
    count as one image (one patient group; one row of a set's metrics, in export and in ``predict``)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _inspect_file(file: _File) -> dict:
    row: dict = {"path": file.path, "split": file.split, "label": file.label}
    try:
        data = storage.read_bytes(file.path)
    except Exception as exc:  # noqa: BLE001 - not read at all: may read next time (see _scan_cached)
        return {**row, "reason": describe_failure(exc), "retry": True}
    try:
        if not data:
            return {**row, "reason": "empty file (0 bytes)"}
        info = probe(data, name=file.path)
    except Exception as exc:  # noqa: BLE001 - one bad file is reported, never fatal
        return {**row, "reason": describe_failure(exc)}
    name = storage.name(file.path)
    return {
        **row,
        "reason": None,
        "patient_id": patient_id(name) or file.unnamed_patient,
        "content_hash": content_hash(data),
        "width": info.width,
        "height": info.height,
        "mode": info.mode,
        "check": "; ".join(info.notes),
    }


def _scan(files: list[_File], *, progress: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    from tqdm.auto import tqdm

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(tqdm(
            pool.map(_inspect_file, files),
            total=len(files),
            desc="Checking images",
            unit="img",
            disable=None if progress and len(files) >= 200 else True,  # None: no bar when not a terminal
            leave=False,
        ))
    frame = pd.DataFrame(rows, columns=[*SKIPPED_COLUMNS, "retry", "label", "patient_id", "content_hash", "width", "height", "mode", "check"])
    bad = frame["reason"].notna()
    skipped = frame.loc[bad, [*SKIPPED_COLUMNS, "retry"]].astype({"retry": bool}).reset_index(drop=True)  # retry: see _scan_cached
    good = frame.loc[~bad].drop(columns=["reason", "retry"]).reset_index(drop=True)
    good = good.astype({"label": "int64", "width": "int64", "height": "int64"})
    good["group_id"] = good["patient_id"]
    return good[MANIFEST_COLUMNS], skipped


def _check_classes(folders: dict[tuple[str, int], str], manifest: pd.DataFrame, skipped: pd.DataFrame) -> None:
    """Stop with one line when a class folder holds no readable image. An empty class folder in the optional
    val/ or test/ counts as absent, with the same lines and the same result (val/ set aside, test/ scored n/a):
    folders laid out before they are filled must not stop training. train/ and an external set need both classes."""
    present = set(zip(manifest["split"], manifest["label"], strict=True))
    for key, folder in sorted(folders.items()):
        if key in present:
            continue
        bad = skipped[skipped["path"].str.startswith(folder + ("/" if storage.is_uri(folder) else os.sep))]
        if bad.empty and key[0] in OPTIONAL_SPLITS:
            continue
        detail = f"{len(bad)} file(s) skipped, e.g. {bad['path'].iloc[0]}: {bad['reason'].iloc[0]}" if len(bad) else "it is empty"
        raise UserError(f"'{folder}' has no readable image ({detail}); every class folder needs at least one")


def _cache_paths(cache_dir: str, key: str) -> tuple[str, str]:
    base = storage.join(cache_dir, "manifests")
    return storage.join(base, f"{key}.parquet"), storage.join(base, f"{key}.skipped.json")


def _load_cached(cache_dir: str | None, key: str) -> tuple[pd.DataFrame, pd.DataFrame, set[str]] | None:
    """(manifest, skipped, the skipped files to read again) of a cached scan, or None."""
    if cache_dir is None:
        return None
    manifest_path, skipped_path = _cache_paths(cache_dir, key)
    if not (storage.exists(manifest_path) and storage.exists(skipped_path)):
        return None
    records = storage.read_json(skipped_path)
    retry = {record["path"] for record in records if record.get("retry")}
    return storage.read_frame(manifest_path), pd.DataFrame(records, columns=SKIPPED_COLUMNS), retry


def _save_cached(cache_dir: str | None, key: str, manifest: pd.DataFrame, skipped: pd.DataFrame) -> None:
    if cache_dir is None:
        return
    manifest_path, skipped_path = _cache_paths(cache_dir, key)
    try:
        storage.write_frame(manifest_path, manifest)
        # Written last: its presence marks the pair complete.
        storage.write_text_atomic(skipped_path, skipped.to_json(orient="records"))
    except OSError:  # a read-only shared cache: the scan is only saved time, read again next time
        pass
