"""``python -m cxr_tune.compare --model A --model B [--model C ...] FOLDER ... [--operating-point NAME] [--metrics OUT.json]``: models on the same labelled images.

Which model is better on a site's labelled sample (the search's model or the adapted one, last
month's or this month's)? On a few hundred images each model's own interval is wide, and two
overlapping intervals say little; the difference between two models on the *same* images is
measured far more precisely by paired intervals on the same images (:func:`cxr_tune.set_metrics.paired_differences`:
Newcombe's interval for paired proportions for the rates, a paired bootstrap within each class for AUC and balanced accuracy).

Prints each model's sensitivity, specificity, balanced accuracy and AUC at its own stored threshold
(or ``--operating-point``), with 95 % intervals as ``predict`` prints them (Wilson score for the
rates of counts, percentile bootstrap for AUC and balanced accuracy); then every
later model minus the first (later models are not compared with each other), with paired 95 % intervals: an interval that
excludes 0 is a difference these images can show, each alone; they are not adjusted for how many are printed (four per
later model), so among several one may exclude 0 by chance. Images are labelled by their NORMAL/PNEUMONIA folders; files any
model cannot read are left out for all, so every number is on the same images, counted as export and ``predict``
count a set (byte-identical copies once, a file whose copy is filed under the other class not at all), and how many patients
they come from said as ``predict`` says it. A model whose own
selection set (or adaptation site) is being scored, a copy of it included, gets a line saying how many of its images are and
that its numbers are optimistic. A model whose ``model.onnx`` is an earlier one's (a copied folder; by the SHA-256 its
``model.json`` records) gets a line saying it is identical to it, and is still compared: a copy may have other thresholds,
and those differences are real. Images unlike
the training X-rays are flagged as ``predict`` flags them: a line beside the table counts them, a list names them. Only the
pickle-free ONNX exports are loaded, local or on object storage.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from typing import Any, TextIO

import pandas as pd

from cxr_tune import storage
from cxr_tune.cliargs import help_text, with_exit_statuses
from cxr_tune.errors import UserError, run_cli
from cxr_tune.formatting import fmt, interval, interval_in, json_safe, printable
from cxr_tune.operating_points import DEFAULT as DEFAULT_POINT
from cxr_tune.operating_points import threshold_for
from cxr_tune.predict import (STDOUT, check_lines, collect, distinct_labelled, distinct_lines, flagged_lines, interval_record, model_record, onnx_hash,
                              output_name, patient_counts, patient_lines, predict_each, stdout_for, write_output)
from cxr_tune.selection import selection_note
from cxr_tune.serving import load_model, note_if_synthetic, trained_on_synthetic
from cxr_tune.set_metrics import INTERVAL_METHODS, PAIRED_METHODS, PAIRED_METRICS, PAIRED_WITHHELD_WHY, held_out_metrics, paired_with_reasons, withheld_line

TITLES = {"auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity", "balanced_accuracy": "balanced accuracy"}


def compare(models: Sequence[str], inputs: Sequence[str], point: str = DEFAULT_POINT) -> dict[str, Any]:
    """Every model scored on the labelled images of ``inputs`` that all of them read, at operating point
    ``point``: ``{"images", "images_naming_a_patient", "patients" (:func:`~cxr_tune.predict.patient_counts`), "class_counts",
    "skipped", "intervals" (the method, the bootstrap's resamples and seed), "inputs" (resolved), "model_records" (which model ran:
    :func:`~cxr_tune.predict.model_record`), "synthetic" (the models trained on SYNTHETIC data), "identical" ({later: earlier} for the same model.onnx),
    "models": {name: metrics},
    "differences": {name: {metric: [difference, [low, high] or None]}}, "differences_withheld": {name: {metric: why}}}``,
    each difference a later model minus the first (an interval None where it is withheld, and why)."""
    if len(models) < 2:
        raise UserError("give --model two or more times: the models to compare")
    same = [name for i, name in enumerate(models) if storage.resolve(name) in {storage.resolve(m) for m in models[:i]}]
    if same:
        raise UserError(f"--model names the same model twice: {same[0]}")
    loaded = {name: load_model(name) for name in models}
    folders = [storage.resolve(str(model.folder)) for model in loaded.values()]  # a folder and its model.onnx are one model
    same = [name for i, name in enumerate(models) if folders[i] in folders[:i]]
    if same:
        raise UserError(f"--model names the same model twice: {same[0]}")
    thresholds = {}
    for name, model in loaded.items():  # an unknown point stops before any image is read
        try:
            thresholds[name] = threshold_for(model.meta, point)
        except UserError as exc:
            raise UserError(f"{name}: {exc}") from None
    files = collect(inputs)
    labelled = [file for file in files if file.label is not None]
    if not labelled:
        raise UserError(f"compare needs labelled images; none of the {len(files)} file(s) in {', '.join(inputs)} sits under a "
                        "NORMAL/ or PNEUMONIA/ folder")
    frames, skipped = {}, {}
    for name, (frame, unread) in zip(loaded, predict_each(list(loaded.values()), labelled, list(thresholds.values())), strict=True):
        # keyed by the file itself: its path text escapes bytes that are not UTF-8 (caf\xe9), which a name holding
        # those four characters also reads as
        frames[name] = frame.set_index(frame["file"].map(os.fsencode))
        skipped.update(dict(zip(unread["path"], unread["reason"], strict=True)))
    common = sorted(set.intersection(*(set(frame.index) for frame in frames.values())))
    # The images as export counts a set, as predict does: copies once, a file filed under both classes left out.
    counted, copies, both = distinct_labelled(next(iter(frames.values())).loc[common])
    common = sorted(counted.index)
    scores = {name: frame.loc[common, "probability"].to_numpy(dtype=float) for name, frame in frames.items()}
    labels = next(iter(frames.values())).loc[common, "label"].to_numpy().astype(int)
    counts = [int((labels == 0).sum()), int((labels == 1).sum())]
    if min(counts) == 0:
        left_out = f" ({both} file(s) left out: an identical copy is filed under the other class)" if both else ""
        raise UserError(f"compare needs readable images of both classes; {', '.join(inputs)} holds NORMAL {counts[0]}, PNEUMONIA {counts[1]}{left_out}")
    checks: dict[str, str] = {}
    for frame in frames.values():  # a check may depend on the model's input size (smaller than it): any model's counts
        for path, check in zip(frame.loc[common, "path"], frame.loc[common, "check"], strict=True):
            checks[path] = "; ".join(dict.fromkeys(part for part in (checks.get(path, ""), check) if part))
    first, *later = loaded
    onnx = {name: onnx_hash(model) for name, model in loaded.items()}
    hashes, paths = next(iter(frames.values())).loc[common, "content_hash"], [os.fspath(file) for file in next(iter(frames.values())).loc[common, "file"]]
    paired = {name: paired_with_reasons(labels, scores[name], thresholds[name], scores[first], thresholds[first]) for name in later}
    return {
        "flagged": {path: check for path, check in checks.items() if check},
        **patient_counts(next(iter(frames.values())).loc[common, "path"].tolist()), "class_counts": counts, "copies_counted_once": copies, "filed_under_both": both, "operating_point": point, "skipped": skipped,
        "intervals": {**interval_record(), "paired_method": PAIRED_METHODS},  # the differences' own method beside the models'
        "inputs": [storage.resolve(item) for item in inputs],
        "model_records": {name: model_record(model) for name, model in loaded.items()},
        "synthetic": [name for name, model in loaded.items() if trained_on_synthetic(model.meta)],
        # a later model whose model.onnx is an earlier one's (a copied folder): the earliest such, by the hash load_model checked
        "identical": {name: same for i, name in enumerate(loaded) if (same := next((m for m in models[:i] if onnx[m] == onnx[name]), None))},
        "selection_sets": {name: note for name, model in loaded.items() if (note := selection_note(model.meta, inputs, hashes, paths))},
        "models": {name: held_out_metrics(labels, scores[name], thresholds[name]) for name in loaded},
        "differences": {name: differences for name, (differences, _) in paired.items()},
        "differences_withheld": {name: withheld for name, (_, withheld) in paired.items()},
    }


def identical_lines(result: dict[str, Any]) -> list[str]:
    """A note per model that is an earlier one's ``model.onnx`` (a copied folder): its differences from it are its threshold's."""
    lines = []
    for name, same in result.get("identical", {}).items():
        mine, theirs = result["models"][name]["threshold_used"], result["models"][same]["threshold_used"]
        how = "every difference between them is 0" if mine == theirs else f"only their thresholds differ ({fmt(theirs)} and {fmt(mine)})"
        lines.append(f"Note: {name} is identical to {same} (the same model.onnx): {how}.")
    return lines


def describe(result: dict[str, Any]) -> str:
    """:func:`compare`'s result for people: one table of the models, one of their paired differences."""
    normal, pneumonia = result["class_counts"]
    models = pd.DataFrame([
        {"model": name, "threshold": fmt(metrics["threshold_used"]),
         **{TITLES[key]: fmt(metrics[key]) + interval_in(metrics["ci95"], key) for key in PAIRED_METRICS}}
        for name, metrics in result["models"].items()])
    lines = [f"{result['images']} labelled images (NORMAL {normal}, PNEUMONIA {pneumonia}), each model at its own threshold "
             f"(operating point {result['operating_point']}); {INTERVAL_METHODS}"]
    lines += [line.strip() for line in distinct_lines(result, listed="")]
    lines += [line.strip() for line in patient_lines(result)]
    lines += identical_lines(result)
    lines += [f"Note ({name}): {note}." for name, note in result.get("selection_sets", {}).items()]
    lines += [line.strip() for line in flagged_lines(len(result.get("flagged", {})))]
    lines += ["", models.to_markdown(index=False)]
    lines += [f"{name}: {line}" for name, metrics in result["models"].items() if (line := withheld_line(metrics.get("ci95_withheld", {})))]
    if result["differences"]:
        first = next(iter(result["models"]))
        differences = pd.DataFrame([
            {"model": name, **{TITLES[key]: f"{value:+.4f}" + (interval(ci) or " [n/a]") for key, (value, ci) in difference.items()}}
            for name, difference in result["differences"].items()])
        shown = len(result["differences"]) * len(PAIRED_METRICS)
        lines += ["", f"Minus {first} (each later model is compared with the first only), on the same images: 95 % intervals, each "
                      f"alone; not adjusted for the {shown} comparisons shown, so among them one may exclude 0 by chance ({PAIRED_METHODS}; "
                      "an interval that excludes 0 is a difference these images can show):", "", differences.to_markdown(index=False)]
        lines += [f"{name}: {line}" for name, withheld in result.get("differences_withheld", {}).items() if (line := withheld_line(withheld, PAIRED_WITHHELD_WHY))]
    if result.get("flagged"):
        lines += ["", *check_lines(result["flagged"])]
    if result["skipped"]:
        lines += ["", f"Left out: {len(result['skipped'])} file(s) a model could not read:"]
        lines += [f"  {printable(path)}: {reason}" for path, reason in result["skipped"].items()]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cxr_tune.compare", description=help_text(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="FOLDER", help="labelled images: folders (local or s3://...) with NORMAL/ and PNEUMONIA/ below them (searched recursively)")
    parser.add_argument("--model", action="append", required=True, metavar="MODEL", dest="models",
                        help="an export folder (or its .onnx file), local or on object storage; give it two or more times: the first is the "
                             "one the others are compared with")
    parser.add_argument("--operating-point", default=DEFAULT_POINT, metavar="NAME",
                        help=f"which stored threshold of each model decides (as in predict; default: {DEFAULT_POINT}, each model's own)")
    parser.add_argument("--metrics", default=None, metavar="OUT.json",
                        help="also write every number to this JSON file; '-': to stdout, the JSON alone (every other line goes to stderr)")
    return with_exit_statuses(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with stdout_for(args.metrics) as out:  # --metrics -: the JSON alone on stdout, as predict's
        return _main(args, out)


def _main(args: argparse.Namespace, out: TextIO) -> int:
    """``main`` after parsing; ``out``: where a ``--metrics -`` goes."""
    for path in (*args.models, *args.inputs):
        storage.check_plain_uri(path)
    if args.metrics and args.metrics != STDOUT:
        storage.check_writable(args.metrics, "--metrics", folder=False)
    result = compare(args.models, args.inputs, args.operating_point)
    note_if_synthetic(result["synthetic"], of=len(result["models"]))
    if args.metrics:  # first: a console that goes away (output piped into head) must not cost the file
        write_output(args.metrics, json.dumps(json_safe(result), indent=2), out)
    print(describe(result))
    if args.metrics:
        print(f"\nWrote every number to {output_name(args.metrics)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
