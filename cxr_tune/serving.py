"""Load an exported model (``model.onnx`` + ``model.json``) and score images; never unpickles.

The ONNX graph takes uint8 grayscale images ``(N, 1, S, S)`` exactly as
:func:`cxr_tune.data.imaging.decode_gray` makes them, and returns PNEUMONIA probabilities; the
intensity normalization is inside the graph. ``model.json`` carries the image size, the decision
threshold chosen on validation and the metrics behind it; :func:`load_model` checks the keys
prediction reads and stops with one line naming the file when one is missing or out of range.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import re
import sys
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from cxr_tune import storage
from cxr_tune.errors import RunFailure, UserError
from cxr_tune.formatting import shown
from cxr_tune.yamlfile import MAX_META_BYTES  # one cap on a model.json: train --params reads it too

MODEL_FILE = "model.onnx"
META_FILE = "model.json"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"}
RATES = ("sensitivity", "specificity")  # what an operating point's floor is on, or what it gives up
#: A name in model.json that commands print as it is (an operating point, a trial id, a calibration method): a plain token,
#: so an edited file can neither drive the terminal (an escape code) nor forge a line of metrics (a newline).
PLAIN_NAME = re.compile(r"[A-Za-z0-9_.+-]{1,40}")


@dataclass(frozen=True)
class LoadedModel:
    """An export as :func:`load_model` opened it. :attr:`threshold` is a probability: an image whose
    :func:`probabilities` score is at or above it (``>=``) is called PNEUMONIA, as ``predict`` calls it."""

    folder: Path | str  # a local folder, or the URI of one on object storage
    session: Any  # onnxruntime.InferenceSession
    meta: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["image_size"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])


def import_onnxruntime() -> ModuleType:
    """``onnxruntime``, imported where it is first needed (predict starts faster without it) and a stop while it loads a
    stop: its native module's initialization (pybind11) turns a Ctrl-C or SIGTERM that lands then into
    ``ImportError: initialization failed``, which reached the console as a traceback and status 1; here it is raised as
    the KeyboardInterrupt it was, so the command stops as it does anywhere else (130 or 143, saying how to go on).
    Other native libraries the commands import late (torch, onnx, safetensors) let the KeyboardInterrupt through."""
    try:
        import onnxruntime
    except ImportError as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    return onnxruntime


def refuse_pickle(path: Path | str, data: bytes | None = None) -> None:
    """Stop on any file that would need Python unpickling to load (arbitrary code on load).

    ``data``: the file's bytes when they were read already (a model on object storage).
    """
    looks_pickled = os.path.splitext(storage.name(str(path)))[1].lower() in PICKLE_SUFFIXES
    if not looks_pickled and data is None and storage.is_file(str(path)):
        data = storage.read_bytes(str(path))
    if not looks_pickled and data is not None and zipfile.is_zipfile(io.BytesIO(data)):
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            looks_pickled = any(name.endswith(".pkl") for name in archive.namelist())
    if looks_pickled:
        raise UserError(
            f"'{path}' would need unpickling to load, which can run arbitrary code; "
            f"cxr_tune only loads its pickle-free export (a folder with {MODEL_FILE} and {META_FILE})"
        )


def load_model(path: str | Path) -> LoadedModel:
    """Open an export; refuse pickles and broken exports with one line naming the file.

    ``path`` is an export folder (loads the ONNX file its ``model.json`` names, ``model.onnx``),
    that folder's ``model.json``, or one ``.onnx`` file. A ``.onnx`` file loads exactly that file,
    with the ``model.json`` beside it; when that ``model.json`` names another file, the threshold
    and image size in it belong to another model, so loading stops instead of guessing::

        load_model("results/wide-20240101/best")             # folder
        load_model("results/wide-20240101/best/model.onnx")  # the same model
    """
    ort = import_onnxruntime()

    # Local paths and object-store URIs alike (``s3://bucket/exp/best``), through cxr_tune.storage; a local one absolute with
    # its ~ expanded ("~/exp/best" was read as a folder named "~"), its links not followed: a model file that is a link into a
    # blob store (a Hugging Face cache, git-annex) belongs to the folder of the link, not of its target
    path = str(path).rstrip("/") if storage.is_uri(str(path)) else os.path.abspath(os.path.expanduser(str(path)))
    if not storage.exists(path):
        raise UserError(f"model '{path}' does not exist; pass an export folder such as results/<experiment>/best")
    requested = None
    if storage.is_file(path):
        refuse_pickle(path)
        if os.path.splitext(storage.name(path))[1].lower() == ".onnx":
            requested = storage.name(path)
        elif storage.name(path) != META_FILE:
            raise UserError(f"model '{path}' is neither an export folder nor its .onnx or {META_FILE} file")
        path = storage.parent(path)
    meta_path = storage.join(path, META_FILE)
    if not storage.exists(meta_path):
        best = storage.join(path, "best")  # an experiment folder: export writes its model there
        if storage.exists(storage.join(best, META_FILE)):
            raise UserError(f"model folder '{path}' has no {META_FILE}; it is an experiment whose exported model is in '{best}': pass that folder")
        raise UserError(f"model folder '{path}' has no {META_FILE}; export one with python -m cxr_tune.export EXPERIMENT")
    _check_regular_file(meta_path)
    meta = read_meta(meta_path)
    model_file = meta.get("model_file", MODEL_FILE)
    if requested is not None and requested != model_file:
        raise UserError(
            f"'{storage.join(path, requested)}' is not the model '{meta_path}' describes (its model_file is {model_file!r}); "
            f"pass the folder '{path}', or set model_file in {META_FILE} if you renamed the file"
        )
    model_path = storage.join(path, model_file)
    if not storage.exists(model_path):
        raise UserError(f"model folder '{path}' has no {model_file} (named by its {META_FILE}); export one with python -m cxr_tune.export EXPERIMENT")
    _check_regular_file(model_path)
    try:
        data = storage.read_bytes(model_path)  # one read: checked for pickles, then loaded from memory
    except OSError as exc:
        raise UserError(f"'{model_path}' could not be read ({exc.strerror or exc}); check its permissions, or export the model again") from None
    refuse_pickle(model_path, data)
    # Checked before onnxruntime opens the file: building a session already reads what the graph names.
    check_file_hash(path, meta, model_file, data, recorded_as=MODEL_FILE)
    refuse_external_data(model_path, data)
    try:
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - a broken file is the user's to fix
        raise UserError(f"'{model_path}' is not a loadable ONNX model: {str(exc).splitlines()[0]}") from None
    _check_interface(session, model_path, meta_path, int(meta["preprocessing"]["image_size"]))
    return LoadedModel(path if storage.is_uri(path) else Path(path), session, meta)


def _check_regular_file(path: str) -> None:
    """Stop with one line naming ``path`` (a model folder's file, which exists) unless it is a regular file:
    a folder or a pipe was called missing. A link to a regular file is followed, wherever it leads (git-annex, DVC and a
    Hugging Face cache link a model's files to a blob store): model.json's SHA-256 of model.onnx decides what is loaded."""
    if storage.is_dir(path):
        kind = "a folder"
    elif not storage.is_file(path):
        kind = "a pipe, socket or device"
    else:
        return
    raise UserError(f"'{path}' is not a regular file ({kind}); export the model again with python -m cxr_tune.export EXPERIMENT")


def check_file_hash(folder: str, meta: dict[str, Any], name: str, data: bytes, *, recorded_as: str | None = None) -> None:
    """Stop with one line unless ``data``, read from the file ``name`` of the model folder ``folder``, has the SHA-256 that
    ``meta`` (its ``model.json``, read before) records (under ``name``, else ``recorded_as``): a file of another export
    would be scored or rebuilt under this one's threshold and metrics.

    A loader reads a folder's files by path one after the other, and ``export`` or ``adapt`` swaps a whole new folder in
    at any moment: when ``model.json`` records other files now than when it was read, the folder was replaced while this
    command read it (run it again), which is not a file changed since the export (damaged, edited or mixed in from
    another export: written again to mend it)."""
    files = meta.get("files", {})
    expected = files.get(name, files.get(recorded_as)) if recorded_as else files.get(name)
    meta_path = storage.join(folder, META_FILE)
    if not expected:  # every export records it: without it, a file from another export would pass
        raise UserError(f"'{meta_path}' records no hash of {name} (files); the file was damaged or edited: export the model again")
    if expected == sha256(data):
        return
    try:
        now = json.loads(storage.read_bytes(meta_path)).get("files")
    except (OSError, ValueError, AttributeError):  # gone or other in the middle of a swap
        now = None
    if now != files:
        raise UserError(f"the model folder '{folder}' was replaced (by another export or adapt) while this command read it; run the command again")
    raise UserError(f"'{storage.join(folder, name)}' does not match the hash in '{meta_path}': the file changed since it was exported "
                    f"(damaged, edited, or another export's file mixed in); export the model again")


def refuse_external_data(model_path: Path | str, data: bytes) -> None:
    """Stop on a graph with a tensor stored outside the file: onnxruntime would read that file, named
    relative to the current folder, and an export keeps every weight inside ``model.onnx``."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load_model_from_string(data)
    except DecodeError as exc:
        raise UserError(f"'{model_path}' is not a loadable ONNX model: {str(exc).splitlines()[0]}") from None
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise UserError(f"'{model_path}' keeps tensor {tensor.name!r} in another file, which cxr_tune never reads; export the model again")


def _tensors(message: Any) -> Iterator[Any]:
    """Every ``onnx.TensorProto`` in ``message``: initializers, sparse ones, node attributes, subgraphs and functions alike."""
    from google.protobuf.message import Message
    from onnx import TensorProto

    if isinstance(message, TensorProto):
        yield message
        return
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE:
            for item in (value,) if isinstance(value, Message) else value:
                yield from _tensors(item)


def read_meta(file: Path | str) -> dict[str, Any]:
    """``model.json`` parsed and checked: the keys prediction uses must be there and sane.

    Checked: ``preprocessing.image_size`` (whole number, 16..1024), ``threshold`` (finite, 0..1),
    ``model_file`` (optional, default ``model.onnx``: a plain ``.onnx`` file name beside it),
    ``data`` and ``files`` (optional objects; each file's hash is checked when it is loaded) and ``operating_points``
    (optional: ``{name: {"threshold": p}}``, the thresholds ``predict --operating-point`` picks from, with the
    ``floor``, ``misses_floor`` and ``gives_up`` it notes). Anything else in the file is information for people.
    """
    from cxr_tune.data.input_checks import MAX_SIZE, MIN_SIZE

    again = "export the model again with python -m cxr_tune.export EXPERIMENT"
    try:
        fs, inner = storage.filesystem(str(file))
        with storage.reported(str(file), "reached"):
            size = fs.get_file_info(inner).size or 0
        if size > MAX_META_BYTES:
            raise UserError(f"'{file}' is {size:,} bytes, larger than any model.json an export writes (at most {MAX_META_BYTES:,} bytes); {again}")
        meta = json.loads(storage.read_bytes(str(file)))
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors; RecursionError: "[" * 200000
        raise UserError(f"'{file}' is not readable JSON ({str(exc).splitlines()[0]}); {again}") from None

    def bad(key: str, problem: str) -> UserError:
        return UserError(f"'{file}': {key} {problem}; {again}")

    if not isinstance(meta, dict):
        raise bad("the top level", f"must be a JSON object, not {type(meta).__name__}")
    preprocessing = meta.get("preprocessing")
    if not isinstance(preprocessing, dict):
        raise bad("preprocessing", "is missing" if preprocessing is None else "must be an object")
    size = preprocessing.get("image_size")
    if size is None:
        raise bad("preprocessing.image_size", "is missing")
    if not _is_int(size) or not MIN_SIZE <= size <= MAX_SIZE:
        raise bad("preprocessing.image_size", f"is {size!r}; it must be a whole number of pixels in {MIN_SIZE}..{MAX_SIZE}")
    threshold = meta.get("threshold")
    if threshold is None:
        raise bad("threshold", "is missing")
    if not _is_number(threshold) or not math.isfinite(threshold) or not 0.0 <= threshold <= 1.0:
        raise bad("threshold", f"is {threshold!r}; it must be a probability between 0 and 1")
    model_file = meta.get("model_file", MODEL_FILE)
    if not isinstance(model_file, str) or Path(model_file).name != model_file or not model_file.lower().endswith(".onnx") or model_file.startswith("."):
        raise bad("model_file", f"is {model_file!r}; it must be the name of an .onnx file in the same folder")
    if not isinstance(meta.get("data", {}), dict):
        raise bad("data", "must be an object")
    if not isinstance(meta.get("files", {}), dict):
        raise bad("files", "must be an object of file hashes")
    points = meta.get("operating_points", {})
    if not isinstance(points, dict):
        raise bad("operating_points", "must be an object of named thresholds")
    for name, point in points.items():
        _check_name(bad, "operating_points name", name)
        _check_point(bad, f"operating_points.{name}", point)
    calibration = meta.get("calibration")
    if isinstance(calibration, dict) and "method" in calibration:
        _check_name(bad, "calibration.method", calibration["method"])
    if meta.get("trial_id") is not None:
        _check_name(bad, "trial_id", meta["trial_id"])
    members = meta.get("members", [])
    for i, member in enumerate(members if isinstance(members, list) else []):
        if isinstance(member, dict) and member.get("trial_id") is not None:
            _check_name(bad, f"members[{i}].trial_id", member["trial_id"])
    return meta


def other_preprocessing(meta: dict[str, Any]) -> bool:
    """Whether the model of ``meta`` (its ``model.json``) was exported by code that made pixels another way (another
    ``preprocess_version``): then the images a command scores are checked with :func:`warn_if_other_preprocessing`."""
    from cxr_tune.data.imaging import changes_since

    return bool(changes_since(meta["preprocessing"].get("preprocess_version")))


def warn_if_other_preprocessing(model: LoadedModel, scored: Sequence[tuple[str, str]]) -> None:
    """One line on stderr when an image scored (``scored``: each one's name and
    :func:`~cxr_tune.data.imaging.input_kind`) decodes otherwise than when ``model`` was exported: its network trained on
    those pixels, and this code scores it on its own. A warning, not a refusal, and only for the inputs a change affects
    (:data:`~cxr_tune.data.imaging.PREPROCESS_CHANGES` says which: version 2 changed JPEG-compressed DICOMs, version 3 any
    image with an alpha band, a PNG's included; other images decode as before). A model.json from before the record
    is taken at its word. The warning names the model's own model.json, wherever ``--model`` pointed (a folder or its .onnx)."""
    from cxr_tune.data.imaging import PREPROCESS_VERSION, changes_since

    file = storage.join(str(model.folder), META_FILE)
    version = model.meta["preprocessing"].get("preprocess_version")
    changes = changes_since(version)
    changed = [name for name, kind in scored if any(change.affects(kind) for change in changes.values())]
    if not changed:
        return
    said = "; ".join(f"version {v}: {change.said}" for v, change in changes.items())
    print(f"Warning: {len(changed)} of the {len(scored)} image(s) scored (first: '{changed[0]}') decode otherwise than when '{file}' was "
          f"exported (preprocessing version {version}, this code's {PREPROCESS_VERSION}; {said}), so their scores may be off; "
          "if you have its experiment with checkpoints, export it again with this code (python -m cxr_tune.export EXPERIMENT)",
          file=sys.stderr, flush=True)


def trained_on_synthetic(meta: dict[str, Any]) -> bool:
    """Whether a model.json's model trained on the built-in SYNTHETIC set."""
    return bool((meta.get("data") or {}).get("synthetic"))


def note_if_synthetic(synthetic: Sequence[str], *, of: int = 1) -> None:
    """The note on stderr that models trained on SYNTHETIC data give outputs that mean nothing for real patients, as
    predict, compare and adapt print it. ``synthetic``: the names of those models (:func:`trained_on_synthetic`) among
    the ``of`` a command ran; a command of one model calls it "this model"."""
    if not synthetic:
        return
    if of == 1:
        print("Note: this model was trained on SYNTHETIC data; its outputs mean nothing for real patients.", file=sys.stderr)
        return
    whose = "its" if len(synthetic) == 1 else "their"
    print(f"Note: {', '.join(synthetic)} trained on SYNTHETIC data: {whose} outputs mean nothing for real patients.", file=sys.stderr)


def _check_name(bad: Callable[[str, str], UserError], key: str, name: Any) -> None:
    """A name that commands print (:data:`PLAIN_NAME`), shown escaped and cut short when it is not one."""
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        raise bad(key, f"{shown(name)} is not a plain name (1-40 letters, digits, _ . + -)")


def _check_point(bad: Callable[[str, str], UserError], key: str, point: Any) -> None:
    """An operating point's threshold, and what ``predict`` says of it: the rate it gives up, its floor and the rate it keeps below that."""
    value = point.get("threshold") if isinstance(point, dict) else None
    if not _is_probability(value):
        raise bad(f"{key}.threshold", f"is {value!r}; it must be a probability between 0 and 1")
    if point.get("gives_up") not in (None, *RATES):
        raise bad(f"{key}.gives_up", f"is {point['gives_up']!r}; it must be one of {', '.join(RATES)}")
    floor = point.get("floor", {})
    if not isinstance(floor, dict) or any(rate not in RATES or not _is_probability(least) for rate, least in floor.items()):
        raise bad(f"{key}.floor", f"is {floor!r}; it must be an object of a rate ({', '.join(RATES)}) and its floor between 0 and 1")
    if "misses_floor" in point and not _is_probability(point["misses_floor"]):
        raise bad(f"{key}.misses_floor", f"is {point['misses_floor']!r}; it must be a rate between 0 and 1")


def _is_probability(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value) and 0.0 <= value <= 1.0


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_interface(session: Any, model_file: Path | str, meta_file: Path | str, image_size: int) -> None:
    """The graph must take and give what an export's does (uint8 ``image (batch, 1, S, S)`` in, one
    float per image out), with S the image size ``model.json`` promises: anything else would fail
    inside onnxruntime, or be scored as something it is not."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if inputs else []
    if len(shape) == 4 and any(isinstance(side, int) and side != image_size for side in shape[2:]):
        raise UserError(f"'{model_file}' takes {shape[2]}x{shape[3]} images but '{meta_file}' says image_size {image_size}; export the model again")
    takes = len(inputs) == 1 and inputs[0].name == "image" and inputs[0].type == "tensor(uint8)" and shape[1:] == [1, image_size, image_size]
    gives = len(outputs) == 1 and outputs[0].type == "tensor(float)" and len(outputs[0].shape) == 1
    if not takes or not gives or isinstance(shape[0], int) or isinstance(outputs[0].shape[0], int):  # the batch: any number of images
        raise UserError(f"'{model_file}' takes {_described(inputs)} and gives {_described(outputs)}, not what cxr_tune exports "
                        f"('image' tensor(uint8) ['batch', 1, {image_size}, {image_size}] in, one tensor(float) ['batch'] out); export the model again")


def _described(args: list[Any]) -> str:
    """An onnxruntime input or output list as text: name, type and shape of each."""
    return ", ".join(f"{arg.name!r} {arg.type} {arg.shape}" for arg in args) or "nothing"


def probabilities(model: LoadedModel | Any, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """PNEUMONIA probability per image; ``images`` is a ``(N, S, S)`` uint8 array, S the model's ``image_size`` (a loaded
    model refuses any other form with a UserError saying what it got).

    A loaded model's graph that fails inside onnxruntime as it runs (a node that asks for more memory than the machine
    has, a shape that does not fit) stops with one line naming its file, a failure at run time; onnxruntime's own log
    line of it (in colour, on stderr) is not written."""
    session = model.session if isinstance(model, LoadedModel) else model
    if isinstance(model, LoadedModel):
        _check_images(model, images)
    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    quiet = import_onnxruntime().RunOptions()
    quiet.log_severity_level = 4  # fatal only: the failure is said once, below
    try:
        out = [session.run(None, {"image": images[i : i + batch_size, None]}, quiet)[0] for i in range(0, len(images), batch_size)]
    except Exception as exc:  # noqa: BLE001 - onnxruntime's Fail, RuntimeException, ...: the graph's, not this code's
        if not isinstance(model, LoadedModel):  # a graph export just built: a failure is this code's, with its traceback
            raise
        model_file = storage.join(str(model.folder), model.meta.get("model_file", MODEL_FILE))
        raise RunFailure(f"'{model_file}' failed while scoring: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None
    scores = np.concatenate(out).astype(np.float64)
    if isinstance(model, LoadedModel):
        _check_scores(model, scores, len(images))
    return scores


def _check_images(model: LoadedModel, images: Any) -> None:
    """The caller's images in the one form a loaded graph takes, checked before onnxruntime sees them: a float array, one
    image, a ``(N, 1, S, S)`` stack, a list or another side failed inside it and was blamed on the model file (a RunFailure)."""
    size = model.image_size
    if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 3 and images.shape[1:] == (size, size):
        return
    got = f"{images.dtype} array shaped {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
    raise UserError(f"images must be a numpy array of uint8 shaped (N, {size}, {size}) (N images at the model's image size {size}, "
                    f"as cxr_tune.data.imaging.decode_gray(path, {size}) makes each), not {'an' if got[0] in 'aeiou' else 'a'} {got}")


def _check_scores(model: LoadedModel, scores: np.ndarray, images: int) -> None:
    """A loaded graph's scores must be probabilities, one per image: NaN is below no threshold, so it
    would read as a confident NORMAL."""
    wrong = scores[~((scores >= 0.0) & (scores <= 1.0))]  # NaN fails both comparisons
    if scores.shape != (images,) or len(wrong):
        what = f"{scores.size} scores for {images} image(s)" if scores.shape != (images,) else f"{len(wrong)} score(s) outside 0..1 (such as {wrong[0]:g})"
        model_file = storage.join(str(model.folder), model.meta.get("model_file", MODEL_FILE))
        raise UserError(f"'{model_file}' gave {what}, not a probability per image; the file was damaged or edited: export the model again")


def sha256(data: bytes) -> str:
    """The hash ``model.json`` stores for each file it describes (``files``), checked when a file is loaded."""
    return hashlib.sha256(data).hexdigest()
