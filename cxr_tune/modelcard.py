"""``MODEL_CARD.md``: what a clinician or reviewer needs to judge an exported model, from its ``model.json``.

Laid out as a model card (Mitchell et al. 2019, "Model Cards for Model Reporting") with the items
TRIPOD+AI and CLAIM ask of a prediction-model report: intended use, data (source, licence, counts,
patient grouping, exclusions), how the model was chosen, performance per set and per subgroup with
intervals, calibration, operating points, site adaptation, limitations and how to reproduce it.

Every number in the card is read from ``model.json`` (:func:`model_card` takes its content and
nothing else), so the card cannot disagree with the file predict loads; export and adapt write it
into the model folder beside ``model.json``::

    text = model_card(json.loads(Path("best/model.json").read_text()))
"""

from __future__ import annotations

import shlex
from typing import Any

from cxr_tune import storage
from cxr_tune.calibration import RELIABILITY_SETS as SETS  # the measured sets, in the order the card shows them
from cxr_tune.calibration import probability_prior
from cxr_tune.data.imaging import DECODE_STEPS, decode_steps_of
from cxr_tune.data.sources import FOLDER_PATIENT, IMAGE_PATIENT, NAMED_PATIENTS, PATIENT_KEY_KINDS
from cxr_tune.formatting import code_span, fmt, interval, interval_in, rerun_command, search_command
from cxr_tune.operating_points import NAMES as POINT_ORDER
from cxr_tune.provenance import describe as describe_code
from cxr_tune.selection import selection_label, selection_sources
from cxr_tune.set_metrics import INTERVAL_METHODS, withheld_line

CARD_FILE = "MODEL_CARD.md"
RELIABILITY_FILE = "reliability.png"  # the reliability diagram export writes beside the card
SAMPLERS = {"tpe": "Optuna TPE", "random": "random"}
RATES = (("auc", "AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("balanced_accuracy", "balanced accuracy"))
#: How often a call is right, at the set's own prevalence: what a clinician at a site asks after the rates.
PREDICTIVE = (("prevalence", "PNEUMONIA share"), ("ppv", "PPV"), ("npv", "NPV"))
KERMANY = ("Kermany et al. 2018, \"Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for Classification\" "
           "(Mendeley Data, doi:10.17632/rscbjbr9sj.2): pediatric chest X-rays (anterior-posterior) of children aged one to five "
           "from Guangzhou Women and Children's Medical Center, licence CC BY 4.0")


def model_card(meta: dict[str, Any]) -> str:
    """The card's Markdown for an export's ``model.json`` content (``meta``)."""
    measured, sets, _ = _measured(meta)
    members = [m.get("trial_id") for m in meta.get("members", [])]
    which = f"trial `{meta.get('trial_id')}`" if len(members) <= 1 else f"{len(members)} runs averaged: " + ", ".join(f"`{m}`" for m in members)
    lines = [f"# Model card: PNEUMONIA vs NORMAL on pediatric chest X-rays ({which})", ""]
    if meta.get("data", {}).get("synthetic"):
        lines += ["> **SYNTHETIC DATA.** This model was trained and measured on procedurally drawn images, not patients. "
                  "Nothing below says anything about real chest X-rays.", ""]
    if flat := one_score_warning(meta):
        lines += [f"> **Warning.** {_sentence(flat)}", ""]
    lines += _details(meta) + _intended_use() + _data(meta, measured, sets) + _search(meta)
    diagram = ("Reliability diagram: none for the adapted model (adapt reads no labels and writes none); the unadapted model's folder "
               "holds the one measured before adaptation." if meta.get("adaptation") else "Reliability diagram: `reliability.png`.")
    lines += performance_section(meta) + subgroup_section(meta) + calibration_section(meta, diagram) + operating_point_section(meta)
    lines += _adaptation(meta) + _limitations(meta, measured)
    lines += ["## Checking it on new labelled images", "", "FOLDER: this model's folder.", "", *next_steps("FOLDER"), ""] + _reproduce(meta)
    return "\n".join(lines)


#: the spread of a model's probabilities on its deciding set (``score_spread``) below which it gives every image one output: float32
#: probabilities a blown-up network saturates all read 1.0, while a model that ranks its images spreads them far wider
ONE_SCORE_SPREAD = 1e-6


def one_score_warning(meta: dict[str, Any]) -> str | None:
    """The warning, for the console and the card, when the model gives every image of its deciding set (nearly) the same
    probability (``score_spread``, recorded by export): its AUC is 0.5 and its threshold calls every image one class, yet
    nothing else flags it (divergence is caught only as non-finite scores). None otherwise, and for a model.json without the record."""
    measured, _, _ = _measured(meta)
    deciding = "external" if meta.get("deciding_set") == "external" else "validation"
    spread = (measured.get(deciding) or {}).get("score_spread")
    if spread is None or spread >= ONE_SCORE_SPREAD:
        return None
    return f"the model gives every image of the {_set_name(meta.get('deciding_set'))} the same score: it learned nothing; check the learning rate"


#: how export's threshold rule (model.json's ``threshold_rule``, written with this) says where in the range of near-best
#: thresholds the threshold sits, and that said in words (older model.json files hold the same phrase)
LOGIT_MIDDLE = "middle (logit scale)"
LOGIT_MIDDLE_SAID = "middle (logit scale: halfway between the range's ends in log-odds, log(p / (1 - p)))"


def decode_steps(preprocessing: dict[str, Any]) -> str | None:
    """How the model's pixels are made, call by call (:data:`~cxr_tune.data.imaging.DECODE_STEPS`): as ``model.json``'s
    ``preprocessing`` (this) records them, else, for an export from before that record, the steps of its recorded
    ``preprocess_version`` (:func:`~cxr_tune.data.imaging.decode_steps_of`; one from before the version was recorded is
    taken at its word, as :func:`cxr_tune.data.imaging.changes_since` takes it); None for a version this code does not know."""
    if isinstance(preprocessing.get("steps"), str):
        return preprocessing["steps"]
    version, size = preprocessing.get("preprocess_version"), preprocessing.get("image_size")
    steps = DECODE_STEPS if version is None else decode_steps_of(version)
    return steps.format(size=size) if steps is not None and size is not None else None


def threshold_words(meta: dict[str, Any]) -> str:
    """The rule that chose a model's threshold and what the threshold does, as the card and the report give them: the
    recorded rule with "middle (logit scale)" said in words, then which side is PNEUMONIA (export, predict and every rate
    call an image PNEUMONIA when its probability is >= the threshold, :func:`cxr_tune.selection.choose_threshold`)."""
    threshold = fmt(meta.get("threshold"))
    rule = str(meta.get("threshold_rule")).replace(LOGIT_MIDDLE, LOGIT_MIDDLE_SAID, 1)
    return f"{rule}. An image whose probability of PNEUMONIA is {threshold} or more is called PNEUMONIA, one below it NORMAL"


def next_steps(model: str) -> list[str]:
    """Markdown bullets: how to score the model in folder ``model`` on labelled images no choice saw, and how to compare it
    with another model on them (the card and the report say it alike)."""
    predict = f"python -m cxr_tune.predict --model {model} LABELLED_FOLDER --quiet --metrics metrics.json"
    compare = f"python -m cxr_tune.compare --model {model} --model OTHER_MODEL LABELLED_FOLDER"
    return [f"- On a withheld labelled folder (images under `NORMAL/` and `PNEUMONIA/` that no search, export or adaptation read): "
            f"{code_span(predict)} prints sensitivity, specificity, AUC and calibration with 95 % intervals at the model's threshold, "
            "and writes them to `metrics.json`.",
            f"- Against another model on the same images, with paired intervals for the differences: {code_span(compare)}."]


def performance_section(meta: dict[str, Any]) -> list[str]:
    """Markdown lines: every measured set's rates at the stored threshold, with intervals."""
    measured, sets, marked = _measured(meta)
    return _performance(measured, sets, marked, bool(meta.get("adaptation")))


def subgroup_section(meta: dict[str, Any]) -> list[str]:
    """Markdown lines: sensitivity per pneumonia type, specificity per normal batch, per set."""
    measured, sets, marked = _measured(meta)
    return _subgroups(measured, sets, marked, _unadapted_threshold(meta))


def calibration_section(meta: dict[str, Any], diagram: str = "Reliability diagram: `reliability.png`.") -> list[str]:
    """Markdown lines: ECE and Brier score per set (before and after a calibration map), then ``diagram``."""
    measured, sets, marked = _measured(meta)
    return _calibration(meta, measured, sets, marked, diagram)


def operating_point_section(meta: dict[str, Any]) -> list[str]:
    """Markdown lines: every operating point's threshold and rule, and its rates on each set."""
    measured, sets, marked = _measured(meta)
    return _operating_points(meta, measured, sets, marked)


def _measured(meta: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]], frozenset[str]]:
    """(where the sets' numbers are, the measured sets as (key, name), the keys of the sets whose numbers are
    selection-set numbers: the deciding set, a set marked ``selection_set``, and the external set or the test split when it
    is or lies in a folder that chose something of the model (:func:`cxr_tune.selection.selection_sources`: the site it was
    adapted to))."""
    measured = meta.get("before_adaptation", meta)  # an adapted model's sets were measured before adaptation
    sets = [(key, name) for key, name in SETS if isinstance(measured.get(key), dict)]
    deciding = "external" if meta.get("deciding_set") == "external" else "validation"
    marked = {deciding} | {key for key, _ in sets if measured[key].get("selection_set")}
    marked |= {key for key in ("external", "test") if _chose_from(meta, _folder_of(meta, measured, key))}
    return measured, sets, frozenset(marked)


def _folder_of(meta: dict[str, Any], measured: dict[str, Any], key: str) -> str | None:
    """Where a measured set's images are: the external set's ``source``, the test split's ``test/`` under the data root."""
    if key == "external":
        return (measured.get("external") or {}).get("source")
    root = (meta.get("data") or {}).get("root")
    return storage.join(root, "test") if key == "test" and root and measured.get("test") else None


def _chose_from(meta: dict[str, Any], folder: str | None) -> bool:
    """Whether ``folder`` is, or lies in, a folder whose images chose something of the model."""
    return bool(folder) and any(storage.within(storage.resolve(folder), storage.resolve(chooser.source))
                                for chooser in selection_sources(meta) if chooser.source)


def _unadapted_threshold(meta: dict[str, Any]) -> float | None:
    """The threshold an adapted model's sets were measured at (before adaptation); None for a model not adapted."""
    if not meta.get("adaptation"):
        return None
    return (meta.get("before_adaptation") or {}).get("threshold", meta["adaptation"].get("unadapted_threshold"))


def _details(meta: dict[str, Any]) -> list[str]:
    hp, members = meta.get("hparams", {}), meta.get("members", [])
    size = meta.get("preprocessing", {}).get("image_size")
    grayscale = meta.get("preprocessing", {}).get("grayscale", "8-bit (16-bit images min-max scaled)")
    calibration = meta.get("calibration", {})
    return [
        "## Model details", "",
        f"- Output: {meta.get('output', {}).get('meaning', 'probability of PNEUMONIA')}, from a {size} x {size} grayscale image "
        f"(`model.onnx`, ONNX; weights also in `weights.safetensors`; nothing needs unpickling).",
        # Another tool makes other pixels unless it takes every step (the reduced-scale JPEG decode moved decisions), and
        # a 16-bit image's are the ones it most often gets wrong: Pillow's convert("L") clips.
        f"- Input pixels: {size} x {size} uint8 grayscale, made from any image file by `cxr_tune.data.imaging.decode_gray`"
        + (f", call by call: {steps}. " if (steps := decode_steps(meta.get("preprocessing", {}))) else f": {grayscale}; ")
        + "Pillow's own `convert(\"L\")` of a 16-bit image clips everything above 255 to white instead of scaling it.",
        f"- Network: `{hp.get('arch', 'cnn')}`" + (f" ({len(members)} members averaged: " + ", ".join(f"`{m['trial_id']}` epoch {m['epoch']}" for m in members) + ")"
                                                   if len(members) > 1 else f", trial `{meta.get('trial_id')}` at epoch {meta.get('epoch')}")
        + f"; intensity normalization `{hp.get('intensity')}`; test-time views: {meta.get('tta_views', 1)}.",
        f"- Decision threshold {fmt(meta.get('threshold'))} (operating point `balanced`): {threshold_words(meta)}.",
        "- Calibration map in the graph: " + (f"{calibration['method']} scaling fitted on the {_set_name(calibration.get('fitted_on'))} "
                                               f"(slope {fmt(calibration.get('slope'))}, intercept {fmt(calibration.get('intercept'))})"
                                               if calibration.get("method", "none") != "none" else "none (the network's own probabilities)") + ".",
        # An adapted model keeps its export's exported_at: the date alone would pass for the adaptation's.
        f"- Built by cxr_tune {meta.get('cxr_tune_version')}: exported {meta.get('exported_at')}, adapted {meta['adaptation'].get('adapted_at')}."
        if isinstance(meta.get("adaptation"), dict) else f"- Built by cxr_tune {meta.get('cxr_tune_version')} on {meta.get('exported_at')}.", "",
    ]


def _intended_use() -> list[str]:
    return [
        "## Intended use", "",
        "- **Research and teaching only. Not a medical device**: not cleared or approved by any regulator, not validated "
        "prospectively, and not to be used to diagnose, triage or treat anyone.",
        "- Intended users: people studying how chest X-ray classifiers are built, selected and checked.",
        "- Out of scope: adults, lateral views, other modalities, other diseases (a NORMAL call does not rule out anything but "
        "what the training labels called pneumonia), and any site whose films differ from the training data without checking "
        "the model there first (`python -m cxr_tune.predict` on a labelled folder from that site). `predict` names the images "
        "whose files show them out of scope (colour pictures, blank frames, images smaller than the model's input, DICOM lateral "
        "views or other modalities); it cannot see an adult or another site.", "",
    ]


def _data(meta: dict[str, Any], measured: dict[str, Any], sets: list[tuple[str, str]]) -> list[str]:
    data = meta.get("data", {})
    source = ("SYNTHETIC images drawn by cxr_tune (not patient data; no licence applies)" if data.get("synthetic")
              else f"{data.get('description')}; assumed to be {KERMANY} (check this if you trained on other images)")
    counts = [f"training {_counts(meta.get('train_class_counts'))}"]
    counts += [f"{name} {_counts(measured[key].get('class_counts'))}" for key, name in sets]
    split = meta.get("search", {}).get("split", {})
    external = measured.get("external", {})
    return [
        "## Data", "",
        f"- Source: {source}.",
        "- Labels: the NORMAL / PNEUMONIA folder each file sits in, as the data set gives them.",
        "- Images (NORMAL / PNEUMONIA, distinct files): " + "; ".join(counts)
        + (f"; fingerprint {code_span(data['fingerprint'])} (every image's content hash and role in the experiment's `splits.csv`, as a "
           "`train` run's `run.json` records its data)" if data.get("fingerprint") else "") + ".",
        "- Patient grouping: a patient's images and identical files stay together in one of train, carved validation, external and test. "
        f"A file's patient is read from {NAMED_PATIENTS}; files whose names carry no patient id are, in a sub-folder of a class folder, "
        f"{FOLDER_PATIENT}, and directly in a class folder {IMAGE_PATIENT}."
        + (" Patients in the experiment's `splits.csv`, by the rule that keyed them: "
           + "; ".join(f"{kind} {data['patient_keys'].get(kind, 0)}" for kind in PATIENT_KEY_KINDS) + "."
           if isinstance(data.get("patient_keys"), dict) else "")
        + (f" Carved validation is {fmt(split.get('val_fraction'), 2)} of the training folder's patient groups (split seed "
           f"{split.get('split_seed')})." if split.get("val_fraction") is not None else "")
        + (f" The external set is {code_span(external['source'])}." if external.get("source") else ""),
        "- Excluded: images of a patient who also appears in the test folder or the external set, and files filed under both "
        "classes (role `excluded` in the experiment's `splits.csv`, with the reason)."
        + (" Excluded here (distinct images): " + "; ".join(f"{reason}: {count}" for reason, count in data["excluded_images"].items()) + "."
           if data.get("excluded_images") else (" Excluded here: none." if "excluded_images" in data else ""))
        + _set_aside(data.get("unused_images")), "",
    ]


def _set_aside(unused: Any) -> str:
    """The sentence on the data's own ``val`` folder: set aside, how many images and why, when the export recorded it
    (``data.unused_images``), else the rule (a model.json from before the record)."""
    if not isinstance(unused, dict):
        return (" The data's own `val` folder is set aside (role `unused`) when it is neither the external set nor, with "
                "`--use-official-val`, part of carved validation.")
    if not unused:
        return ""
    return (" Set aside, not used (role `unused`: the data's own `val` folder; distinct images): "
            + "; ".join(f"{reason or 'no reason recorded'}: {count}" for reason, count in unused.items()) + ".")


def _trials_line(search: dict[str, Any]) -> str:
    """How many trials the search asked for and, where the export recorded it, how many had trained when it chose."""
    requested, trained, unfinished = search["trials"], search.get("trials_trained"), search.get("trials_unfinished") or 0
    failed = search.get("trials_failed") or 0
    if trained is None:
        return f"{requested} trial(s) requested"
    if trained >= requested and not unfinished:
        return f"{requested} trial(s) requested, all {trained} trained"
    mid_run = (f" ({unfinished} had not ended: the search was stopped, and a resumed search may choose another model)" if unfinished
               else f" ({failed} failed: a failed trial is not a candidate, even after training epochs; the report's Failed trials section has each error)" if failed else "")
    return f"{requested} trial(s) requested, {trained} of them trained when this model was exported{mid_run}"


def _search(meta: dict[str, Any]) -> list[str]:
    search = meta.get("search", {})
    if not search:
        return []
    deciding = _set_name(meta.get("deciding_set"))
    how = [f"search space {code_span(search['space'])}" if search.get("space") else None,
           _trials_line(search) if search.get("trials") else None,
           f"{SAMPLERS.get(search['sampler'], search['sampler'])} sampling" if search.get("sampler") else None,
           None if search.get("early_stopping") is None else ("ASHA early stopping" if search["early_stopping"] else "no early stopping"),
           f"at most {search['max_epochs']} epoch(s) a trial" if search.get("max_epochs") else None]
    how = [part for part in how if part]
    epochs = "" if meta.get("epochs_chosen_on") else "each trial's epoch, "  # under --val-data the search's own set chose them
    rule = (meta.get("adaptation") or {}).get("threshold_rule")
    chose = (f"the ensemble members and the unadapted model's threshold (this model's threshold came from the site adaptation rule `{rule}`, "
             "and the operating points were dropped)" if meta.get("adaptation") else "the ensemble members, the threshold and the operating points")
    lines = ["## How the model was chosen", ""]
    if how:
        text = "; ".join(how)
        lines.append("- " + text[0].upper() + text[1:] + ".")
    lines += [
        f"- Deciding set: **{deciding}**. It chose {epochs}the trial ranking, {chose}"
        f"{', and fitted the calibration' if (meta.get('calibration') or {}).get('method', 'none') != 'none' else ''}: "
        f"its numbers below are selection-set numbers, optimistic."
        + (f" Each trial's epoch was chosen during the search, on the search's own {_set_name(meta['epochs_chosen_on'])}, whose "
           "numbers are selection-set numbers too." if meta.get("epochs_chosen_on") else ""),
        f"- Rule: {str(search.get('criterion', '')).replace('_', ' ')} at a threshold chosen on the deciding set"
        + (f" (sensitivity >= {fmt(search.get('min_sensitivity'), 2)})" if search.get("min_sensitivity") else "")
        + f". {search.get('ties', '')}",
        "- The test split (when there is one) chose nothing." + (f" Command: {code_span(search_command(search))}." if search.get("command") else ""), "",
    ]
    final = meta.get("final_fit")
    if final:
        runs = final.get("runs", []) + final.get("diverged", [])
        configs = sorted({run["trial_id"] for run in runs})
        # One length for every run, set in the space before they ran; a deciding-set comparison may have set it (real.yaml's
        # 32 epochs were chosen on half A), which "no epoch picked on the deciding set" hid.
        space = f" ({code_span(search['space'])})" if search.get("space") else ""
        lines[-1:-1] = [f"- Final fit: {len(configs)} best configuration(s) ({', '.join(f'`{c}`' for c in configs)}) trained again with new "
                        f"seeds, {len(runs)} run(s) of {runs[0]['epochs'] if runs else '?'} epochs, the space's `final_fit_epochs` set before "
                        f"they ran, each judged at its last epoch; how that length was chosen, on the deciding set or not, is the space "
                        f"file's to say{space}. {_sentence(final_fit_line(final))}"]
    return lines


def _performance(measured: dict[str, Any], sets: list[tuple[str, str]], marked: frozenset[str], adapted: bool) -> list[str]:
    header = "| set | images | threshold | " + " | ".join(name for _, name in (*RATES, *PREDICTIVE)) + " |"
    rows = [header, "|" + " --- |" * (3 + len(RATES) + len(PREDICTIVE))]
    for key, name in sets:
        metrics = measured[key]
        ci = metrics.get("ci95", {})
        threshold = metrics.get("threshold", metrics.get("threshold_used"))
        rows.append(f"| {_label(key, name, marked)} | {metrics.get('n')} | {fmt(threshold)} | "
                    + " | ".join(f"{fmt(metrics.get(rate))}{interval_in(ci, rate)}" for rate, _ in RATES) + " | "
                    + " | ".join(fmt(metrics.get(value)) for value, _ in PREDICTIVE) + " |")
    when = "Measured before site adaptation, at the unadapted model's threshold" if adapted else "At the stored threshold"
    withheld = [f"{name}: {line}" for key, name in sets if (line := withheld_line(measured[key].get("ci95_withheld", {})))]
    return ["## Performance", "", f"{when}; {INTERVAL_METHODS}. PPV and NPV hold at each set's own PNEUMONIA share: at a site with "
            "another prevalence they differ (sensitivity and specificity do not depend on it).", "", *rows, "",
            *[f"{line}." for line in withheld], *([""] if withheld else [])]


def _subgroups(measured: dict[str, Any], sets: list[tuple[str, str]], marked: frozenset[str], unadapted: float | None) -> list[str]:
    """One row per group and set; a group with no image in a set is left out (model.json keeps it, n 0): synthetic data name
    no NORMAL2-IM- file, and each set had a "0 | 0 | n/a" row for it."""
    rows = []
    for key, name in sets:
        for group in (g for g in (measured[key].get("subgroups") or {}).values() if g["n"]):
            rows.append(f"| {_label(key, name, marked)} | {group['description']} | {group['rate']} | {group['n']} | {group['correct']} | "
                        f"{fmt(group.get('value'))}{interval(group.get('ci95'))} |")
    if not rows:
        return ["## Subgroups", "", "The file names carry no subgroups (Kermany's bacterial/viral and IM-/NORMAL2-IM- names), so there is no table.", ""]
    when = "at the stored threshold" if unadapted is None else f"measured before site adaptation, at the unadapted model's threshold {fmt(unadapted)}"
    return ["## Subgroups", "", f"From the Kermany file names, {when}; 95 % Wilson intervals. Small groups have wide intervals. "
                                   "A group with no image in a set is left out.", "",
            "| set | group | rate | images | called right | rate [95 % CI] |", "| --- | --- | --- | --- | --- | --- |", *rows, ""]


def _calibration(meta: dict[str, Any], measured: dict[str, Any], sets: list[tuple[str, str]], marked: frozenset[str], diagram: str) -> list[str]:
    record = meta.get("calibration", {})
    calibrated = record.get("method", "none") != "none"
    rows = []
    for key, name in sets:
        cal = measured[key].get("calibration")
        if not cal:
            continue
        before = cal.get("before", {})
        rows.append(f"| {_label(key, name, marked)} | {fmt(cal.get('ece'))}{interval_in(cal.get('ci95'), 'ece')} | "
                    f"{fmt(cal.get('brier'))}{interval_in(cal.get('ci95'), 'brier')} |"
                    + (f" {fmt(before.get('ece'))}{interval_in(before.get('ci95'), 'ece')} | "
                       f"{fmt(before.get('brier'))}{interval_in(before.get('ci95'), 'brier')} |" if calibrated else ""))
    if not rows:
        return []
    # before and after a map the images are the same: one reason per set
    withheld = [f"{name}: {line}." for key, name in sets if (line := withheld_line((measured[key].get("calibration") or {}).get("ci95_withheld", {})))]
    bins = next((measured[key]["calibration"].get("bins") for key, _ in sets if measured[key].get("calibration")), None)
    head = "| set | ECE [95 % CI] | Brier [95 % CI] |" + (" ECE before calibration | Brier before calibration |" if calibrated else "")
    text = [f"Expected calibration error ({bins} equal-width bins) and Brier score of the probabilities; 95 % bootstrap intervals."]
    if calibrated:
        text.append(f"The output is calibrated ({record['method']} scaling fitted on the {_set_name(record.get('fitted_on'))}; its numbers "
                    "after calibration are doubly optimistic there). The ranking, the AUC and every decision are unchanged; the uncalibrated "
                    f"threshold {fmt(record.get('threshold_uncalibrated'))} became {fmt(meta.get('threshold'))}.")
    text.append(prior_sentence(meta))
    return ["## Calibration", "", " ".join(text), "", head, "|" + " --- |" * (5 if calibrated else 3), *rows, "",
            *withheld, *([""] if withheld else []), diagram, ""]


def prior_sentence(meta: dict[str, Any]) -> str:
    """Which PNEUMONIA prior the probabilities correspond to: with a calibration map, its set's; without one, the prior the
    loss aimed them at (:func:`cxr_tune.calibration.probability_prior`, the rule ``adapt --threshold prior-shift`` starts
    from: a class-weighted loss moves it off the training prevalence), and that the output is then a score, not a frequency.
    That prior is only the weighted loss's optimum: the network's fit, label smoothing and the epoch chosen move the outputs
    off it (``results/real/best``, balanced weights: threshold 0.913, and of its 17 external-set images scored 0.5 to 0.8, 3
    were PNEUMONIA). Counts, not derived decimals, so every decimal in the card stays a number of ``model.json``."""
    prior = probability_prior(meta)
    elsewhere = "; at a site with another prevalence the same probability means another frequency."
    if prior.value is None:
        return f"Which prevalence the probabilities correspond to is unknown: `model.json` records no {prior.counts_key}" + elsewhere
    normal, pneumonia = prior.counts
    if prior.fitted_on:
        return (f"Probabilities correspond to the PNEUMONIA prevalence of the {_set_name(prior.fitted_on)} the calibration map was fitted on "
                f"({pneumonia} of {normal + pneumonia} images)" + elsewhere)
    training = f"the training prevalence ({pneumonia} of {normal + pneumonia} training images PNEUMONIA)"
    score = (f" The output is a score, not a calibrated frequency: read it against the threshold {fmt(meta.get('threshold'))} and the "
             "reliability diagram below (`export --calibrate` fits a map that makes it one on the deciding set).")
    if len(set(prior.member_values)) > 1:
        weightings = ", ".join(sorted({str(w) for w in prior.member_weightings}))
        return (f"The members' losses weighted the classes differently (`class_weighting`: {weightings}), so the averaged probabilities were "
                f"aimed at no single PNEUMONIA prior; {training}" + elsewhere + score)
    if prior.class_weighting == "none":
        aim = f"The loss weighted no class, so training aimed the probabilities at {training}"
    elif prior.class_weighting == "balanced":
        aim = ("The loss weighted the classes as if equally common (`class_weighting: balanced`), so training aimed the probabilities at "
               f"equal class priors (half PNEUMONIA), not at {training}")
    else:
        aim = (f"The loss weighted a PNEUMONIA image {prior.class_weighting} times a NORMAL one (`class_weighting`), so training aimed the "
               f"probabilities at the training odds of PNEUMONIA times {prior.class_weighting}, not at {training}")
    return (aim + " (the prior `adapt --threshold prior-shift` starts from); that is the loss's optimum, not a measurement: the network's "
            "fit, label smoothing and the epoch chosen move its outputs off it" + elsewhere + score)


def _operating_points(meta: dict[str, Any], measured: dict[str, Any], sets: list[tuple[str, str]], marked: frozenset[str]) -> list[str]:
    points = meta.get("operating_points")
    if not isinstance(points, dict):
        return []
    names = sorted(points, key=lambda n: POINT_ORDER.index(n) if n in POINT_ORDER else len(POINT_ORDER))
    head = "| point | threshold | rule | " + " | ".join(f"{_label(key, name, marked)}: sensitivity / specificity" for key, name in sets) + " |"
    rows = [head, "|" + " --- |" * (3 + len(sets))]
    for point in names:
        cells = []
        for key, _ in sets:
            at = (measured[key].get("operating_points") or {}).get(point, {})
            ci = at.get("ci95", {})
            cells.append(f"{fmt(at.get('sensitivity'))}{interval(ci.get('sensitivity'))} / {fmt(at.get('specificity'))}{interval(ci.get('specificity'))}")
        rows.append(f"| `{point}` | {fmt(points[point].get('threshold'))} | {points[point].get('rule')} | " + " | ".join(cells) + " |")
    return ["## Operating points", "",
            "Thresholds chosen on the deciding set for other uses (`python -m cxr_tune.predict --operating-point NAME`); "
            "95 % Wilson score intervals (from the counts).", "", *rows, "", *_misses(meta, measured, sets, marked)]


def _misses(meta: dict[str, Any], measured: dict[str, Any], sets: list[tuple[str, str]], marked: frozenset[str]) -> list[str]:
    """What a NORMAL call at the shipped point misses, in words, from each set's counts at ``balanced`` and its worst-called
    pneumonia subgroup: a table of rates did not say that about 1 pneumonia in 6 of carved validation is called NORMAL.
    None for an adapted model (its threshold is the site's, and nothing here measured it)."""
    if meta.get("adaptation"):
        return []
    said = []
    for key, name in sets:
        at = (measured[key].get("operating_points") or {}).get("balanced") or {}
        missed, pneumonias = at.get("fn"), (at.get("fn") or 0) + (at.get("tp") or 0)
        if missed is None or not pneumonias:
            continue
        often = f", about 1 in {round(pneumonias / missed)}" if missed else ""
        text = f"{_label(key, name, marked)}: {missed} of {pneumonias} pneumonias called NORMAL (sensitivity {fmt(at.get('sensitivity'))}{often})"
        groups = [g for g in (measured[key].get("subgroups") or {}).values() if g.get("rate") == "sensitivity" and g.get("n")]
        worst = min(groups, key=lambda g: g["value"], default=None)
        if worst and worst["value"] < at.get("sensitivity", 0):
            text += (f", {worst['description']} more often: {worst['n'] - worst['correct']} of {worst['n']} "
                     f"({fmt(worst['value'])}{interval(worst.get('ci95'))})")
        said.append(text)
    if not said:
        return []
    safer = [f"`{point}`" for point in ("sens95", "sens98") if point in (meta.get("operating_points") or {})]
    return [f"What a NORMAL call at the shipped point (`balanced`) misses: {'; '.join(said)}."
            + (f" Where a missed pneumonia costs more than a false alarm, {' or '.join(safer)} call fewer of them NORMAL, at the "
               "specificity in the table." if safer else ""), ""]


def _adaptation(meta: dict[str, Any]) -> list[str]:
    record = meta.get("adaptation")
    if not record:
        return ["## Site adaptation", "", "None: the model is as the search trained it.", ""]
    return ["## Site adaptation", "",
            f"- {record.get('method')}, on {record.get('images')} unlabelled image(s) from {code_span(record.get('source'))} "
            f"(model {code_span(record.get('from_model'))}, {record.get('adapted_at')})"
            + (f"; {record['left_out_images']} image(s) unlike the training X-rays (colour, blank, too small, DICOM lateral or "
               "not a radiograph) were left out" if record.get("left_out_images") else "")
            + (f"; {record['skipped_files']} file(s) that could not be read as images were skipped" if record.get("skipped_files") else "") + ".",
            *_earlier_adaptations(record.get("earlier_adaptations")),
            f"- Threshold: {record.get('threshold')} (rule `{record.get('threshold_rule')}`; before adaptation {fmt(record.get('unadapted_threshold'))}).",
            *([f"- On the site's images it calls {record['called_pneumonia_share']:.1%} PNEUMONIA; the model it was adapted from, at its "
               f"threshold, called {record['called_pneumonia_share_before']:.1%} (no labels needed). AdaBN assumes the site's mix of "
               "NORMAL and PNEUMONIA is near the training data's; a large move between the two says it is not."]
              if isinstance(record.get("called_pneumonia_share_before"), float) and isinstance(record.get("called_pneumonia_share"), float) else []),
            "- The performance, subgroup, calibration and operating-point numbers above were measured **before** adaptation; the "
            "site's labels were never read, so nothing here measures the adapted model. Operating points other than `balanced` "
            "do not carry over and are dropped.", ""]


def _earlier_adaptations(earlier: Any) -> list[str]:
    """A line for a model adapted again: where it was adapted before, and that nothing of it is left."""
    if not isinstance(earlier, list) or not earlier:
        return []
    where = "; ".join(f"to {code_span(e.get('source'))} ({e.get('images')} image(s), rule `{e.get('threshold_rule')}`, {e.get('adapted_at')})"
                      for e in earlier if isinstance(e, dict))
    return [f"- Adapted before: {where}. AdaBN re-estimated every BatchNorm statistic from this site's images alone and the threshold "
            f"was chosen again, so nothing of those adaptations is left in the model; the unadapted model is "
            f"{code_span(earlier[0].get('from_model') if isinstance(earlier[0], dict) else None)}."]


def _limitations(meta: dict[str, Any], measured: dict[str, Any]) -> list[str]:
    size = meta.get("preprocessing", {}).get("image_size")
    external = measured.get("external")
    lines = ["## Limitations", ""]
    if not meta.get("data", {}).get("synthetic"):
        lines.append("- Pediatric films from one centre (if the data is Kermany's): adults, other hospitals, other machines and other "
                     "populations may differ in ways these numbers cannot show.")
    lines.append(f"- Images are shrunk to {size} x {size} pixels (aspect ratio not kept): fine detail is lost.")
    if external:
        adapted_to_it = _chose_from(meta, _folder_of(meta, measured, "external"))
        chose = ("**chose the model and its unadapted threshold** (the site's threshold came from the adaptation rule)" if meta.get("adaptation")
                 else "**chose the model and its thresholds**")
        lines.append("- The external set " + (f"({code_span(external['source'])}) " if external.get("source") else "")
                     + (f"{chose}: it is a selection set, its numbers are optimistic, and it is no "
                        "independent test." if external.get("selection_set") else
                        "chose nothing in the search, but the model was adapted to its images (without their labels): its numbers "
                        "above are selection-set numbers, and it is no independent test of the adapted model." if adapted_to_it else "chose nothing, but it is one sample of one site."))
    else:
        lines.append("- There is no external set: carved validation shares the training folder's population and saturates, so it "
                     "chose the model without seeing any shift to new patients or sites.")
    lines.append("- " + ("The model was adapted to the test split's images (without their labels): its numbers above are selection-set "
                         "numbers, and it is no independent test of the adapted model." if _chose_from(meta, _folder_of(meta, measured, "test")) else
                         "The test split is held out but comes from the same source as the training data: it says little about other sites."
                         if measured.get("test") else "There is no held-out test split: every number above comes from a set that was "
                         "trained on or chose something, or was merely compared."))
    lines += ["- Subgroups come from file names only (no age, sex or device is known).",
              "- Grad-CAM maps (`predict --explain`) show what raised the score, not that the reason is medical.", ""]
    return lines


def export_flags(meta: dict[str, Any], *, rerun: bool = False) -> str:
    """The flags that make ``export`` build this model again, into the folder it was written to: as recorded (``export_options``), or for
    an export from before that record, read from what it holds (a final fit's runs need no flag). ``rerun``: for the export of a
    rerun search (:func:`rerun`), whose trial ids are new and whose model must not replace this one: ``--trial`` names the
    rerun's trial to pick (``RERUN_TRIAL``) and ``--out`` a folder beside this one's, ``-repro`` added."""
    given = meta.get("export_options")
    if given is None:
        final = meta.get("final_fit") or {}
        members = len(meta.get("members", []))
        given = {"ensemble": members if members > 1 and not final.get("exported", bool(final)) else None,
                 "tta": meta.get("tta_views", 1), "calibrate": (meta.get("calibration") or {}).get("method", "none")}
    if rerun:
        given = {**given, "trial": RERUN_TRIAL if given.get("trial") else None,
                 "out": f"{str(given['out']).rstrip('/')}-repro" if given.get("out") else None}
    flags = [f"--trial {given['trial']}" if given.get("trial") else "", f"--ensemble {given['ensemble']}" if given.get("ensemble") else "",
             f"--val-data {given['val_data']}" if given.get("val_data") else "", f"--tta {given['tta']}" if given.get("tta", 1) > 1 else "",
             f"--calibrate {given['calibrate']}" if given.get("calibrate", "none") != "none" else "", "--final-fit" if given.get("final_fit") else "",
             f"--out {shlex.quote(given['out'])}" if given.get("out") else ""]  # where it was written: not the experiment's best/
    return "".join(f" {flag}" for flag in flags if flag)


#: what a rerun's export names for ``--trial``: its trial ids are drawn anew, so the trial is found by its hyperparameters
RERUN_TRIAL = "ID_WITH_THESE_HYPERPARAMETERS"


#: the README's determinism statement (*Exactness*), quoted where a rerun is offered; tests/test_modelcard.py checks the README still says it
EXACTNESS = ("on a CPU a run resumed from a checkpoint continues bit for bit as an uninterrupted one on the same machine with the same "
             "image cache and thread count")


def rerun(record: dict[str, Any], experiment: str | None) -> tuple[str | None, str | None, str, str]:
    """The command that runs a search (its record: ``experiment.json``, or ``model.json``'s ``search``) again into a new
    experiment beside ``experiment`` (``<name>-repro``; the saved command as typed is refused, its name exists), that new
    experiment's folder, the words that go beside the command (the venv, the folder its relative paths are relative to) and
    the sentence on what bit-for-bit equality needs (the README's :data:`EXACTNESS`, with the thread count the search ran)."""
    folder = storage.join(storage.parent(experiment), f"{storage.name(experiment)}-repro") if experiment else None
    command = rerun_command(record, storage.name(folder) if folder else None)
    where = "" if record.get("command_cwd") else (", in the folder the search ran in: its relative paths are relative to it, "
                                                  "which this record does not name")
    threads = (record.get("trial_resources") or {}).get("threads")
    ran = (f"this search ran {threads} torch thread(s) per trial (`trial_resources.threads` in `experiment.json`)" if threads
           else "its thread count is not recorded (an experiment from before the record)")
    return (command, folder, f"with the project's .venv active{where}" + (f"; a new experiment, {code_span(folder)}" if folder else ""),
            f"Bit for bit only on the same machine with the same image cache and thread count: {ran}; the README's *Exactness*: "
            f"\"{EXACTNESS}\" (on a GPU, with `--deterministic`).")


def _reproduce(meta: dict[str, Any]) -> list[str]:
    search = meta.get("search", {})
    command, folder, how, exactness = rerun(search, search.get("experiment"))
    experiment = (folder if command else None) or search.get("experiment")
    export = f"python -m cxr_tune.export {experiment or 'EXPERIMENT'}{export_flags(meta, rerun=bool(command))}"
    # a placeholder says what to put in its place: a record without its experiment's folder (results/real/best's) had a bare EXPERIMENT
    unnamed = ("EXPERIMENT: the new experiment folder step 1 writes, its `--name` under its `--storage`" if command else
               "EXPERIMENT: the folder of the search this model was exported from, which `model.json` does not record") if not experiment else ""
    trial = (f"`{RERUN_TRIAL}`: the rerun's trial with this model's hyperparameters, as its `trials.csv` lists them; trial ids are "
             "new each run") if command and RERUN_TRIAL in export else ""
    picked = f" ({'; '.join(filter(None, [unnamed, trial]))})" if unnamed or trial else ""
    lines = ["## How to reproduce", ""]
    if command:
        searched = ", ".join(filter(None, [f"cxr_tune {meta.get('cxr_tune_version')}", _commit(search.get("provenance"))]))
        lines.append(f"1. {code_span(command)} ({how}; {searched}; seeds are in `model.json`'s hyperparameters)")
    lines += [f"{2 if command else 1}. {code_span(export)}{picked}", f"{3 if command else 2}. `python -m cxr_tune.predict --model FOLDER IMAGES [--operating-point NAME] [--explain OUT]` "
              "(FOLDER: this model's folder)", ""]
    if record := meta.get("adaptation"):  # the model it came from, not this one ("--model FOLDER" read as this folder adapted the adapted model)
        given = shlex.join(["python", "-m", "cxr_tune.adapt", "--model", str(record.get("from_model") or "MODEL"), "--images", str(record.get("source") or "SITE"),
                            "--out", str(record.get("out") or "NEW"), "--threshold", str(record.get("threshold_rule"))])
        lines.insert(-1, f"{4 if command else 3}. {code_span(given)}" + (f" ({adapted})" if (adapted := _commit(record.get("provenance"))) else ""))
    if command:
        lines += [exactness, ""]
    if code := describe_code(meta.get("provenance")):  # none in a model.json from before the record
        lines += [f"Exported with {code}.", ""]
    return lines


def _commit(record: dict[str, Any] | None) -> str:
    """``commit `abc123` `` for a recorded code commit; "" without one (an older model.json, or code outside a git checkout)."""
    return f"commit `{record['commit']}`" if record and record.get("commit") else ""


def _label(key: str, name: str, marked: frozenset[str]) -> str:
    return selection_label(name, key in marked)


def _set_name(deciding: str | None) -> str:
    return {"external": "external validation set", "carved": "carved validation set", "validation": "carved validation set"}.get(str(deciding), str(deciding))


def _counts(counts: Any) -> str:
    return f"{counts[0]} / {counts[1]}" if isinstance(counts, (list, tuple)) and len(counts) == 2 else "n/a"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + "."


def final_fit_line(record: dict[str, Any]) -> str:
    """What became of the final fit, in one sentence (the console, the report and the model card say the same)."""
    runs = len(record.get("runs", []))
    if "exported" not in record:  # exported before the final fit was compared with the search's ensemble
        return f"final fit exported: the average of its {runs} runs' last epochs"
    where = "external set" if record.get("compared_on") == "external" else "carved validation set"
    ensemble = f"the search's own ensemble ({', '.join(record.get('search_members', []))})"
    lost = len(record.get("diverged", []))
    if lost and not runs:
        return f"final fit NOT exported: all its {lost} runs diverged (their scores turned non-finite); {ensemble} exported instead"
    left_out = f" ({lost} run(s) that diverged left out)" if lost else ""
    scored = f"its {runs} runs' average{left_out} scored AUC {fmt(record.get('auc'))} on the {where}"
    if not record["exported"]:
        return f"final fit NOT exported: {scored} against {fmt(record.get('search_auc'))} for {ensemble}, exported instead (selection-set numbers)"
    how = "exported by --final-fit" if record.get("forced") else "exported"
    than = "against" if record.get("forced") else "no lower than"
    return f"final fit {how}: {scored}, {than} {fmt(record.get('search_auc'))} for {ensemble} (selection-set numbers)"
