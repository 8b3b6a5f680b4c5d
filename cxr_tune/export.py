"""``python -m cxr_tune.export EXPERIMENT [--trial ID]``: a trial's model as pickle-free ONNX.

Writes ``model.onnx`` (uint8 image in, PNEUMONIA probability out, intensity normalization inside),
``model.json`` (hyperparameters, preprocessing, the validation-chosen threshold, validation metrics
and, when the data has a test split, test metrics at that threshold with 95 % bootstrap intervals)
and ``val_predictions.csv``. The ONNX file is loaded back with onnxruntime and checked against
the PyTorch model and against the validation scores stored in the checkpoint before the folder is
put in place. Works on finished and interrupted experiments alike.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxr_tune import __version__, storage
from cxr_tune.data.cache import load_images
from cxr_tune.data.imaging import PREPROCESS_VERSION, RESIZE_METHOD
from cxr_tune.errors import UserError, run_cli
from cxr_tune.serving import META_FILE, MODEL_FILE, probabilities
from cxr_tune.train.checkpoints import load_predictions, load_state
from cxr_tune.train.hparams import HParams
from cxr_tune.train.metrics import choose_threshold, evaluate_scores, rates_at

CI_METRICS = ("sensitivity", "specificity", "balanced_accuracy", "auc", "accuracy")
SCORE_TOLERANCE = 1e-4


def export_trial(experiment_dir: str, trial_id: str | None = None, out: str | None = None, ensemble: int | None = None) -> dict[str, Any]:
    """Export the selected trial (or ``trial_id``) of an experiment; returns ``model.json``'s content.

    With ``ensemble`` K > 1 (default: the space's ``search.ensemble``), the K best trials at the
    selected trial's image size are exported as one model that averages their probabilities, with
    its own threshold chosen on their averaged validation scores.
    """
    from cxr_tune.search.finish import load_trials
    from cxr_tune.search.results import checkpoint_for, ranked_trials
    from cxr_tune.search.runner import experiment_info, load_options
    from cxr_tune.search.space import load_space

    options = load_options(experiment_dir)
    info = experiment_info(experiment_dir)
    table = load_trials(experiment_dir)
    if trial_id is None:
        ranked = ranked_trials(table, options.select, options.select_tolerance)
        size = ranked.iloc[0]["image_size"] if "image_size" in ranked else None
        if size is not None:
            ranked = ranked[ranked["image_size"] == size]
        k = ensemble or load_space(storage.join(experiment_dir, "space.yaml")).settings.ensemble
        rows = [ranked.iloc[i] for i in range(min(k, len(ranked)))]
    else:
        matches = table[table["trial_id"] == trial_id]
        if matches.empty:
            raise UserError(f"no trial {trial_id!r} in {experiment_dir}; trials: {', '.join(table['trial_id'])}")
        rows = [matches.iloc[0]]
    target = Path(out) if out else Path(experiment_dir, "best" if trial_id is None else f"exports/{trial_id}")
    splits = pd.read_csv(storage.join(experiment_dir, "splits.csv"))
    members = [Member(str(row["trial_id"]), checkpoint_for(row, experiment_dir)) for row in rows]
    return write_export(members, target, splits, info, options.data.resolved_cache_dir)


@dataclass(frozen=True)
class Member:
    """One trial's checkpoint in an export."""

    trial_id: str
    checkpoint: str


class EnsembleModel(torch.nn.Module):
    """The mean PNEUMONIA probability of several serving models (same input size)."""

    def __init__(self, members: list[torch.nn.Module]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(images) for member in self.members]).mean(dim=0)


def write_export(members: list[Member], target: Path, splits: pd.DataFrame, info: dict[str, Any], cache_dir: str) -> dict[str, Any]:
    """Build the export in a temporary folder, check it, then move it to ``target``."""
    from cxr_tune.train.model import ServingModel, build_model

    states = [load_state(m.checkpoint) for m in members]
    hps = [HParams.from_config(state["hparams"]) for state in states]
    if len({hp.image_size for hp in hps}) != 1:
        raise UserError("ensemble members must share one image size")
    servings = []
    for state, hp in zip(states, hps, strict=True):
        net = build_model(hp)
        net.load_state_dict(state["model"])
        servings.append(ServingModel(net, hp.intensity).eval())
    serving = servings[0] if len(servings) == 1 else EnsembleModel(servings).eval()
    hp = hps[0]  # the selected trial: its threshold rule applies to the ensemble too
    predictions = [load_predictions(m.checkpoint).set_index("content_hash") for m in members]
    stored = pd.concat([p["score"] for p in predictions], axis=1).mean(axis=1)
    stored_labels = predictions[0]["label"]
    if len(members) == 1:
        threshold = float(states[0]["threshold"])
    else:
        threshold = choose_threshold(stored_labels.loc[stored.index].to_numpy(), stored.to_numpy(), hp.criterion, hp.min_sensitivity, hp.threshold_tolerance)

    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        _to_onnx(serving, hp.image_size, tmp / MODEL_FILE)
        import onnxruntime as ort

        # Loaded back with onnxruntime, exactly as predict will load it.
        loaded = ort.InferenceSession(str(tmp / MODEL_FILE), providers=["CPUExecutionProvider"])
        val_rows = splits[splits["role"] == "val"]
        val_images, val_kept = load_images(val_rows, hp.image_size, cache_dir, splits)
        onnx_scores = probabilities(loaded, val_images)
        with torch.no_grad():
            torch_scores = serving(torch.from_numpy(val_images[:, None].copy())).numpy()
        _check_scores(onnx_scores, torch_scores, "the PyTorch model")
        _check_scores(onnx_scores, stored.loc[val_kept["content_hash"]].to_numpy(), "the validation scores stored in the checkpoints")
        val_labels = val_kept["label"].to_numpy()
        val_metrics = {
            **evaluate_scores(val_labels, onnx_scores, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance),
            **rates_at(val_labels, onnx_scores, threshold),  # at the stored threshold, as predict will use it
            "threshold": threshold,
        }
        pd.DataFrame({"path": val_kept["path"], "label": val_kept["label"], "probability": onnx_scores,
                      "prediction": (onnx_scores >= threshold).astype(int)}).to_csv(tmp / "val_predictions.csv", index=False)
        meta = {
            "format": "onnx",
            "model_file": MODEL_FILE,
            "input": {"name": "image", "dtype": "uint8", "shape": ["batch", 1, hp.image_size, hp.image_size]},
            "output": {"name": "probability", "meaning": "probability of PNEUMONIA" + (f" (mean of {len(members)} models)" if len(members) > 1 else "")},
            "preprocessing": {
                "image_size": hp.image_size,
                "grayscale": "8-bit (16-bit images min-max scaled; RGB/CMYK/palette converted; alpha over black)",
                "resize": RESIZE_METHOD,
                "intensity_normalization": ", ".join(sorted({h.intensity for h in hps})) + " (inside the ONNX graph)",
                "preprocess_version": PREPROCESS_VERSION,
                "function": "cxr_tune.data.imaging.decode_gray",
            },
            "threshold": threshold,
            "threshold_rule": f"middle (logit scale) of the thresholds within {hp.threshold_tolerance:g} of the best validation {hp.criterion}"
            + (f", sensitivity >= {hp.min_sensitivity:g}" if hp.min_sensitivity else ""),
            "hparams": hp.to_dict(),
            "trial_id": members[0].trial_id,
            "epoch": int(states[0]["epoch"]) + 1,
            "members": [{"trial_id": m.trial_id, "epoch": int(st["epoch"]) + 1, "hparams": h.to_dict()} for m, st, h in zip(members, states, hps, strict=True)],
            "validation": _clean(val_metrics),
            "data": {"description": info["data_description"], "synthetic": info["synthetic"], "root": info["data_root"]},
            "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cxr_tune_version": __version__,
        }
        if info.get("has_test"):
            meta["test"] = _test_metrics(loaded, splits, hp.image_size, cache_dir, threshold, tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float, *, resamples: int = 2000, seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile bootstrap intervals (scipy) of the metrics at a fixed threshold."""
    from scipy.stats import bootstrap

    out = {}
    for name in CI_METRICS:
        def statistic(y: np.ndarray, p: np.ndarray, name: str = name) -> float:
            if name == "auc":
                from sklearn.metrics import roc_auc_score

                return roc_auc_score(y, p) if len(np.unique(y)) == 2 else np.nan
            return rates_at(y, p, threshold)[name]

        result = bootstrap((labels, scores), statistic, paired=True, vectorized=False, n_resamples=resamples,
                           method="percentile", random_state=np.random.default_rng(seed))
        out[name] = [float(result.confidence_interval.low), float(result.confidence_interval.high)]
    return out


def _test_metrics(model: Any, splits: pd.DataFrame, size: int, cache_dir: str, threshold: float, folder: Path) -> dict[str, Any]:
    """Scored once, at the stored threshold; never used to choose anything."""
    rows = splits[splits["role"] == "test"]
    images, kept = load_images(rows, size, cache_dir, splits)
    scores = probabilities(model, images)
    labels = kept["label"].to_numpy()
    metrics = _clean({**evaluate_scores(labels, scores), **rates_at(labels, scores, threshold)})
    metrics.pop("threshold", None)  # the test split does not choose a threshold; the stored one is used
    metrics.pop("objective", None)
    metrics["threshold_used"] = threshold
    metrics["ci95"] = bootstrap_intervals(labels, scores, threshold)
    pd.DataFrame({"path": kept["path"], "label": labels, "probability": scores,
                  "prediction": (scores >= threshold).astype(int)}).to_csv(folder / "test_predictions.csv", index=False)
    return metrics


def _to_onnx(model: Any, size: int, path: Path) -> None:
    import torch

    example = torch.zeros(2, 1, size, size, dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated but still the simplest pickle-free path
        torch.onnx.export(
            model, (example,), str(path), dynamo=False, opset_version=17,
            input_names=["image"], output_names=["probability"],
            dynamic_axes={"image": {0: "batch"}, "probability": {0: "batch"}},
        )


def _check_scores(onnx_scores: np.ndarray, reference: np.ndarray, what: str) -> None:
    if len(onnx_scores) and float(np.max(np.abs(onnx_scores - reference))) > SCORE_TOLERANCE:
        raise RuntimeError(f"the ONNX export disagrees with {what} (max difference {np.max(np.abs(onnx_scores - reference)):.2e})")


def _clean(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in metrics.items()}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", help="experiment folder (STORAGE/NAME) of a finished or interrupted search")
    parser.add_argument("--trial", default=None, help="trial id to export (default: the selected best trial, into EXPERIMENT/best)")
    parser.add_argument("--ensemble", type=int, default=None, metavar="K", help="export the K best trials as one averaging model (default: the space's search.ensemble, usually 1)")
    parser.add_argument("--out", default=None, help="output folder (default: EXPERIMENT/best, or EXPERIMENT/exports/<trial> with --trial)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    experiment = storage.resolve(args.experiment)
    if args.ensemble is not None and (args.ensemble < 1 or args.trial):
        raise UserError("--ensemble K needs K >= 1 and no --trial")
    meta = export_trial(experiment, args.trial, args.out, args.ensemble)
    target = args.out or storage.join(experiment, "best" if args.trial is None else f"exports/{args.trial}")
    print(summary(meta, target))
    return 0


def summary(meta: dict[str, Any], target: str) -> str:
    val = meta["validation"]
    tag = " [SYNTHETIC DATA]" if meta["data"]["synthetic"] else ""
    lines = [
        f"Exported trial {meta['trial_id']} (epoch {meta['epoch']})"
        + (f" with {len(meta['members']) - 1} more trial(s) as an averaging ensemble" if len(meta["members"]) > 1 else "")
        + f"{tag} to {target}",
        f"  threshold {meta['threshold']:.4f} ({meta['threshold_rule']})",
        f"  validation: AUC {val['auc']:.4f}, sensitivity {val['sensitivity']:.4f}, specificity {val['specificity']:.4f}, balanced accuracy {val['balanced_accuracy']:.4f}",
    ]
    if "test" in meta:
        test, ci = meta["test"], meta["test"]["ci95"]
        lines.append(
            "  test (held out, stored threshold): "
            + ", ".join(f"{k.replace('_', ' ')} {test[k]:.4f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" for k in ("auc", "sensitivity", "specificity", "balanced_accuracy"))
        )
    return "\n".join(lines)


if __name__ == "__main__":
    run_cli(main)
