"""Tiny hand-built exports (``model.onnx`` + ``model.json``) for serving and predict tests; no training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper


def tiny_onnx(path: Path, image_size: int = 16, *, constant: float | None = None) -> Path:
    """A graph with the export's interface: uint8 ``image (N, 1, S, S)`` in, ``probability (N,)`` out.

    The probability is the mean brightness / 255, or ``constant`` for every image when given (so
    two files can be told apart by their outputs).
    """
    nodes = [
        helper.make_node("Cast", ["image"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["pixels", "axes"], ["mean"], keepdims=0),
        helper.make_node("Div", ["mean", "full"], ["brightness"]),
    ]
    initializers = [helper.make_tensor("axes", TensorProto.INT64, [3], [1, 2, 3]), helper.make_tensor("full", TensorProto.FLOAT, [], [255.0])]
    if constant is not None:
        nodes += [helper.make_node("Mul", ["brightness", "zero"], ["zeros"]), helper.make_node("Add", ["zeros", "value"], ["probability"])]
        initializers += [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]), helper.make_tensor("value", TensorProto.FLOAT, [], [constant])]
    else:
        nodes.append(helper.make_node("Identity", ["brightness"], ["probability"]))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 1, image_size, image_size])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch"])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def meta(image_size: int = 16, threshold: float = 0.5, **extra: Any) -> dict[str, Any]:
    """The keys of an export's ``model.json`` that prediction reads."""
    return {"format": "onnx", "model_file": "model.onnx", "preprocessing": {"image_size": image_size}, "threshold": threshold,
            "data": {"synthetic": False}, **extra}


def write_export(folder: Path, *, image_size: int = 16, meta_text: str | None = None, **extra: Any) -> Path:
    """``folder/model.onnx`` and ``folder/model.json`` with its hash, as an export records it (``meta_text`` replaces the JSON verbatim)."""
    onnx_file = tiny_onnx(folder / "model.onnx", image_size)
    extra = {"files": {"model.onnx": hashlib.sha256(onnx_file.read_bytes()).hexdigest()}, **extra}
    text = meta_text if meta_text is not None else json.dumps(meta(image_size, **extra))
    (folder / "model.json").write_text(text)
    return folder
