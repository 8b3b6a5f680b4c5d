"""An exported model folder: ``model.onnx`` + ``weights.safetensors`` + ``model.json``.

- ``model.onnx``: uint8 grayscale images ``(N, 1, S, S)`` in, PNEUMONIA probability out; intensity
  normalization, the ensemble average, test-time augmentation and a fitted calibration
  (``export --calibrate``) are inside the graph. ``predict``
  loads only this file (with ``model.json``), never anything that needs unpickling. Its ``metadata_props`` say what it
  gives and takes, for a tool that reads it alone (:func:`described_onnx`).
- ``weights.safetensors``: every member network's weights and BatchNorm statistics, pickle-free,
  so the model can be rebuilt in PyTorch: ``adapt`` re-estimates BatchNorm statistics on a new
  site's images, which the ONNX graph (with BatchNorm folded into the convolutions) cannot.
- ``model.json``: hyperparameters of every member, preprocessing, threshold, metrics, and the
  SHA-256 of the two binary files, so a folder mixed from two exports is refused.

A folder is written beside its target, checked (ONNX loaded back with onnxruntime and compared
with PyTorch), and only then swapped in, so a kill at any moment leaves the old or the new model.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from cxr_tune import storage
from cxr_tune.calibration import Calibration
from cxr_tune.data.imaging import RESIZE_METHOD
from cxr_tune.errors import UserError
from cxr_tune.formatting import json_safe
from cxr_tune.modelcard import CARD_FILE, RELIABILITY_FILE, decode_steps
from cxr_tune.serving import META_FILE, MODEL_FILE, LoadedModel, check_file_hash, import_onnxruntime, probabilities, sha256
from cxr_tune.train.hparams import HParams
from cxr_tune.train.intensity import normalize_intensity
from cxr_tune.train.model import ServingModel, build_model
from cxr_tune.views import TTA_VIEWS

WEIGHTS_FILE = "weights.safetensors"
#: The per-image scores an export writes beside the model, one file per set it scored (by metric prefix).
PREDICTIONS_FILES = {"val": "val_predictions.csv", "ext": "external_predictions.csv", "test": "test_predictions.csv"}
#: How far the ONNX file's scores may be from the PyTorch model's (both float32) on the same images: the export's own
#: check, and adapt's and predict --explain's check that model.json still describes model.onnx (:func:`check_rebuilt`).
#: The two differ only in float32 rounding (BatchNorm folded into the convolutions, another order of sums): at most
#: 5.5e-6 apart for results/real/best (6 networks at 64 px, half A's 315 images), 1.7e-6 for 2 networks with 2 views
#: and a Platt map, 1.2e-7 for one network (measured 2026-12-07), so 1e-4 leaves a margin of 20 or more, and every
#: export already passed it on its check images. An edit to model.json that changes the network it rebuilds moved a test
#: export's scores by 0.01 (3 views for 1) to 0.15 (a calibration slope doubled): far past it.
SCORE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Members:
    """The networks of a model (one, or several averaged) and their hyperparameters."""

    nets: list[nn.Module]
    hparams: list[HParams]

    @property
    def image_size(self) -> int:
        return self.hparams[0].image_size


class EnsembleModel(nn.Module):
    """The mean PNEUMONIA probability of several serving models (same input size)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(images) for member in self.members]).mean(dim=0)


class TTAModel(nn.Module):
    """The mean probability over fixed views of each image (:data:`TTA_VIEWS`). The views' sampling
    grids are computed once for the model's input size and kept as constants (ONNX opset 17 has no
    affine-grid operator), and each view is rounded back to uint8, the pixel type the inner model
    was trained on."""

    def __init__(self, model: nn.Module, views: int, size: int) -> None:
        super().__init__()
        self.model = model
        thetas = []
        for zoom, dx, dy, degrees in TTA_VIEWS[:views]:
            angle = math.radians(degrees)
            cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
            thetas.append([[cos, -sin, 2 * dx], [sin, cos, 2 * dy]])
        grids = F.affine_grid(torch.tensor(thetas, dtype=torch.float32), [len(thetas), 1, size, size], align_corners=False)
        self.register_buffer("grids", grids)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.model(view) for view in self.views(images)]).mean(dim=0)

    def views(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every view of ``images`` (uint8), identity first."""
        x = images.float()
        return [F.grid_sample(x, grid.unsqueeze(0).expand(x.shape[0], -1, -1, -1), mode="bilinear", padding_mode="border",
                              align_corners=False).round().clamp(0, 255).to(torch.uint8) for grid in self.grids]


class CalibratedModel(nn.Module):
    """The probability ``model`` gives, mapped by a fitted calibration
    (:class:`cxr_tune.calibration.Calibration`): ``sigmoid(slope * logit(p) + intercept)``, strictly
    increasing, so the ranking is kept. ``p`` is the ensemble's and the views' mean probability (what
    the threshold was chosen on), but its logit is computed from the members' logits,
    ``log(sum p_i) - log(sum (1 - p_i))`` with ``log p_i = -softplus(-z_i)``: a probability rounded to
    float32 near 0 or 1 has lost the digits an overconfident model's calibration needs."""

    def __init__(self, model: nn.Module, slope: float, intercept: float) -> None:
        super().__init__()
        self.model = model  # ServingModel, EnsembleModel of them, or TTAModel over either
        self.slope, self.intercept = float(slope), float(intercept)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.slope * self.mean_logit(images) + self.intercept)

    def mean_logit(self, images: torch.Tensor) -> torch.Tensor:
        """The logit of the mean probability, from the members' logits: what the map is applied to (and fitted on)."""
        z = self._logits(images)
        return torch.logsumexp(-F.softplus(-z), dim=0) - torch.logsumexp(-F.softplus(z), dim=0)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        """Every (view, member) logit, ``(views * members, B)``."""
        tta = self.model if isinstance(self.model, TTAModel) else None
        inner = tta.model if tta is not None else self.model
        servings = list(inner.members) if isinstance(inner, EnsembleModel) else [inner]
        views = tta.views(images) if tta is not None else [images]
        # ServingModel's own input pipeline, stopped before its sigmoid.
        return torch.stack([serving.net(normalize_intensity(view.float() / 255.0, serving.intensity)) for view in views for serving in servings])


def serving_model(members: Members, tta: int = 1, *, calibration: Calibration | None = None) -> nn.Module:
    """uint8 images → probability: one network or the average of several, optionally over TTA views,
    optionally mapped by a fitted calibration."""
    servings = [ServingModel(net, hp.intensity).eval() for net, hp in zip(members.nets, members.hparams, strict=True)]
    model: nn.Module = servings[0] if len(servings) == 1 else EnsembleModel(servings)
    if tta > 1:
        model = TTAModel(model, tta, members.image_size)
    if calibration is not None and calibration.method != "none":
        model = CalibratedModel(model, calibration.slope, calibration.intercept)
    return model.eval()


def members_from_states(states: list[dict[str, Any]]) -> Members:
    """Networks rebuilt from trial checkpoint states (``model`` and ``hparams`` of each)."""
    hps = [HParams.from_config(state["hparams"]) for state in states]
    nets = []
    for state, hp in zip(states, hps, strict=True):
        net = build_model(hp)
        net.load_state_dict(state["model"])
        nets.append(net.eval())
    return Members(nets, hps)


def torch_scores(model: nn.Module, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """PNEUMONIA probability per image with the PyTorch model; ``images`` is ``(N, S, S)`` uint8."""
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(model(torch.from_numpy(images[start : start + batch_size, None].copy())).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def mean_logits(members: Members, images: np.ndarray, tta: int = 1, batch_size: int = 128) -> np.ndarray:
    """Per image, the logit of the members' (and views') mean probability, computed as the calibrated
    graph computes it: what a calibration map must be fitted on, since a probability rounded to
    float32 saturates at 0 or 1 where an overconfident model's logits still differ."""
    model = CalibratedModel(serving_model(members, tta), 1.0, 0.0).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            out.append(model.mean_logit(torch.from_numpy(images[start : start + batch_size, None].copy())).numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


@dataclass(frozen=True)
class ModelFiles:
    """The two binary files of a model folder, built and loaded back, before anything is written."""

    onnx: bytes
    weights: bytes
    session: Any  # onnxruntime.InferenceSession over ``onnx``: score with it exactly as predict will

    def scores(self, images: np.ndarray) -> np.ndarray:
        return probabilities(self.session, images)


def build_files(members: Members, tta: int = 1, *, check_images: np.ndarray | None = None, calibration: Calibration | None = None) -> ModelFiles:
    """Export ``members`` (with ``calibration`` in the graph, if given) to ONNX, checked against
    PyTorch on ``check_images``, and their weights to safetensors."""
    from safetensors.torch import save

    ort = import_onnxruntime()

    serving = serving_model(members, tta, calibration=calibration)
    onnx_bytes = _to_onnx(serving, members.image_size)
    weights = save({f"member{i}.{name}": tensor.contiguous() for i, net in enumerate(members.nets)
                    for name, tensor in net.state_dict().items()})
    files = ModelFiles(onnx_bytes, weights, ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"]))
    if check_images is not None:
        check_scores(files.scores(check_images), torch_scores(serving, check_images), "the PyTorch model")
    return files


def check_model_target(target: str, what: str) -> None:
    """Stop with one line, before any work, when a model could not be written at ``target``, or
    writing it would delete what is there: the new folder takes the place of the whole old one, so
    only a missing or empty folder, or an earlier model folder (:func:`is_model_record`) holding no file but those
    :data:`FOLDER_FILES` names, may be replaced. ``--out ~`` must not empty a home folder, nor ``--out fake`` a folder
    that merely holds a file called ``model.json``; a user's ``predictions.csv`` beside an earlier export is refused
    rather than kept: beside the new model it would describe the old one."""
    storage.check_writable(target, what)
    if not storage.is_dir(target) or not (held := storage.listdir(target)):
        return
    meta_file = storage.join(target, META_FILE)
    if not storage.exists(meta_file):
        raise UserError(f"{what} '{target}' holds files and is not a model folder (no {META_FILE}); the model would replace the "
                        "whole folder, so name a new folder (or an earlier export, to replace it)")
    if not is_model_record(meta_file):
        raise UserError(f"{what} '{target}' holds files and is not a model folder (its {META_FILE} is not an export's: no format, "
                        "model_file and files); the model would replace the whole folder, so name a new folder (or an earlier export, to replace it)")
    others = sorted(f"{name}/" if storage.is_dir(storage.join(target, name)) else name for name in held if name not in FOLDER_FILES)
    if others:
        raise UserError(f"{what} '{target}' is an earlier export but also holds {', '.join(others)}, which no export wrote; "
                        "the model would replace the whole folder, so move them out first or name a new folder")


#: Every file export and adapt write into a model folder: what replacing an earlier one may delete.
FOLDER_FILES = frozenset({MODEL_FILE, WEIGHTS_FILE, META_FILE, CARD_FILE, RELIABILITY_FILE, *PREDICTIONS_FILES.values()})


def is_model_record(meta_file: str) -> bool:
    """Whether ``meta_file`` is an export's ``model.json``: a JSON object with the fields :func:`write_model_folder` and
    export always write (``format``, ``model_file``, ``files``), not any file of that name."""
    try:
        meta = json.loads(storage.read_bytes(meta_file))
    except (OSError, ValueError):
        return False
    return (isinstance(meta, dict) and meta.get("format") == "onnx" and isinstance(meta.get("model_file"), str)
            and isinstance(meta.get("files"), dict) and bool(meta["files"]))


def write_model_folder(target: str, files: ModelFiles, meta: dict[str, Any], extra: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Write ``model.onnx``, ``weights.safetensors``, ``model.json`` (``meta`` plus the files' hashes,
    returned: what loads the folder's files checks them against) and ``extra`` files beside ``target``,
    then swap the folder in: on a local disk a kill at any moment leaves the old model or the new one, never
    neither. On object storage, which cannot rename, a kill during the swap's copy leaves files of both, which
    every loader refuses by their hashes ("the file changed since it was exported"): the model must be written again. Refuses a ``target`` that is not a model folder (:func:`check_model_target`).
    ``model.onnx`` is written with :func:`described_onnx`'s metadata, and its hash is that of the file written."""
    check_model_target(target, "the model folder")
    onnx_bytes = described_onnx(files.onnx, meta)
    meta = {**meta, "files": {MODEL_FILE: sha256(onnx_bytes), WEIGHTS_FILE: sha256(files.weights)}}
    tmp = storage.sibling_tmp(target)
    try:
        for name, data in {MODEL_FILE: onnx_bytes, WEIGHTS_FILE: files.weights, **(extra or {})}.items():
            storage.write_bytes_atomic(storage.join(tmp, name), data)
        # Written last: on object stores, where the swap is a copy, its presence marks a complete folder.
        storage.write_text_atomic(storage.join(tmp, META_FILE), json.dumps(json_safe(meta), indent=2))
        storage.replace_dir(tmp, target, first=(MODEL_FILE, WEIGHTS_FILE))  # the hashed files: a copy cut short after them is refused
    finally:
        storage.remove_tree(tmp)
    return meta


def described_onnx(onnx_bytes: bytes, meta: dict[str, Any]) -> bytes:
    """``onnx_bytes`` with ``metadata_props`` saying what the graph gives and takes, from ``meta`` (its ``model.json``):
    a ``model.onnx`` copied into another serving tool otherwise says only "probability". Metadata changes no score, and
    the same ``meta`` gives the same bytes (no time in them)."""
    import onnx

    preprocessing = meta["preprocessing"]
    size, version = int(preprocessing["image_size"]), preprocessing.get("preprocess_version")
    meaning = str((meta.get("output") or {}).get("meaning", ""))  # "probability of PNEUMONIA (the mean of 2 models; ...)"
    model = onnx.load_model_from_string(onnx_bytes)
    onnx.helper.set_model_props(model, {
        "output": f"probability, float [batch]: P(PNEUMONIA) of each image{meaning.removeprefix('probability of PNEUMONIA')}",
        "threshold": repr(float(meta["threshold"])),
        "decision": "PNEUMONIA when probability >= threshold, else NORMAL",
        "input": f"image: uint8 greyscale, N x C x H x W = [batch, 1, {size}, {size}]; the intensity normalization is inside the graph",
        "preprocessing": (f"{steps} (cxr_tune.data.imaging.decode_gray" if (steps := decode_steps(preprocessing)) else
                          f"greyscale, {preprocessing.get('grayscale', '8-bit')}, then {RESIZE_METHOD.replace('size x size', f'{size} x {size}')}; "
                          "JPEGs decoded by libjpeg at a reduced scale first (cxr_tune.data.imaging.decode_gray")
                         + (f", preprocess_version {version})" if version is not None else ")"),
        "record": f"{META_FILE} beside this file is the full record: operating points, calibration, hyperparameters, metrics with "
                  "their intervals, and this file's SHA-256",
    })
    return model.SerializeToString()


def load_members(folder: str, meta: dict[str, Any]) -> Members:
    """The member networks of an export folder, from ``weights.safetensors`` and its ``model.json``
    (``meta``, as :func:`cxr_tune.serving.read_meta` read and checked it). A weights file that cannot
    be read, or networks that do not match what ``model.json`` lists, stop with one line.

    Raises ``FileNotFoundError`` when the folder has no weights file (exports from before it existed).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = storage.join(folder, WEIGHTS_FILE)
    if not storage.exists(path):
        raise FileNotFoundError(path)
    try:
        data = storage.read_bytes(path)
    except OSError as exc:
        raise UserError(f"'{path}' could not be read ({exc.strerror or exc}); check its permissions, or export the model again") from None
    check_file_hash(folder, meta, WEIGHTS_FILE, data)  # read after model.json: a folder swapped in since is told apart from a mixed one
    if not isinstance(meta.get("members"), list) or not meta["members"]:
        raise UserError(f"'{storage.join(folder, META_FILE)}' lists no members; export the model again")
    try:
        tensors = load(data)
    except SafetensorError as exc:
        raise UserError(f"'{path}' is damaged ({str(exc).splitlines()[0]}); export the model again") from None
    meta_file = storage.join(folder, META_FILE)
    nets, hps = [], []
    for i, member in enumerate(meta["members"]):
        hp = _member_hparams(meta_file, i, member)
        net = build_model(hp)
        prefix = f"member{i}."
        try:
            net.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        except RuntimeError:  # missing, unexpected or other-shaped tensors
            raise UserError(f"'{path}' does not hold the network members[{i}] of '{meta_file}' describes (its tensors differ); "
                            "one of the files was damaged or edited: export the model again") from None
        nets.append(net.eval())
        hps.append(hp)
    return Members(nets, hps)


def check_rebuilt(model: LoadedModel, members: Members, images: np.ndarray) -> np.ndarray:
    """The scores on ``images`` (uint8 ``(N, S, S)``) of the model that ``members`` (from ``weights.safetensors``) and
    ``model.json``'s ``tta_views`` and ``calibration`` rebuild, checked against the ONNX file of the loaded ``model``.

    ``adapt`` and ``predict --explain`` work on that rebuilt model, while ``predict`` scores with the ONNX file, whose
    hash is checked: a hand-edited ``model.json`` (another intensity map, view count, calibration or image size) would
    have them adapt or explain another model than the one given. Stops with one line naming ``model.json`` when the two
    are more than :data:`SCORE_TOLERANCE` apart on any image::

        before = check_rebuilt(load_model(folder), load_members(folder, meta), images)
    """
    folder = str(model.folder)
    meta_file, model_file = storage.join(folder, META_FILE), storage.join(folder, model.meta.get("model_file", MODEL_FILE))
    differs = f"'{meta_file}' no longer describes '{model_file}'"
    for i, hp in enumerate(members.hparams):  # checked first: the ONNX file cannot score images of another size
        if hp.image_size != model.image_size:
            raise UserError(f"{differs}: members[{i}].hparams.image_size is {hp.image_size} and the ONNX file takes {model.image_size}x"
                            f"{model.image_size} images; the file was damaged or edited: export the model again")
    rebuilt = torch_scores(serving_model(members, recorded_views(folder, model.meta), calibration=recorded_calibration(folder, model.meta)), images)
    gap = float(np.max(np.abs(rebuilt - probabilities(model, images)))) if len(images) else 0.0
    if gap > SCORE_TOLERANCE:
        raise UserError(f"{differs}: the model its members, tta_views and calibration rebuild from {WEIGHTS_FILE} scores {len(images)} "
                        f"image(s) up to {gap:.1e} away from it (more than {SCORE_TOLERANCE:g}); the file was damaged or edited: export the model again")
    return rebuilt


def _member_hparams(meta_file: str, i: int, member: Any) -> HParams:
    """``members[i]`` of ``model.json`` as hyperparameters; one line when an edit broke it."""
    hparams = member.get("hparams") if isinstance(member, dict) else None
    try:
        if not isinstance(hparams, dict):
            raise ValueError("it has no hparams object")
        return HParams.from_config(hparams)
    except ValueError as exc:  # HParamsError too: a value out of range, an unknown key
        raise UserError(f"'{meta_file}': members[{i}] is not a network ({exc}); the file was damaged or edited: export the model again") from None


def check_prior_record(folder: str, meta: dict[str, Any]) -> None:
    """Stop with one line when the selected trial's ``hparams`` (its class weighting, which the training prior of
    ``adapt --threshold prior-shift`` is computed with) were damaged or edited. The image counts the prior comes
    from are :func:`cxr_tune.calibration.probability_prior`'s to check."""
    meta_file = storage.join(folder, META_FILE)
    hparams = meta.get("hparams")
    try:
        if not isinstance(hparams, dict):
            raise ValueError("it is missing" if hparams is None else f"it is {type(hparams).__name__}, not an object")
        HParams.from_config(hparams)
    except ValueError as exc:  # HParamsError too: a value out of range, an unknown key
        raise UserError(f"'{meta_file}': hparams is not the selected trial's hyperparameters ({exc}); the file was damaged or edited: "
                        "export the model again") from None


def recorded_views(folder: str, meta: dict[str, Any]) -> int:
    """``tta_views`` of ``model.json`` (``meta``): how many test-time views the graph averages, 1 when not recorded."""
    views = meta.get("tta_views", 1)
    if isinstance(views, bool) or not isinstance(views, int) or not 1 <= views <= len(TTA_VIEWS):
        raise UserError(f"'{storage.join(folder, META_FILE)}': tta_views is {views!r}, not a number of views in 1..{len(TTA_VIEWS)}; "
                        "the file was damaged or edited: export the model again")
    return views


def recorded_calibration(folder: str, meta: dict[str, Any]) -> Calibration | None:
    """The calibration map ``model.json`` (``meta``) records as built into the graph, None when there is none."""
    record = meta.get("calibration", {"method": "none"})
    if isinstance(record, dict) and record.get("method", "none") == "none":
        return None
    try:
        calibration = Calibration.from_dict(record)
    except (KeyError, TypeError, ValueError):
        calibration = None
    if calibration is None or not math.isfinite(calibration.slope) or not math.isfinite(calibration.intercept):
        raise UserError(f"'{storage.join(folder, META_FILE)}': calibration is {record!r}, not a method with its slope and intercept; "
                        "the file was damaged or edited: export the model again")
    return calibration


#: What ``torch.onnx.export`` warns of every export today (torch 2.14), each known to be harmless, as (category, start
#: of the message, module the warning is raised for); any other warning, such as a new TracerWarning, is shown:
#: - the TorchScript-based exporter is deprecated, and so is a helper of its own; it is still the pickle-free path that
#:   needs no extra package (``dynamo=True`` needs onnxscript, which is not a dependency);
#: - with test-time views, tracing TTAModel.views' loop over its grids: the number of views is fixed per model, so the
#:   unrolled loop is the graph meant (ONNX and PyTorch agree at batch sizes 1, 2 and 5; ``check_scores`` checks each export).
KNOWN_EXPORT_WARNINGS: tuple[tuple[type[Warning], str, str], ...] = (
    (DeprecationWarning, "You are using the legacy TorchScript-based ONNX export", ""),
    (DeprecationWarning, "The feature will be removed", r"torch\.onnx\."),
    (torch.jit.TracerWarning, "Iterating over a tensor might cause the trace to be incorrect", rf"{__name__}$"),
)


def _to_onnx(model: nn.Module, size: int) -> bytes:
    import io

    example = torch.zeros(2, 1, size, size, dtype=torch.uint8)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        for category, message, module in KNOWN_EXPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        torch.onnx.export(
            model, (example,), buffer, dynamo=False, opset_version=17,
            input_names=["image"], output_names=["probability"],
            dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}},
        )
    return buffer.getvalue()


def check_scores(onnx: np.ndarray, reference: np.ndarray, what: str) -> None:
    """Refuse an export whose ONNX scores drift from a reference by more than :data:`SCORE_TOLERANCE`."""
    if len(onnx) and float(np.max(np.abs(onnx - reference))) > SCORE_TOLERANCE:
        raise RuntimeError(f"the ONNX export disagrees with {what} (max difference {np.max(np.abs(onnx - reference)):.2e})")

