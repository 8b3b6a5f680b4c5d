"""Does test-time augmentation help an export? Its members scored with 1, 2, ... views averaged, on a labelled sample.

The views are the ones ``export --tta N`` builds into the ONNX graph (:data:`cxr_tune.views.TTA_VIEWS`:
identity, zoom in and out, shifts, small rotations; the first N). For each view count: AUC with its
95 % bootstrap interval and the **paired** difference to the export as it ships (same resampled images
for both), and the threshold the export's own rule picks on the sample with the balanced accuracy
there (averaging views moves the probabilities, so the shipped threshold would not fit them). The
sample is the one that would choose the view count, so every number on it is a **selection-set
number**; a count is only worth exporting when its paired interval lies above zero.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxr_tune import storage
from cxr_tune.bench.common import DEFAULT_DATA, PROJECT, paired_auc_difference, results_folder, write_result
from cxr_tune.errors import UserError
from cxr_tune.formatting import code_span, fmt, interval
from cxr_tune.selection import REPORTED_RESAMPLES
from cxr_tune.views import TTA_VIEWS


#: the model whose result results/benchmarks holds (tta_best.md); any other model's goes where --out says
COMMITTED_MODEL = PROJECT / "results" / "real" / "best"


def _paired(ci: list[float] | None) -> str:
    """A paired AUC difference's interval, signed; ``[n/a]`` where it is withheld (one view of a one-view export scores
    as the export does: every resample's difference is 0, :func:`cxr_tune.selection.bootstrap_interval`)."""
    return "[n/a]" if ci is None else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]"


def labelled_images(folder: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every readable image under ``folder``'s NORMAL/PNEUMONIA folders, counted as ``predict`` counts a labelled set
    (:func:`cxr_tune.predict.distinct_labelled`: byte-identical files once, none of a file whose copy is filed under the
    other class), so both score the same images: (uint8 ``(N, size, size)`` images in path order, labels, paths of what
    was left out with why)."""
    from cxr_tune.predict import collect, decode_hashed, distinct_labelled, path_text

    pixels, rows, left_out = [], [], []
    for path, label, reason in collect([folder]):
        if reason:  # a folder below it that was not read
            left_out.append(f"{path}: {reason}")
            continue
        if label is None:
            left_out.append(f"{path}: not under a NORMAL or PNEUMONIA folder")
            continue
        image, _checks, why, digest, _kind = decode_hashed(path, size)  # a dangling link, a pipe: listed, as predict lists them
        if image is None:
            left_out.append(f"{path}: {why}")
            continue
        rows.append({"path": path_text(path), "label": label, "content_hash": digest, "row": len(pixels)})
        pixels.append(image)
    frame = pd.DataFrame(rows, columns=["path", "label", "content_hash", "row"])
    counted = distinct_labelled(frame)[0]
    for dropped in frame[~frame["row"].isin(counted["row"])].itertuples():
        left_out.append(f"{dropped.path}: " + ("the same bytes as an earlier file" if dropped.content_hash in set(counted["content_hash"])
                                               else "filed under both classes (a byte-identical copy is under the other)"))
    labels = counted["label"].to_numpy(dtype=int)
    if not len(labels) or len(set(labels)) < 2:
        raise UserError(f"'{folder}' holds no readable images of both classes under NORMAL/ and PNEUMONIA/ folders")
    return np.stack([pixels[row] for row in counted["row"]]), labels, left_out


def view_scores(members: Any, x: np.ndarray, count: int) -> tuple[list[np.ndarray], list[float]]:
    """The members' averaged probability (no calibration) on each of the first ``count`` views of
    ``x``, and the seconds each took. Averaging the first N of them is what ``export --tta N``
    computes (:class:`cxr_tune.modelfile.TTAModel` averages the views' probabilities)."""
    import torch

    from cxr_tune.modelfile import TTAModel, serving_model, torch_scores

    plain = serving_model(members, 1).eval()
    with torch.no_grad():
        views = TTAModel(plain, count, members.image_size).views(torch.from_numpy(x[:, None].copy()))
    scores, seconds = [], []
    for view in views:
        started = time.perf_counter()
        scores.append(torch_scores(plain, view[:, 0].numpy()))
        seconds.append(time.perf_counter() - started)
    return scores, seconds


def view_text(view: tuple[float, float, float, float]) -> str:
    """One of :data:`TTA_VIEWS` in words, as the report's view list and its per-view table both name it."""
    zoom, dx, dy, degrees = view
    return f"zoom {zoom:g}, shift ({dx:+g}, {dy:+g}), {degrees:+g} deg"


def single_view_rows(per_view: list[np.ndarray], y: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """Each view alone against the unchanged image (the first): AUC, mean probability change, and
    the share of calls at ``threshold`` that flip."""
    from sklearn.metrics import roc_auc_score

    base = per_view[0]
    return [{"view": number, "what": view_text(view), "auc": float(roc_auc_score(y, scores)),
             "mean_change": float(np.mean(scores - base)), "flipped": float(np.mean((scores >= threshold) != (base >= threshold)))}
            for number, (scores, view) in enumerate(zip(per_view, TTA_VIEWS, strict=False), start=1)]


def run(model_dir: str, images_dir: str | None, views: Sequence[int], folder: Path | None = None) -> Path:
    """Write ``tta_<model folder name>.md`` / ``.json`` into ``folder``; returns the ``.md``. The default, ``results/benchmarks``,
    is for the committed model on the default images (half A) only: another model's result there, or the committed model's
    on other images, replaced the committed ``tta_best.md`` (any export is named ``best``)."""
    committed = storage.same_folder(str(model_dir), str(COMMITTED_MODEL)) and images_dir is None
    folder = results_folder("tta", str(folder) if folder else None,
                            None if committed else f"'{model_dir}'" + (f" on '{images_dir}'" if images_dir is not None else ""),
                            holds=f"the committed result of {COMMITTED_MODEL.relative_to(PROJECT)} on half A only")
    from sklearn.metrics import roc_auc_score

    from cxr_tune.set_metrics import bootstrap_intervals
    from cxr_tune.modelfile import load_members, recorded_views
    from cxr_tune.selection import choose_threshold
    from cxr_tune.serving import load_model, probabilities
    from cxr_tune.train.metrics import rates_at

    images_dir = images_dir or str(DEFAULT_DATA / "val")
    if not Path(images_dir).is_dir():
        raise UserError(f"image folder '{images_dir}' does not exist; pass --images with a folder of NORMAL/ and PNEUMONIA/ images")
    shipped = load_model(model_dir)
    try:
        members = load_members(str(shipped.folder), shipped.meta)
    except FileNotFoundError as missing:
        raise UserError(f"'{missing}' does not exist: bench tta needs the export's weights; export the model again") from None
    own_views = recorded_views(str(shipped.folder), shipped.meta)
    hp = members.hparams[0]  # the selected trial's, as export chose the threshold with
    x, y, left_out = labelled_images(images_dir, shipped.image_size)
    reference = probabilities(shipped, x)  # the export as it ships: its own views (and calibration, which keeps the ranking)
    print(f"{len(y)} images ({int(y.sum())} PNEUMONIA) from {images_dir}; {len(left_out)} left out. Scoring {list(views)} view(s) ...", flush=True)
    per_view, view_seconds = view_scores(members, x, max(views))
    rows = []
    for count in views:
        scores = np.mean(per_view[:count], axis=0)
        threshold = choose_threshold(y, scores, hp.criterion, hp.min_sensitivity, hp.threshold_tolerance)
        rates, ci = rates_at(y, scores, threshold), bootstrap_intervals(y, scores, threshold, resamples=REPORTED_RESAMPLES)
        difference, difference_ci = paired_auc_difference(y, scores, reference, REPORTED_RESAMPLES)
        rows.append({"views": count, "auc": float(roc_auc_score(y, scores)), "auc_ci": ci.get("auc"), "auc_minus_shipped": difference,
                     "auc_minus_shipped_ci": difference_ci, "threshold": threshold, "balanced_accuracy": rates["balanced_accuracy"],
                     "balanced_accuracy_ci": ci.get("balanced_accuracy"), "sensitivity": rates["sensitivity"],
                     "specificity": rates["specificity"], "seconds": float(sum(view_seconds[:count]))})
        print(f"  {count} view(s): AUC {rows[-1]['auc']:.4f}, minus shipped {difference:+.4f} "
              f"{_paired(difference_ci)}", flush=True)
    plain_threshold = choose_threshold(y, per_view[0], hp.criterion, hp.min_sensitivity, hp.threshold_tolerance)
    alone = single_view_rows(per_view, y, plain_threshold)
    table = pd.DataFrame([{
        "views": row["views"], "AUC [95 % CI]": fmt(row["auc"]) + interval(row["auc_ci"]),
        "AUC minus the shipped model's [paired 95 % CI]": f"{row['auc_minus_shipped']:+.4f} " + _paired(row["auc_minus_shipped_ci"]),
        "threshold (re-chosen)": fmt(row["threshold"], 3), "balanced accuracy [95 % CI]": fmt(row["balanced_accuracy"]) + interval(row["balanced_accuracy_ci"]),
        "sensitivity": fmt(row["sensitivity"]), "specificity": fmt(row["specificity"]), "seconds to score": f"{row['seconds']:.1f}",
    } for row in rows]).to_markdown(index=False, disable_numparse=True)
    name = Path(str(shipped.folder).rstrip("/")).name
    summary = [
        f"Model {code_span(model_dir)} ({len(members.nets)} member(s), {shipped.image_size} px, shipped with {own_views} view(s), threshold "
        f"{shipped.threshold:.3f}), scored on {code_span(images_dir)}: {len(y)} distinct images, {int(y.sum())} PNEUMONIA"
        + (f" ({len(left_out)} file(s) left out: unlabelled, unreadable, byte-identical to another or filed under both classes)" if left_out else "") + ".",
        "",
        "**Selection-set numbers**: this sample would choose the view count and each row's threshold (the export's rule: "
        f"{hp.criterion}, tolerance {hp.threshold_tolerance:g}, sensitivity floor {hp.min_sensitivity:g}). The views: "
        + "; ".join(f"{i + 1}: {view_text(view)}" for i, view in enumerate(TTA_VIEWS[:max(views)])) + ".",
        "",
        table,
        "",
        f"The paired interval compares each row with the export as it ships ({own_views} view(s)) on the same resampled images "
        f"({REPORTED_RESAMPLES} stratified resamples): above zero means the views rank these images measurably better. "
        "Seconds to score: the sum of its views' times with PyTorch on this machine (each view is one pass of every member).",
        "",
        "## Each view alone",
        "",
        "What one view does to the members' averaged answer (no views averaged, no calibration) on these images: its AUC, how far "
        "it moves the probability (mean change against the unchanged image), and the share of images whose call flips at the "
        f"threshold the export's rule picks for the unchanged images here ({plain_threshold:.3f}).",
        "",
        pd.DataFrame([{"view": f"{row['view']}: {row['what']}", "AUC": fmt(row["auc"]), "mean probability change": f"{row['mean_change']:+.4f}",
                       "calls flipped": f"{row['flipped']:.3f}"} for row in alone]).to_markdown(index=False, disable_numparse=True),
    ]
    return write_result(f"tta_{name}", f"Test-time augmentation: {name}", summary,
                        {"model": model_dir, "images": images_dir, "n": len(y), "left_out": left_out, "rows": rows, "single_view_threshold": plain_threshold, "single_views": alone}, folder=folder)
