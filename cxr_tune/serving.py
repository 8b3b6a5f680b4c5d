"""Load an exported model (``model.onnx`` + ``model.json``) and score images; never unpickles.

The ONNX graph takes uint8 grayscale images ``(N, 1, S, S)`` exactly as
:func:`cxr_tune.data.imaging.decode_gray` makes them, and returns PNEUMONIA probabilities; the
intensity normalization is inside the graph. ``model.json`` carries the image size, the decision
threshold chosen on validation and the metrics behind it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cxr_tune.errors import UserError

MODEL_FILE = "model.onnx"
META_FILE = "model.json"
PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib"}


@dataclass(frozen=True)
class LoadedModel:
    folder: Path
    session: Any  # onnxruntime.InferenceSession
    meta: dict[str, Any]

    @property
    def image_size(self) -> int:
        return int(self.meta["preprocessing"]["image_size"])

    @property
    def threshold(self) -> float:
        return float(self.meta["threshold"])


def refuse_pickle(path: Path) -> None:
    """Stop on any file that would need Python unpickling to load (arbitrary code on load)."""
    looks_pickled = path.suffix.lower() in PICKLE_SUFFIXES
    if not looks_pickled and path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            looks_pickled = any(name.endswith(".pkl") for name in archive.namelist())
    if looks_pickled:
        raise UserError(
            f"'{path}' would need unpickling to load, which can run arbitrary code; "
            f"cxr_tune only loads its pickle-free export (a folder with {MODEL_FILE} and {META_FILE})"
        )


def load_model(path: str | Path) -> LoadedModel:
    """Open an export folder (or its ``model.onnx``); refuse pickles; one-line errors."""
    import onnxruntime as ort

    path = Path(path)
    if not path.exists():
        raise UserError(f"model '{path}' does not exist; pass an export folder such as results/<experiment>/best")
    if path.is_file():
        refuse_pickle(path)
        path = path.parent
    for name in (MODEL_FILE, META_FILE):
        if not (path / name).is_file():
            raise UserError(f"model folder '{path}' has no {name}; export one with python -m cxr_tune.export EXPERIMENT")
    meta = json.loads((path / META_FILE).read_text())
    try:
        session = ort.InferenceSession(str(path / MODEL_FILE), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - a broken file is the user's to fix
        raise UserError(f"'{path / MODEL_FILE}' is not a loadable ONNX model: {str(exc).splitlines()[0]}") from None
    return LoadedModel(path, session, meta)


def probabilities(model: LoadedModel | Any, images: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """PNEUMONIA probability per image; ``images`` is ``(N, S, S)`` uint8."""
    session = model.session if isinstance(model, LoadedModel) else model
    if len(images) == 0:
        return np.zeros(0, dtype=np.float32)
    out = [session.run(None, {"image": images[i : i + batch_size, None]})[0] for i in range(0, len(images), batch_size)]
    return np.concatenate(out).astype(np.float64)
