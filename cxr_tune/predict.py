"""``python -m cxr_tune.predict --model EXPERIMENT/best IMAGE_OR_DIR ...``: score new X-rays.

``--model`` may be a folder on object storage (``s3://bucket/experiments/NAME/best``); the images
are local files.

Prints, per image, the PNEUMONIA probability and the label at the model's stored threshold
(chosen on validation when it was trained). Folders are searched recursively. Images under a
folder named NORMAL or PNEUMONIA (the Kermany layout) count as labelled, and for them it also
prints sensitivity, specificity, balanced accuracy, AUC and the confusion matrix; a rate the
labelled images cannot measure (AUC, say, when all are of one class) prints as ``n/a``. Unreadable
files are listed with the reason and skipped. Only the pickle-free ONNX export is loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from cxr_tune.data.imaging import try_decode_gray
from cxr_tune.data.sources import CLASSES
from cxr_tune.errors import UserError, run_cli
from cxr_tune.serving import LoadedModel, load_model, probabilities
from cxr_tune.train.metrics import rates_at


def collect(inputs: Sequence[str]) -> list[Path]:
    """Every file named on the command line, and every file under the named folders."""
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"'{item}' does not exist; pass image files or folders")
    if not files:
        raise UserError(f"no files found in {', '.join(inputs)}")
    return files


def label_of(path: Path) -> int | None:
    """1/0 when the file sits under a PNEUMONIA/NORMAL folder, else None."""
    for part in reversed(path.parent.parts):
        for label, name in enumerate(CLASSES):
            if part.lower() == name.lower():
                return label
    return None


def predict(model: LoadedModel, files: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(predictions: path, probability, prediction, label; skipped: path, reason)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        decoded = list(pool.map(lambda f: try_decode_gray(f, model.image_size), files))
    ok = [i for i, (image, _) in enumerate(decoded) if image is not None]
    skipped = pd.DataFrame([{"path": str(files[i]), "reason": reason} for i, (image, reason) in enumerate(decoded) if image is None], columns=["path", "reason"])
    images = np.stack([decoded[i][0] for i in ok]) if ok else np.zeros((0, model.image_size, model.image_size), np.uint8)
    scores = probabilities(model, images)
    frame = pd.DataFrame({
        "path": [str(files[i]) for i in ok],
        "probability": scores,
        "prediction": (scores >= model.threshold).astype(int),
        "label": [label_of(files[i]) for i in ok],
    })
    return frame, skipped


def evaluation(frame: pd.DataFrame, threshold: float) -> str | None:
    """Metrics on the labelled images, or None when none is labelled."""
    from sklearn.metrics import roc_auc_score

    labelled = frame.dropna(subset=["label"])
    if labelled.empty:
        return None
    labels, scores = labelled["label"].astype(int).to_numpy(), labelled["probability"].to_numpy()
    rates = rates_at(labels, scores, threshold)
    auc = roc_auc_score(labels, scores) if len(np.unique(labels)) == 2 else float("nan")
    return "\n".join([
        f"Labelled images: {len(labelled)} (NORMAL {int((labels == 0).sum())}, PNEUMONIA {int((labels == 1).sum())}) at threshold {threshold:.4f}",
        f"  sensitivity {_rate(rates['sensitivity'])}  specificity {_rate(rates['specificity'])}  "
        f"balanced accuracy {_rate(rates['balanced_accuracy'])}  accuracy {_rate(rates['accuracy'])}  AUC {_rate(auc)}",
        "  confusion matrix (rows: true, columns: predicted)",
        "                 NORMAL  PNEUMONIA",
        f"    NORMAL     {rates['tn']:7d}  {rates['fp']:9d}",
        f"    PNEUMONIA  {rates['fn']:7d}  {rates['tp']:9d}",
    ])


def _rate(value: float) -> str:
    """Four decimals, or ``n/a`` when the images cannot measure it (a class with no images gives NaN)."""
    return f"{value:.4f}" if np.isfinite(value) else "n/a"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and/or folders (searched recursively)")
    parser.add_argument("--model", required=True, help="export folder with model.onnx and model.json, local or on object storage, e.g. results/<experiment>/best or s3://bucket/experiments/<experiment>/best, or its .onnx file (loaded exactly, with the model.json beside it)")
    parser.add_argument("--csv", default=None, metavar="OUT.csv", help="also write path,probability,prediction (0/1) to this CSV file")
    parser.add_argument("--quiet", action="store_true", help="print only the summary, not one line per image")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    model = load_model(args.model)
    if model.meta.get("data", {}).get("synthetic"):
        print("Note: this model was trained on SYNTHETIC data; its outputs mean nothing for real patients.", file=sys.stderr)
    frame, skipped = predict(model, collect(args.inputs))
    if not args.quiet:
        for row in frame.itertuples():
            print(f"{row.probability:.4f}  {CLASSES[row.prediction]:<9}  {row.path}")
    if args.csv:
        frame[["path", "probability", "prediction"]].to_csv(args.csv, index=False)
        print(f"Wrote {len(frame)} predictions to {args.csv}")
    summary = evaluation(frame, model.threshold)
    if summary:
        print(summary)
    if not skipped.empty:
        print(f"Skipped {len(skipped)} unreadable file(s):")
        for row in skipped.itertuples():
            print(f"  {row.path}: {row.reason}")
    if frame.empty:
        raise UserError("none of the files could be read as an image")
    return 0


if __name__ == "__main__":
    run_cli(main)
