"""``python -m cxr_tune.predict --model EXPERIMENT/best IMAGE_OR_DIR ... [--metrics OUT.json] [--operating-point NAME] [--explain OUT_DIR]``: score new X-rays.

``--model``, the images, ``--csv`` and ``--metrics`` may be on object storage (``s3://bucket/experiments/NAME/best``,
``s3://bucket/site/``); ``--explain`` writes its figures to a local folder.

Prints, per image, the PNEUMONIA probability and the label at one of the model's operating points
(``--operating-point``, default ``balanced``: the stored threshold, chosen on validation when it
was trained; ``sens95``, ``spec90`` and the others were chosen on the same set, see
:mod:`cxr_tune.operating_points`), and, with ``--quiet`` too, one line saying how many of the images (a byte-identical copy
once) it called PNEUMONIA at that threshold. Folders are searched recursively. Images under a folder named
NORMAL or PNEUMONIA (the Kermany layout) count as labelled, and for them it also prints
sensitivity, specificity, balanced accuracy, accuracy and AUC with 95 % intervals (Wilson score for
the rates of counts, percentile bootstrap for AUC and balanced accuracy), the
confusion matrix, the rates at every stored operating point, the calibration (ECE and Brier score
with bootstrap intervals) and, where the file names carry them, the subgroups (bacterial/viral
pneumonia, IM-/NORMAL2-IM- normals) and, where the file names name patients (as the splits read them), how many patients
the images come from: the intervals count each image on its own, so a patient's several images make them somewhat
narrow; ``--metrics OUT.json`` writes the same numbers, computed as
export computes a test split's (:mod:`cxr_tune.set_metrics`), on the images as export counts them: byte-identical copies
once, and none of a file filed under both classes (a line says how many; the per-image lines and ``--csv`` list every
file, ``--csv`` with each one's content hash to recount them by); ``--metrics`` also records the intervals' method and the
bootstrap's resamples and seed; a rate the labelled images cannot measure
(AUC, say, when all are of one class) prints as ``n/a``. When scored images chose the model (images of its deciding set, or
of the site it was adapted to, known by their content wherever they are; for a model from before that record, by folder or by each file's real path, links followed) a
line says how many: the numbers are selection-set numbers, optimistic. Unreadable files, and folders
not read (a system folder such as ``@eaDir``, a link that loops), are listed with the reason, counted apart, and skipped. A run of more than 1,024 files says on stderr after each 1,024 how many it has scored; a Ctrl-C
or SIGTERM writes those to ``OUT.partial.csv`` beside ``--csv OUT.csv`` (to stdout for ``--csv -``; an earlier run's ``--csv`` and ``--metrics`` are left as
they were; a run to its end writes ``--csv`` and removes the partial file), says how many of how many files were scored and how
many not, and ends with status 130 (143 for SIGTERM). A stopped run is not resumed: the same command scores every file
again, from the first. Images unlike the training X-rays in a way the file shows (a colour picture,
a nearly blank frame, one smaller than the model's input, a DICOM lateral view or a modality other
than plain radiography) are scored and then listed with the reason, to be checked before their
score is trusted (a line beside the metrics says how many of them they include) (:mod:`cxr_tune.data.input_checks`). Only the pickle-free ONNX export is loaded; ``--explain`` also rebuilds the
networks from ``weights.safetensors`` (never unpickled) for Grad-CAM maps
(:mod:`cxr_tune.saliency`), checked to give the ONNX file's scores on the images they explain.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple, TextIO, TypeVar

import numpy as np
import pandas as pd

from cxr_tune import storage
from cxr_tune.cliargs import help_text, with_exit_statuses
from cxr_tune.data.imaging import decode_gray, describe_failure, input_kind, try_decode_checked
from cxr_tune.data.input_checks import Note
from cxr_tune.data.sources import CLASSES, content_hash, patient_id, walk_folder, walk_stored
from cxr_tune.data.splits import filed_under_both
from cxr_tune.data.synthetic import SYNTHETIC_MARKER
from cxr_tune.errors import UserError, run_cli
from cxr_tune.formatting import against, clock, fmt, for_spreadsheet, interval, interval_in, json_safe, printable
from cxr_tune.operating_points import DEFAULT as DEFAULT_POINT
from cxr_tune.operating_points import known_points, threshold_for
from cxr_tune.selection import selection_images, selection_note
from cxr_tune.serving import (MODEL_FILE, LoadedModel, load_model, note_if_synthetic, other_preprocessing, probabilities, trained_on_synthetic,
                              warn_if_other_preprocessing)
from cxr_tune.set_metrics import INTERVAL_METHODS, bootstrap_with_reasons, clinical_metrics, held_out_metrics, withheld_line

T = TypeVar("T")
#: Files decoded and scored at once: a folder of any size holds one chunk's pixels (1024 of 224 px: 51 MB). A multiple
#: of the scoring and Grad-CAM batches, so that where every file reads, chunks make the batches one piece made.
_CHUNK_FILES = 1024
#: --explain's figures between two progress lines: about 0.7 s each to draw on a CPU (and 0.1 s of Grad-CAM for
#: results/real/best's ensemble of 6), so a line every 40 s or so.
_FIGURES_EVERY = 50

if TYPE_CHECKING:  # torch is imported only for --explain: scoring needs onnxruntime alone, and starts faster without it
    from cxr_tune.modelfile import Members


class Input(NamedTuple):
    """One file to score (a local path, or a URI on object storage), and its label when the folder it was found
    through says one (1 PNEUMONIA, 0 NORMAL)."""

    path: Path | str
    label: int | None
    reason: str = ""  # why it is not read, when that is known before reading (a folder below a named one that was not read)


def collect(inputs: Sequence[str]) -> list[Input]:
    """Every file named on the command line, and every file under the named folders (but hidden files and the
    SYNTHETIC set's own marker file), each once, with its label (:func:`label_of`). Folders are walked as training
    walks them (:func:`~cxr_tune.data.sources.walk_folder`: links to folders followed, hidden and system folders
    such as ``.thumbnails`` or ``@eaDir`` listed, not read). Links that lead nowhere and
    other files that are not plain are kept, so that they are listed as unreadable, as training lists them, and so are
    the folders below a named one that were not read, with the reason; a named folder that cannot be listed is a
    :class:`UserError`.
    A file or folder on object storage (``s3://...``) is listed and read through :mod:`cxr_tune.storage`."""
    files: list[Input] = []
    seen: set[str] = set()
    for item in inputs:
        path = Path(item)
        if storage.is_uri(item) and not (path.exists() or path.is_symlink()):  # a local folder may be called s3:
            found = _stored(item)
        elif path.is_dir():
            listed, not_read = walk_folder(str(path))
            found = [(p, label_of(p, path)) for p in sorted(map(Path, listed)) if not p.name.startswith(".") and p.name != SYNTHETIC_MARKER]
            found += [(Path(p), label_of(Path(p, "x"), path), reason) for p, reason in sorted(not_read)]  # labelled as a file in it would be
        elif path.exists() or path.is_symlink():
            found = [(path, label_of(path))]
        else:
            raise UserError(f"'{item}' does not exist; pass image files or folders")
        for file, label, *reason in found:
            key = file if isinstance(file, str) else os.path.realpath(file) if file.exists() else os.path.abspath(file)
            if key not in seen:  # a file named twice (itself and through its folder) is scored once
                seen.add(key)
                files.append(Input(file, label, *reason))
    if not files:
        raise UserError(f"no files found in {', '.join(inputs)}")
    return files


def _stored(item: str) -> list[tuple[str, int | None] | tuple[str, int | None, str]]:
    """:func:`collect`'s files and labels for a file or folder on object storage."""
    def inside(uri: str) -> PurePosixPath:  # the bucket and key, for the folder names that give a label
        return PurePosixPath(uri.split("://", 1)[1].rstrip("/"))

    if storage.is_dir(item):
        stored, not_read = walk_stored(item)  # hidden and system folders listed once, as a local walk lists them
        found = [(uri, label_of(inside(uri), inside(item))) for uri, _, _ in stored
                 if not storage.name(uri).startswith(".") and storage.name(uri) != SYNTHETIC_MARKER]
        return found + [(uri, label_of(inside(storage.join(uri, "x")), inside(item)), reason) for uri, reason in not_read]
    if storage.is_file(item):
        return [(item, label_of(inside(item)))]
    raise UserError(f"'{item}' does not exist; pass image files or folders")


def label_of(path: PurePath, root: PurePath | None = None) -> int | None:
    """1/0 when the file sits under a PNEUMONIA/NORMAL folder, else None. Found through the folder
    ``root``: the outermost class folder from ``root`` itself down (as training reads a folder: a
    ``normal/`` inside ``PNEUMONIA/`` is still pneumonia), never a folder above ``root``. A file named
    on its own: its own folder's name."""
    parts = (root.name, *path.relative_to(root).parent.parts) if root is not None else (path.parent.name,)
    for part in parts:
        for label, name in enumerate(CLASSES):
            if part.lower() == name.lower():
                return label
    return None


def path_text(path: Path | str) -> str:
    r"""The path as text for tables, files and the console: a name that is not valid UTF-8 (a zip made elsewhere)
    with each undecodable byte escaped as Python writes it (``caf\xe9``), which Arrow-backed tables accept and which keeps
    two names that differ only in such bytes apart (U+FFFD for every one made them one key, and ``compare`` counted them as one).
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class Interrupted(KeyboardInterrupt):
    """A stop (Ctrl-C, SIGTERM) while :func:`predict_each` scored: ``tables`` are its tables of the ``done`` files of the
    chunks scored before it, so that a long run keeps what it scored."""

    def __init__(self, tables: list[tuple[pd.DataFrame, pd.DataFrame]], done: int) -> None:
        super().__init__()
        self.tables, self.done = tables, done


class DrawingInterrupted(KeyboardInterrupt):
    """A stop (Ctrl-C, SIGTERM) while :func:`explain` drew: ``written`` are the figures saved before it, so that ``--csv``
    names those and no other."""

    def __init__(self, written: list[Path]) -> None:
        super().__init__()
        self.written = written


class DrawingFailed(Exception):
    """An error (a full disk, too little memory, any other) while :func:`explain` drew, raised from it: ``written`` are the figures saved before it, so
    that ``--csv`` names those and no other before the error goes on to its own line."""

    def __init__(self, written: list[Path]) -> None:
        super().__init__()
        self.written = written


def predict(model: LoadedModel, files: Sequence[Input], threshold: float | None = None, *,
            progress: Callable[[int], None] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions: path, probability, prediction, check (check_short: its short form), label; skipped: path, reason, kind: "file", or "folder" for one
    below a named folder that was not read), predictions
    at ``threshold`` (default: the model's own); ``check`` says why an image may not be like the
    training X-rays ("" when nothing does). ``progress`` and a stop: see :func:`predict_each`."""
    return predict_each([model], files, [model.threshold if threshold is None else threshold], progress=progress)[0]


def predict_each(models: Sequence[LoadedModel], files: Sequence[Input], thresholds: Sequence[float], *,
                 progress: Callable[[int], None] | None = None) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """:func:`predict` of each model at its threshold on the same files, each file decoded once per image size
    the models take (not once per model), a chunk of files at a time; ``progress`` is called with the number of files
    done after each chunk. A stop raises :class:`Interrupted` with the tables of the chunks done before it. A model
    exported with other preprocessing gets one warning when images whose decoding changed since were among those it
    scored (:func:`warn_if_other_preprocessing`), a stopped run's too."""
    sizes = sorted({model.image_size for model in models})
    read = {size: _Read([], [], [], [], [], []) for size in sizes}
    kinds = any(other_preprocessing(model.meta) for model in models)  # each file's kind, read only when a model needs it
    scores: list[list[np.ndarray]] = [[] for _ in models]
    for start in range(0, len(files) or 1, _CHUNK_FILES):  # no files: one empty chunk, for the empty frames
        before = {size: (len(read[size].files), len(read[size].skipped)) for size in sizes}
        try:
            chunk = [_score_chunk(models, files[start : start + _CHUNK_FILES], size, read[size], kinds=kinds) for size in sizes]
        except KeyboardInterrupt:  # the tables of the chunks done: this one's files, read or not, are left out
            kept = {size: _Read(read[size].files[:n], read[size].checks[:n], read[size].hashes[:n], read[size].skipped[:skipped],
                                read[size].kinds[:n], read[size].shorts[:n])
                    for size, (n, skipped) in before.items()}
            _preprocessing_warnings(models, kept)
            raise Interrupted(_tables(models, kept, scores, thresholds), start) from None
        for scored_at_size in chunk:
            for index, scored in scored_at_size.items():
                scores[index].append(scored)
        if progress is not None:
            progress(min(start + _CHUNK_FILES, len(files)))
    _preprocessing_warnings(models, read)
    return _tables(models, read, scores, thresholds)


def _score_chunk(models: Sequence[LoadedModel], chunk: Sequence[Input], size: int, read: _Read, *, kinds: bool = False) -> dict[int, np.ndarray]:
    """The scores of ``chunk``'s readable images at ``size`` by each model that takes that size, by the model's index."""
    images = _decode_chunk(chunk, size, read, kinds=kinds)
    return {index: probabilities(model, images) for index, model in enumerate(models) if model.image_size == size}


def _preprocessing_warnings(models: Sequence[LoadedModel], read: dict[int, _Read]) -> None:
    """:func:`warn_if_other_preprocessing` of each model exported with other preprocessing, on the files it scored."""
    for model in models:
        if other_preprocessing(model.meta):
            scored = read[model.image_size]
            warn_if_other_preprocessing(model, [(printable(path_text(file.path)), kind) for file, kind in zip(scored.files, scored.kinds, strict=True)])


def _tables(models: Sequence[LoadedModel], read: dict[int, _Read], scores: list[list[np.ndarray]],
            thresholds: Sequence[float]) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Each model's :func:`predict` tables from what decoding found at its image size and its scores."""
    return [_frames(read[model.image_size], np.concatenate(scored) if scored else np.zeros(0, np.float32), threshold)
            for model, scored, threshold in zip(models, scores, thresholds, strict=True)]


class _Read(NamedTuple):
    """What decoding found, in the files' order: the files read, why each may be unlike the training X-rays, their content
    hashes, the unread ones, each read file's :func:`input_kind` ("" when not asked for), and the why in short (an
    ``--explain`` caption's: each :class:`~cxr_tune.data.input_checks.Note`'s ``short``)."""

    files: list[Input]
    checks: list[str]
    hashes: list[str]
    skipped: list[dict[str, str]]
    kinds: list[str]
    shorts: list[str]


def _decode_chunk(chunk: Sequence[Input], size: int, read: _Read, *, kinds: bool = False) -> np.ndarray:
    """The readable images of ``chunk`` at ``size``, stacked for scoring; which were read and why the others
    were not is added to ``read``, so that only one chunk's pixels are ever held."""
    read.skipped.extend({"path": path_text(file.path), "reason": file.reason, "kind": "folder"} for file in chunk if file.reason)
    chunk = [file for file in chunk if not file.reason]
    images = []
    decoded = _decode_all([file.path for file in chunk], lambda path: decode_hashed(path, size, kinds=kinds))
    for file, (image, checks, reason, digest, kind) in zip(chunk, decoded, strict=True):
        if image is None:
            read.skipped.append({"path": path_text(file.path), "reason": reason, "kind": "file"})
        else:
            images.append(image)
            read.files.append(file)
            read.checks.append("; ".join(checks))
            read.shorts.append("; ".join(check.short for check in checks))
            read.hashes.append(digest)
            read.kinds.append(kind)
    return np.stack(images) if images else np.zeros((0, size, size), np.uint8)


def decode_hashed(path: Path | str, size: int, *, kinds: bool = False) -> tuple[np.ndarray | None, list[Note], str | None, str | None, str]:
    """:func:`try_decode_checked` of the file's bytes, their :func:`content_hash` (None for a file not read) and, when
    ``kinds``, the :func:`input_kind` of a file decoded ("" otherwise): the file is read once for all."""
    try:
        data = storage.read_bytes(os.fspath(path))
    except Exception as exc:  # noqa: BLE001 - one unreadable file is listed, never fatal
        return None, [], describe_failure(exc), None, ""
    image, checks, reason = try_decode_checked(data, size, name=os.fspath(path))
    return image, checks, reason, content_hash(data), input_kind(data, name=os.fspath(path)) if kinds and image is not None else ""


def _frames(read: _Read, scores: np.ndarray, threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`predict`'s two tables from what decoding found and the scores of the files read."""
    frame = pd.DataFrame({
        "path": [path_text(file.path) for file in read.files],
        "file": pd.Series([file.path for file in read.files], dtype=object),  # the Path itself, to read the image again (--explain)
        "probability": scores,
        "prediction": (scores >= threshold).astype(int),
        "check": read.checks,
        "check_short": read.shorts,  # the same, each reason's first words (an --explain caption's)
        "content_hash": read.hashes,
        "label": [file.label for file in read.files],
    })
    return frame, pd.DataFrame(read.skipped, columns=["path", "reason", "kind"])


def labelled_metrics(frame: pd.DataFrame, threshold: float, points: dict[str, dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """What the labelled images measure at ``threshold`` (the rates with 95 % intervals, AUC,
    calibration, the rates at the model's other operating points ``points``, the subgroups): the
    computation export stores for a test split (:mod:`cxr_tune.set_metrics`), on the images as export counts
    a set (:func:`distinct_labelled`; ``copies_counted_once`` and ``filed_under_both`` say what that dropped),
    or None when no image is labelled. Taken in path order, as export takes a split's (its manifest is sorted
    by path): the bootstrap intervals follow the rows' order, and the order the images were named in must change nothing."""
    labelled, copies, both = distinct_labelled(frame)
    if labelled.empty:
        return None
    labels, scores = labelled["label"].astype(int).to_numpy(), labelled["probability"].to_numpy()
    paths = labelled["path"].astype(str).tolist()
    flagged = int((labelled["check"] != "").sum()) if "check" in labelled else 0
    return {**held_out_metrics(labels, scores, threshold), **clinical_metrics(paths, labels, scores, threshold, points or {}),
            "copies_counted_once": copies, "filed_under_both": both, "flagged": flagged, **patient_counts(paths)}


def onnx_hash(model: LoadedModel) -> str | None:
    """The SHA-256 of the model's ONNX file as its ``model.json`` records it, which :func:`load_model` checked against the file."""
    files = model.meta.get("files", {})
    return files.get(model.meta.get("model_file", MODEL_FILE), files.get(MODEL_FILE))


def model_record(model: LoadedModel) -> dict[str, Any]:
    """Which model ran, as ``--metrics`` (predict's and compare's) records it: its resolved folder, the ONNX file and its SHA-256
    (:func:`onnx_hash`), when it was exported and, for an adapted model, adapted; a folder's name alone is no proof of
    which model was in it."""
    record = {"folder": storage.resolve(str(model.folder)), "model_file": model.meta.get("model_file", MODEL_FILE), "sha256": onnx_hash(model),
              "exported_at": model.meta.get("exported_at")}
    if isinstance(model.meta.get("adaptation"), dict):
        record["adapted_at"] = model.meta["adaptation"].get("adapted_at")
    return record


def interval_record() -> dict[str, Any]:
    """How the intervals were computed, as ``--metrics`` (predict's and compare's) records it: the method in words and the
    bootstrap's resamples and seed, read from the function that draws them so that the record cannot drift from it (the
    paired and calibration bootstraps take the same; a test holds them to it)."""
    drawn = inspect.signature(bootstrap_with_reasons).parameters  # the function that draws them (bootstrap_intervals wraps it)
    return {"method": INTERVAL_METHODS, "resamples": drawn["resamples"].default, "seed": drawn["seed"].default}


def patient_counts(paths: Sequence[str]) -> dict[str, int | None]:
    """How many patients the counted images (``paths``) come from, by the splits' rule for a file name
    (:func:`cxr_tune.data.sources.patient_id`): every interval counts images as independent, and a patient's several images
    are not, so a reader needs both numbers. ``patients`` is None when no file name names a patient (unknown, not one each)."""
    named = [patient for path in paths if (patient := patient_id(storage.name(path))) is not None]
    return {"images": len(paths), "images_naming_a_patient": len(named), "patients": len(set(named)) if named else None}


def patient_lines(counts: dict[str, Any]) -> list[str]:
    """:func:`patient_counts` beside the intervals (none when no file name names a patient)."""
    images, named, patients = counts.get("images"), counts.get("images_naming_a_patient"), counts.get("patients")
    if patients is None:
        return []
    some = f" from {patients} patients" if named == images else f"; the {named} whose file names name a patient are from {patients} patients"
    narrow = " (patients with several images make these intervals somewhat narrow)" if patients < named else ""
    return [f"  per image: {images} images{some}{narrow}"]


#: Why a set whose labelled images were all read has no metrics: each has an identical copy under the other class.
FILED_UNDER_BOTH = "every labelled image read has an identical copy filed under the other class, so none has a label"


def distinct_labelled(frame: pd.DataFrame) -> tuple[pd.DataFrame, int, int]:
    """(the labelled rows as export counts a set's images, in path order; how many byte-identical copies were dropped;
    how many files were left out as filed under both classes). As the splits do: a file whose identical copy is filed
    under the other class has no label (:func:`cxr_tune.data.splits.filed_under_both`), and copies of one file count
    once, the first in path order. A table without ``content_hash`` (built by hand) counts each path as its own file."""
    labelled = frame.dropna(subset=["label"]).sort_values("path", kind="stable")
    if "content_hash" not in labelled:
        labelled = labelled.assign(content_hash=labelled["path"])
    both = filed_under_both(labelled)
    kept = labelled[~both]
    distinct = kept.drop_duplicates("content_hash")
    return distinct, len(kept) - len(distinct), int(both.sum())


def describe(metrics: dict[str, Any], point: str) -> str:
    """:func:`labelled_metrics` for people."""
    ci = metrics["ci95"]
    normal, pneumonia = metrics["class_counts"]
    return "\n".join([
        f"Labelled images: {normal + pneumonia} (NORMAL {normal}, PNEUMONIA {pneumonia}) at threshold {metrics['threshold_used']:.4f}"
        + f" (operating point {point}); {INTERVAL_METHODS}",
        *distinct_lines(metrics),
        *patient_lines(metrics),
        *flagged_lines(metrics.get("flagged", 0)),
        f"  sensitivity {_rate(metrics['sensitivity'])}{interval_in(ci, 'sensitivity')}  specificity {_rate(metrics['specificity'])}"
        f"{interval_in(ci, 'specificity')}  balanced accuracy {_rate(metrics['balanced_accuracy'])}{interval_in(ci, 'balanced_accuracy')}",
        f"  accuracy {_rate(metrics['accuracy'])}{interval_in(ci, 'accuracy')}  AUC {_rate(metrics['auc'])}{interval_in(ci, 'auc')}",
        *[f"  {line}" for line in [withheld_line(metrics.get("ci95_withheld", {}))] if line],
        "  confusion matrix (rows: true, columns: predicted)",
        "                 NORMAL  PNEUMONIA",
        f"    NORMAL     {metrics['tn']:7d}  {metrics['fp']:9d}",
        f"    PNEUMONIA  {metrics['fn']:7d}  {metrics['tp']:9d}",
        *_operating_point_lines(metrics["operating_points"]),
        *calibration_lines(metrics["calibration"]),
        *subgroup_lines(metrics.get("subgroups")),
    ])


def calls_line(frame: pd.DataFrame, threshold: float, point: str) -> str:
    """How many of the scored images were called PNEUMONIA, at which threshold and operating point: the one line every run
    prints, labelled or not. Images counted as the metrics count them (:func:`distinct_labelled`): a byte-identical copy once
    (it has the same score, so the same call), said when there is one; the per-image lines and ``--csv`` list every file."""
    distinct = frame.drop_duplicates("content_hash")
    copies, called = len(frame) - len(distinct), int(distinct["prediction"].sum())
    line = (f"{called} of {len(distinct)} images called PNEUMONIA ({called / len(distinct):.0%}) at threshold {fmt(threshold)} "
            f"(operating point {point})")
    return line + (f"; {copies} byte-identical cop{'y' if copies == 1 else 'ies'} counted once" if copies else "")


def distinct_lines(metrics: dict[str, Any], listed: str = " (the per-image lines and --csv list every file)") -> list[str]:
    """What counting images as export counts them left out of the metrics (nothing when no file was copied);
    ``listed`` says where every file still shows."""
    copies, both = metrics.get("copies_counted_once", 0), metrics.get("filed_under_both", 0)
    parts = [f"{copies} byte-identical cop{'y' if copies == 1 else 'ies'} of another labelled file counted once" if copies else "",
             f"{both} file(s) left out whose identical copy is filed under the other class (no label)" if both else ""]
    parts = [part for part in parts if part]
    return [f"  as export counts a set: {'; '.join(parts)}{listed}"] if parts else []


def flagged_lines(flagged: int) -> list[str]:
    """A line saying how many images the numbers include that are unlike the training X-rays (none when none is)."""
    if not flagged:
        return []
    return [f"  these numbers include {flagged} image(s) flagged to check first (unlike the chest X-rays the model learned from; listed below)"]


def _operating_point_lines(points: dict[str, dict[str, Any]]) -> list[str]:
    """Sensitivity and specificity at each of the model's stored thresholds (none for a model without them)."""
    if not points:
        return []
    return ["  operating points (threshold: sensitivity / specificity; --operating-point NAME): "
            + ", ".join(f"{name} {fmt(point['threshold'])}: {fmt(point['sensitivity'], 3)} / {fmt(point['specificity'], 3)}"
                        for name, point in points.items())]


def calibration_lines(calibration: dict[str, Any]) -> list[str]:
    """ECE and Brier score of the labelled images, with 95 % bootstrap intervals (``[n/a]`` where the images cannot give one,
    and why when a rule withheld it: too few images of a class)."""
    ci = calibration["ci95"]
    return [f"  calibration: ECE {fmt(calibration['ece'])}{interval(ci.get('ece')) or ' [n/a]'} ({calibration['bins']} bins), "
            f"Brier {fmt(calibration['brier'])}{interval(ci.get('brier')) or ' [n/a]'}",
            *[f"  {line}" for line in [withheld_line(calibration.get("ci95_withheld", {}))] if line]]


def subgroup_lines(groups: dict[str, dict[str, Any]] | None) -> list[str]:
    """Sensitivity per pneumonia type and specificity per normal batch, from the file names (none when they carry no group).
    A group with no image is left out, as the model card leaves it out (it printed "n/a (0 of 0)")."""
    if groups is None:
        return []
    return ["  subgroups (from file names; 95 % Wilson intervals; a group with no image is left out):"] + [
        f"    {group['description']:<26} {group['rate']:<11} {fmt(group['value'])}{interval(group['ci95'])}  ({group['correct']} of {group['n']})"
        for group in groups.values() if group["n"]]


def check_lines(checks: dict[str, str]) -> list[str]:
    """The lines naming the images to check before trusting their score (``checks``: path to why, "" for most)."""
    flagged = {path: check for path, check in checks.items() if check}
    if not flagged:
        return []
    return [f"Check {len(flagged)} image(s) before trusting the score: unlike the chest X-rays the model learned from",
            *(f"  {printable(path)}: {check}" for path, check in flagged.items())]


def skipped_count(skipped: pd.DataFrame) -> str:
    """``2 unreadable file(s) and 1 folder(s) not read``: a skipped table's rows (path, reason, kind) counted by kind, a
    folder (a system folder, a link loop) never as a file; a table without ``kind`` holds files only."""
    folders = int((skipped["kind"] == "folder").sum()) if "kind" in skipped else 0
    files = len(skipped) - folders
    return " and ".join(part for part in (f"{files} unreadable file(s)" if files else "", f"{folders} folder(s) not read" if folders else "") if part)


def skipped_lines(skipped: pd.DataFrame) -> list[str]:
    """The lines naming every file that could not be read as an image and every folder not read, each with the reason
    (``skipped``: path, reason, kind; none when every file was read): what ``predict`` and ``adapt`` print."""
    if skipped.empty:
        return []
    return [f"Skipped {skipped_count(skipped)}:",
            *(f"  {printable(path)}: {reason}" for path, reason in skipped[["path", "reason"]].itertuples(index=False))]


def explain(model: LoadedModel, members: Members, frame: pd.DataFrame, out_dir: str, point: str, *,
            progress: Callable[[int], None] | None = None) -> list[Path]:
    """One PNG per scored image in ``out_dir``: the image, its Grad-CAM map over it, the
    probability and the label at operating point ``point`` (and the folder's label, if any), and a line saying what the
    probability is (:func:`score_words`), which model drew it (:func:`model_words`), whether the image chose that model
    (:func:`~cxr_tune.selection.selection_images`) and its input check, if any, in short (``check first: colour image``). Stops with one line before
    a chunk's maps when ``members`` and ``model.json`` no longer rebuild the ONNX file's scores of its images (an edited
    ``model.json``: the maps would be another network's). ``progress`` is called with the number of figures saved after each."""
    from cxr_tune.modelfile import check_rebuilt
    from cxr_tune.saliency import cam_grid, explain_figure, grad_cam, named

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threshold = threshold_for(model.meta, point)
    grid = cam_grid(members)  # the same networks for every image
    about = f"{score_words(model.meta)}; {model_words(model)}"
    names = explanation_names(frame["path"])
    frame = frame.assign(chose=selection_images(model.meta, list(frame["content_hash"]), [os.fspath(file) for file in frame["file"]]))
    written: list[Path] = []
    try:
        for start in range(0, len(frame), _CHUNK_FILES):  # as predict() reads them: one chunk's pixels and maps held at a time
            part = frame.iloc[start : start + _CHUNK_FILES]
            images = np.stack(_decode_all(part["file"], lambda path: decode_gray(path, model.image_size)))  # pixels only: predict() checked them
            check_rebuilt(model, members, images)
            maps = grad_cam(members, images)
            for row, name, image, heat in zip(part.itertuples(), names[start : start + _CHUNK_FILES], images, maps, strict=True):
                truth = "" if pd.isna(row.label) else f"; labelled {CLASSES[int(row.label)]}"
                probability, cut = against(row.probability, threshold, 4)  # as the console's line gives it
                marks = ["selection-set image (it chose this model)" if row.chose else "",
                         f"check first: {row.check_short}" if row.check_short else ""]  # the whole why: the console's list, --csv
                caption = (f"{named(row.path)}\nP(PNEUMONIA) {probability}: {CLASSES[row.prediction]} at {point} "
                           f"(threshold {cut}){truth}\n{'; '.join([about, *filter(None, marks)])}")  # with its folder: two may hold one name
                explain_figure(out / name, image, heat, caption, grid=grid)
                written.append(out / name)  # once saved: a stop in the save leaves no figure (write_bytes_atomic)
                if progress is not None:
                    progress(len(written))
    except KeyboardInterrupt:
        raise DrawingInterrupted(written) from None
    except Exception as exc:  # a full disk, a MemoryError in a chunk's Grad-CAM, a drawing error: --csv still names the figures saved
        raise DrawingFailed(written) from exc
    return written


def score_words(meta: dict[str, Any]) -> str:
    """What an ``--explain`` figure's P(PNEUMONIA) is: without a calibration map a score, which only its threshold
    reads; with one, a probability at the prevalence of the set the map was fitted on, not at the reader's site."""
    calibration = meta.get("calibration") or {}
    if calibration.get("method", "none") == "none":
        return "the P is a score, not a calibrated risk"
    return f"the P is calibrated ({calibration['method']}) on the {calibration.get('fitted_on', 'deciding')} set, not a risk at another prevalence"


def model_words(model: LoadedModel) -> str:
    """Which model drew a figure, short enough for a caption: its folder's name and the first 8 hex digits of
    model.onnx's SHA-256 (:func:`model_record`: a folder's name alone is no proof of which model was in it)."""
    record = model_record(model)
    digest = f" (sha256 {record['sha256'][:8]})" if record["sha256"] else ""
    return f"model {printable(storage.name(record['folder']))}{digest}"


def explanation_names(paths: Iterable[str]) -> list[str]:
    """Each image's figure name under ``--explain``: its file name's stem as a PNG, numbered where
    the same name comes again (NORMAL/x.jpeg, PNEUMONIA/x.jpeg: x.png, x-1.png)."""
    names: list[str] = []
    used: set[str] = set()
    for path in paths:
        name, copy = Path(path).stem, 1
        while name in used:
            name, copy = f"{Path(path).stem}-{copy}", copy + 1
        used.add(name)
        names.append(f"{name}.png")
    return names


def _decode_all(files: Iterable[Path | str], decode: Callable[[Path | str], T]) -> list[T]:
    """``decode`` of every file, in order, a few at a time (decoding releases the GIL)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(decode, files))


def _rate(value: float) -> str:
    """Four decimals, or ``n/a`` when the images cannot measure it (a class with no images gives NaN)."""
    return f"{value:.4f}" if np.isfinite(value) else "n/a"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.predict", description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders, local or on object storage (s3://...; searched recursively)")
    parser.add_argument("--model", required=True, help="export folder with model.onnx and model.json, local or on object storage, e.g. results/<experiment>/best or s3://bucket/experiments/<experiment>/best, or its .onnx file (loaded exactly, with the model.json beside it)")
    parser.add_argument("--csv", default=None, metavar="OUT.csv", help="also write path, label (0/1 as the NORMAL/PNEUMONIA folder says, empty for an image under neither; only when "
                             "some image is labelled), probability, prediction (0/1), threshold (the operating point's, which made prediction), "
                             "check (why to check the image first; empty for most) to this CSV file, with --explain the name of each "
                             "image's figure (explanation; empty for one a stop left undrawn), and last each file's content_hash (byte-identical copies share it: "
                             "the metrics and the PNEUMONIA count take one row per hash); '-': to stdout, the CSV alone (every other "
                             "line goes to stderr; with --explain, once, after the figures); a stopped run writes the rows it scored "
                             "to OUT.partial.csv instead (to stdout for '-')")
    parser.add_argument("--metrics", default=None, metavar="OUT.json",
                        help="also write what the labelled images measure to this JSON file: the rates and AUC with 95 %% intervals (Wilson score for "
                             "sensitivity, specificity and accuracy; percentile bootstrap for AUC and balanced accuracy), "
                             "the confusion counts, calibration, the rates at every operating point and the subgroups (the fields of model.json's "
                             "test entry), the images counted and the patients their file names name (images, patients, "
                             "images_naming_a_patient), the files skipped and flagged with the reason (skipped_files, flagged_files), with the model that ran (model_records: its resolved folder, model.onnx's SHA-256, exported_at and "
                             "adapted_at), the inputs scored (resolved) and whether they chose the model (selection_set; selection_sets: "
                             "the note, as compare writes it); needs images under NORMAL/ or PNEUMONIA/ folders; '-': to stdout, the JSON "
                             "alone (every other line goes to stderr)")
    parser.add_argument("--quiet", action="store_true", help="print only the summary, not one line per image")
    parser.add_argument("--operating-point", default=DEFAULT_POINT, metavar="NAME",
                        help="which of the model's thresholds decides: balanced (its own), sens90, sens95, sens98 (sensitivity >= 0.90/0.95/0.98 "
                             "on the set that chose them), spec90, spec95 (specificity >= 0.90/0.95); the model's model.json lists them "
                             f"(default: {DEFAULT_POINT})")
    parser.add_argument("--explain", default=None, metavar="OUT_DIR",
                        help="also write one PNG per image to OUT_DIR, a new or empty folder (one holding files is refused): the image, its Grad-CAM map (and the grid of cells it resolves), the "
                             "probability and the label at the operating point, which model drew it and whether the image chose it "
                             "(needs the export's weights.safetensors; figures take about a second each on a CPU, and a line on stderr every "
                             f"{_FIGURES_EVERY} says how many are drawn; default: off)")
    return with_exit_statuses(parser)


def _check_outputs_apart(args: argparse.Namespace) -> None:
    """Refuse two output flags naming one path, before any work: the later write replaced the earlier
    (``--csv X --metrics X`` kept only the JSON, status 0), or ``--explain`` failed on the file already written."""
    named: list[tuple[str, str]] = []
    for flag, path in (("--csv", args.csv), ("--metrics", args.metrics), ("--explain", args.explain)):
        if path:
            same = next((earlier for earlier, other in named if storage.same_folder(path, other)), None)
            if same:
                raise UserError(f"{same} and {flag} name the same path '{path}'; give each output its own")
            named.append((flag, path))


def _check_figure_folder(out: str) -> None:
    """Refuse an ``--explain`` folder that holds files, before any work, as export refuses an ``--out`` that is not a model:
    figure names come from file names (``IM-0001-0001.png``, another day's image of the same name), so a second run's would
    replace some of the first's and sit beside the rest, and the first run's ``--csv`` would name figures of other images."""
    held = sorted(os.listdir(out)) if os.path.isdir(out) else []
    if held:
        named = ", ".join(printable(name) for name in held[:3]) + (", ..." if len(held) > 3 else "")
        raise UserError(f"--explain '{out}' holds files ({len(held)}: {named}); this run's figures would replace those of the same name "
                        "and sit beside the rest, so name a new or empty folder")


#: ``--csv -`` or ``--metrics -``: that file goes to stdout, as Unix tools read ``-``.
STDOUT = "-"


@contextlib.contextmanager
def stdout_for(*paths: str | None) -> Iterator[TextIO]:
    """Where an output flag's ``-`` is written (predict's and compare's): stdout, kept for that file alone while the block
    runs, its every other line going to stderr, so the pipe reads the file as it would the file (a file named '-' was written)."""
    out = sys.stdout
    if STDOUT not in paths:
        yield out
        return
    with contextlib.redirect_stdout(sys.stderr):
        yield out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stdout_for(args.csv, args.metrics) as out:
        return _main(args, out)


def _main(args: argparse.Namespace, out: TextIO) -> int:
    """``main`` after parsing; ``out``: where a ``--csv -`` or ``--metrics -`` goes."""
    for path in (args.model, *args.inputs):
        storage.check_plain_uri(path)
    _check_outputs_apart(args)
    if args.csv and args.csv != STDOUT:
        storage.check_writable(args.csv, "--csv", folder=False)
    if args.metrics and args.metrics != STDOUT:
        storage.check_writable(args.metrics, "--metrics", folder=False)
    if args.explain:
        if storage.is_uri(args.explain):  # the figures are written with pathlib: s3://... would become a local folder named s3:
            raise UserError(f"--explain '{args.explain}': the figures go to a local folder; copy them to object storage afterwards")
        storage.check_writable(args.explain, "--explain")
        _check_figure_folder(args.explain)
    model = load_model(args.model)
    threshold = threshold_for(model.meta, args.operating_point)  # an unknown name stops here, before any image is read
    point = (model.meta.get("operating_points") or {}).get(args.operating_point, {})
    if point.get("gives_up"):
        print(f"Note: on the set that chose it, operating point {args.operating_point} has {point['gives_up']} 0: it calls every image "
              f"{'PNEUMONIA' if point['gives_up'] == 'specificity' else 'NORMAL'}.", file=sys.stderr)
    for rate, floor in (point.get("floor") or {}).items() if "misses_floor" in point else ():
        print(f"Note: on the set that chose it, operating point {args.operating_point} keeps {rate} at {point['misses_floor']:.3f}, "
              f"below its floor {floor:g}: images scored exactly 1.0 cannot fall below any threshold.", file=sys.stderr)
    members = _explainable(model) if args.explain else None
    note_if_synthetic([args.model] if trained_on_synthetic(model.meta) else [])
    files = collect(args.inputs)
    if args.metrics and all(file.label is None for file in files):
        raise UserError(f"--metrics needs labelled images; none of the {len(files)} file(s) in {', '.join(args.inputs)} sits under a "
                        "NORMAL/ or PNEUMONIA/ folder")
    try:
        frame, skipped = predict(model, files, threshold, progress=_progress_lines(len(files)))
    except Interrupted as stop:  # what the chunks done scored is kept apart from a complete run's files, and said
        frame, skipped = stop.tables[0]
        _keep_partial(args, frame, skipped, threshold, stop.done, len(files), out)
        raise
    # The files first: a console that goes away (output piped into head) must not cost them. The figures come last (the slow
    # part): --csv names none until they are drawn, and then those drawn; --csv - (stdout) is written once, after them (_draw).
    figures_follow = members is not None and not frame.empty
    if args.csv and not (figures_follow and args.csv == STDOUT):
        _write_csv(args.csv, frame, threshold, figures=() if members is not None else None, out=out)
    if args.csv and (partial := partial_path(args.csv)) != args.csv and storage.is_file(partial):
        storage.remove(partial)  # an earlier stop's rows: this complete file replaces them (a folder of that name is the user's)
    points = {name: {"threshold": value} for name, value in known_points(model.meta).items()}
    metrics = labelled_metrics(frame, threshold, points)
    unlabelled_copies = metrics is None and frame["label"].notna().any()  # read, but every one filed under both classes
    if metrics is None and args.metrics:
        if unlabelled_copies:
            raise UserError(f"--metrics: {FILED_UNDER_BOTH} in {', '.join(args.inputs)}; {args.metrics} not written")
        raise UserError(f"--metrics: none of the labelled file(s) in {', '.join(args.inputs)} could be read as an image "
                        f"({skipped_count(skipped)}: {', '.join(skipped['path'].head(3).map(printable))}{', ...' if len(skipped) > 3 else ''}); {args.metrics} not written")
    counted = distinct_labelled(frame)[0]  # the note counts the images the metrics count, as compare's does
    note = selection_note(model.meta, args.inputs, counted["content_hash"], [os.fspath(file) for file in counted["file"]]) if metrics is not None else None
    if metrics is not None and args.metrics:
        # What was scored, and the note printed beside the numbers, named as compare --metrics names it (selection_sets).
        record = {"model": args.model, "model_records": {args.model: model_record(model)}, "inputs": [storage.resolve(item) for item in args.inputs],
                  "operating_point": args.operating_point,
                  "selection_set": note is not None, "selection_sets": {args.model: note} if note else {},
                  "scored": len(frame), "skipped": len(skipped), "intervals": interval_record(), **metrics,
                  # which files, and why, as the console lists them below (the counts above stay for readers of them)
                  "skipped_files": skipped[["path", "reason", "kind"]].to_dict("records"),
                  "flagged_files": [{"path": path, "reason": check} for path, check in zip(frame["path"], frame["check"], strict=True) if check]}
        write_output(args.metrics, json.dumps(json_safe(record), indent=2), out)
    written = _draw(args, model, members, frame, threshold, out) if figures_follow else None
    if not args.quiet and not frame.empty:
        print(f"{'P(PNEUMONIA)':<12}  {'predicted':<9}  file")  # once: what each line's number and word are
        for row in frame.itertuples():
            print(f"{row.probability:<12.4f}  {CLASSES[row.prediction]:<9}  {printable(row.path)}")
    if args.csv:
        print(f"Wrote {len(frame)} predictions to {output_name(args.csv)}")
    if not frame.empty:
        print(calls_line(frame, threshold, args.operating_point))
    if unlabelled_copies:
        print(f"No metrics: {FILED_UNDER_BOTH}.")
    if metrics is not None:
        if note:
            print(f"Note: {note}.")
        print(describe(metrics, args.operating_point))
        if args.metrics:
            print(f"Wrote the labelled images' metrics to {output_name(args.metrics)}")
    if written is not None:
        print(f"Wrote {len(written)} Grad-CAM explanation(s) to {args.explain}")
    for line in check_lines(dict(zip(frame["path"], frame["check"], strict=True))):
        print(line)
    for line in skipped_lines(skipped):
        print(line)
    if frame.empty:
        raise UserError("none of the files could be read as an image")
    return 0


def output_name(path: str) -> str:
    """An output flag's path as the console names it ("stdout" for ``-``)."""
    return "stdout" if path == STDOUT else path


def write_output(path: str, text: str, out: TextIO) -> None:
    """An output file, or ``out`` for ``-``: written whole, flushed before the console's lines on stderr."""
    if path == STDOUT:
        out.write(text if text.endswith("\n") else text + "\n")
        out.flush()
    else:
        storage.write_text_atomic(path, text)


def _draw(args: argparse.Namespace, model: LoadedModel, members: Members, frame: pd.DataFrame, threshold: float,
          out: TextIO) -> list[Path]:
    """:func:`explain`'s figures, then ``--csv`` again naming each (``--csv -``: its one write, to ``out``); a stop while they
    are drawn rewrites ``--csv`` naming the figures saved (the rest empty) and says on stderr what was written and how many
    figures there are; an error (a full disk) does the same, then goes on to its own line (:func:`cxr_tune.errors.out_of_room`)."""
    try:
        written = explain(model, members, frame, args.explain, args.operating_point,
                          progress=_progress_lines(len(frame), "drew", "Grad-CAM figures", every=_FIGURES_EVERY))
    except (DrawingInterrupted, DrawingFailed) as stop:
        files = []
        if args.csv:
            _write_csv(args.csv, frame, threshold, figures=[path.name for path in stop.written], out=out)
            files.append(f"the {len(frame)} predictions to {output_name(args.csv)} (its explanation column names the {len(stop.written)} figure(s) drawn)")
        if args.metrics:
            files.append(f"the metrics to {output_name(args.metrics)}")
        kept = f"; wrote {' and '.join(files)}" if files else ""
        ended = "Interrupted" if isinstance(stop, DrawingInterrupted) else "Stopped by an error"
        print(f"{ended} after drawing {len(stop.written)} of {len(frame)} Grad-CAM figure(s) in {args.explain}{kept}; to draw them all, "
              "run again with a new or empty --explain folder", file=sys.stderr)
        if isinstance(stop, DrawingFailed):  # the error itself, with its own traceback where it is not a full disk's
            raise stop.__cause__ from None
        raise
    if args.csv:
        _write_csv(args.csv, frame, threshold, figures=[path.name for path in written], out=out)
    return written


def partial_path(csv: str) -> str:
    """Where a stopped run writes the rows it scored, beside ``--csv``: ``out.csv`` -> ``out.partial.csv``, so that no
    partial table carries the name of a complete one, nor replaces an earlier run's (whose ``--metrics`` describe it).
    A stream (``-``: stdout, ``/dev/stdout``) is written into as given."""
    if csv == STDOUT or storage.is_stream(csv):
        return csv
    stem, dot, suffix = storage.name(csv).rpartition(".")
    name = f"{stem}.partial.{suffix}" if dot and stem else f"{storage.name(csv)}.partial"
    return csv[: len(csv) - len(storage.name(csv))] + name if storage.is_uri(csv) else str(Path(csv).with_name(name))


def _keep_partial(args: argparse.Namespace, frame: pd.DataFrame, skipped: pd.DataFrame, threshold: float, done: int, total: int,
                  out: TextIO) -> None:
    """A stop while scoring: the rows of the chunks done go to :func:`partial_path` (an earlier stop's, when none was
    scored, are removed: they are not this run's), ``--csv`` and ``--metrics`` stay as an earlier run left them, and a line on
    stderr says how many files were scored and how many not, where the rows went, and that a re-run starts again."""
    counts = f"{len(frame)} scored" + (f"; not scored: {skipped_count(skipped)} (listed below)" if len(skipped) else "")
    if not args.csv:
        kept = "pass --csv OUT.csv to keep the scores of a long run"
    else:
        partial = partial_path(args.csv)
        if not frame.empty:
            _write_csv(partial, frame, threshold, out=out)  # no figure is drawn yet
        stale = frame.empty and partial != args.csv and storage.is_file(partial)  # an earlier stop's rows, not this run's
        if stale:
            storage.remove(partial)
        kept = (f"wrote their {len(frame)} predictions to {output_name(partial)}" if len(frame) else
                f"nothing written (an earlier stop's {partial} removed)" if stale else "nothing written")
        if partial != args.csv:
            left = [path for path in (args.csv, args.metrics) if path and path != STDOUT]  # '-' holds nothing to leave
            kept += f" ({' and '.join(left)} left as {'they were' if len(left) > 1 else 'it was'})"
    print(f"Interrupted after {done} of {total} files: {counts}; {kept}; a stopped run is not resumed: the same command "
          f"scores all {total} files again", file=sys.stderr)
    for line in skipped_lines(skipped):
        print(line, file=sys.stderr)


def _write_csv(path: str, frame: pd.DataFrame, threshold: float, *, figures: Collection[str] | None = None, out: TextIO) -> None:
    """``--csv``: the scored images' rows with the ``threshold`` that made ``prediction``, the folder's ``label`` (0 NORMAL,
    1 PNEUMONIA, as export's ``*_predictions.csv``; empty where no folder says one) when any image is labelled, with
    ``--explain`` (``figures``: the names of the figures saved) each one's figure name, empty for an image whose figure is not
    among them, and its ``content_hash``
    (:func:`~cxr_tune.data.sources.content_hash`), by which a reader recounts the images as the metrics and the calls count them."""
    labelled = frame["label"].notna().any()
    columns = ["path", *(["label"] if labelled else []), "probability", "prediction", "threshold", "check"]
    named: dict[str, list[str]] = {}
    if figures is not None:  # which figure is which image's (file names repeat across folders); never one not saved
        drawn = set(figures)
        named["explanation"] = [name if name in drawn else "" for name in explanation_names(frame["path"])]
        columns.append("explanation")
    columns.append("content_hash")  # last, the other columns as before: rows of one hash are one image, counted once
    # The labels as 0/1 and empty, not 0.0/1.0 beside NaN.
    rows = frame.assign(threshold=threshold, label=pd.array(frame["label"], dtype="Int64"), **named)
    write_output(path, for_spreadsheet(rows[columns]).to_csv(index=False), out)


def _progress_lines(total: int, did: str = "scored", things: str = "files", *, every: int | None = None) -> Callable[[int], None] | None:
    """A line on stderr each time the count done reaches a multiple of ``every`` (default: a chunk) in a run of more than
    that (``[00:15] scored 1024 of 2000 files``, ``[00:40] drew 50 of 200 Grad-CAM figures``); None for a shorter run,
    which ends before anyone waits for it."""
    step = every or _CHUNK_FILES
    if total <= step:
        return None
    started = time.monotonic()

    def say(done: int) -> None:
        if done < total and done % step == 0:  # the last is followed by the results
            print(f"{clock(time.monotonic() - started)} {did} {done} of {total} {things}", file=sys.stderr, flush=True)

    return say


def _explainable(model: LoadedModel) -> Members:
    """The networks behind the ONNX file, for ``--explain`` (a :class:`UserError` when the export has no weights)."""
    from cxr_tune.modelfile import load_members

    try:
        return load_members(str(model.folder), model.meta)
    except FileNotFoundError:
        raise UserError(f"'{storage.join(str(model.folder), 'weights.safetensors')}' is missing; --explain needs the networks' weights: "
                        "re-export the model with this version (python -m cxr_tune.export EXPERIMENT)") from None


if __name__ == "__main__":
    run_cli(main)
