"""``report.md`` and its PNG plots: search progress, parameter importances, the sensitivity/
specificity Pareto front, carved validation vs the external set (what transfers), the
selected trial's ROC curve, confusion matrix and learning curves, and for the exported model
(``best/``) its calibration with a reliability diagram, its operating points on the ROC curve, its
subgroups and a Grad-CAM gallery of the deciding set's most confident mistakes; where the trials'
time went (:mod:`cxr_tune.search.timing`). Trials appear in the order
:mod:`cxr_tune.selection` ranks them, so no table disagrees with the selection.
"""

from __future__ import annotations

import math
import textwrap
import time
from pathlib import Path
from typing import Any

import matplotlib.ticker
import numpy as np
import pandas as pd

from cxr_tune import storage
from cxr_tune.calibration import plot_reliability, reliability_curves
from cxr_tune.data.imaging import decode_gray
from cxr_tune.experiment import Experiment
from cxr_tune.formatting import against, code_span, fmt, from_spreadsheet, interval_in, search_command
from cxr_tune.modelcard import CARD_FILE, calibration_section, final_fit_line, next_steps, operating_point_section, rerun, subgroup_section, threshold_words
from cxr_tune.modelfile import PREDICTIONS_FILES, load_members
from cxr_tune.plotting import legend_beside, save_figure, subplots
from cxr_tune.saliency import cam_grid, grad_cam, plot_gallery
from cxr_tune.search import transfer
from cxr_tune.search.finalfit import describe_changes
from cxr_tune.search.results import ERROR_FILE, pareto_front, selected_metrics
from cxr_tune.search.timing import time_section, time_split
from cxr_tune.selection import prefix_of, selection_label
from cxr_tune.set_metrics import INTERVAL_METHODS, withheld_line
from cxr_tune.train.checkpoints import has_predictions, load_predictions

TOP = 10
SET_NAMES = {"val": "carved validation", "ext": "external validation"}
#: each set's look in the learning curves, on both panels: its own marker AND line style, in colours of matplotlib's
#: "tableau-colorblind10", so that the sets stay apart in greyscale and to colour-blind eyes (carved and external
#: differed by colour alone, and train loss and external loss were both "-o")
SET_STYLES = {"train": {"color": "#006BA4", "linestyle": "-", "linewidth": 1.0, "marker": ""},
              "val": {"color": "#FF800E", "linestyle": "-", "marker": "o", "markersize": 4},
              "ext": {"color": "#595959", "linestyle": "-.", "marker": "^", "markersize": 5}}
#: a set's balanced accuracy beside its AUC: its marker hollow, its line dotted
SECOND_METRIC = {"linestyle": ":", "markerfacecolor": "white"}
#: the operating points' markers on the ROC curve, one each, edged in black: apart where colours are not, and overlapping
POINT_MARKERS = "os^Dv*Ph"


def write_report(experiment: Experiment, table: pd.DataFrame, exported: dict[str, Any] | None, *, unfinished: str = "") -> str:
    """Write ``report.md`` and ``plots/*.png`` (drawn locally, then written through storage); returns the report's path.

    ``table``: the trial table with the selection's ``rank`` and ``tied`` columns. ``unfinished``: for a search stopped
    before its end, what is left and the command that continues it (:func:`cxr_tune.search.finish.finish_experiment`).
    """
    options, info = experiment.options, experiment.info
    selected = table.sort_values("rank").iloc[0]
    prefix = prefix_of(experiment.deciding_set)
    _, histories = experiment.histories()
    checkpoint = experiment.checkpoint_for(selected)
    predictions = load_predictions(checkpoint, prefix) if has_predictions(checkpoint, prefix) else None  # never another set's, under this set's name
    best = _best_predictions(experiment, exported, prefix)  # the exported model's scores on the deciding set, read once
    with storage.scratch_folder("report") as scratch:  # a report killed while drawing leaves it; the next one removes it
        plots = Path(scratch)
        notes = {
            "progress": _plot_progress(plots / "progress.png", histories, objective_words(experiment), (selected["trial_id"], int(selected["best_epoch"]))),
            **plot_importances(plots / "importances.png", experiment),
            "pareto": _plot_pareto(plots / "pareto.png", table, selected, prefix),
            "transfer": transfer.plot_transfer(plots / "transfer.png", table, experiment.deciding_set) if transfer.has_external(table) else "No external set.",
            **_decision_plots(plots, exported, best, selected, predictions, prefix),
            "learning": _plot_learning(plots / "learning_curves.png", histories.get(selected["trial_id"], pd.DataFrame()), prefix,
                                       _epoch_mark(selected, exported)),
            **_clinical_plots(plots, experiment, exported, best),
        }
        for png in plots.glob("*.png"):
            storage.write_bytes_atomic(experiment.file("plots", png.name), png.read_bytes())
    report = experiment.file("report.md")
    timing = time_section(time_split(histories), experiment.stage_minutes(), sum("ended_at" not in run for run in experiment.compute_log()))
    info = {**info, "class_counts_test": experiment.class_counts("test")}  # recorded since 2026-12-07; splits.csv has it before
    storage.write_text_atomic(report, _markdown(info, options, table, selected, prefix, exported, notes, final_fit_section(experiment, prefix), timing,
                                                experiment.file("best"), unfinished))
    return report


def objective_words(experiment: Experiment) -> str:
    """What the search maximised, in words: its criterion (and sensitivity floor) on the set that decided, as the
    progress plot's axis and bench replay's table name it (they said "validation" and "balanced accuracy" whatever it was)."""
    options = experiment.options
    floor = f" with sensitivity >= {options.min_sensitivity:g}" if options.min_sensitivity else ""
    return f"{options.select.replace('_', ' ')}{floor} on {SET_NAMES[prefix_of(experiment.deciding_set)]}"


def final_fit_section(experiment: Experiment, prefix: str) -> list[str]:
    """The final-fit stage as its own step: each run's last epoch on every set, and its time ([] without one)."""
    from cxr_tune.train.checkpoints import load_state

    runs = experiment.final_fit_runs()
    if not runs:
        return []
    ends = {run.name: (path, lost) for run, path, lost in experiment.final_fit_ends()}
    rows = []
    for run in runs:
        path, lost = ends.get(run.name, (None, False))
        last = load_state(path)["history"][-1] if path and not lost else {}
        ended = "no" if path is None else f"diverged at epoch {load_state(path)['epoch'] + 1} (left out)" if lost else "yes"
        rows.append({"run": run.name, "configuration (search trial)": run.trial_id, "seed": run.seed, "epochs": run.epochs,
                     "completed": ended, **{f"{p}_{m}": last.get(f"{p}_{m}") for p in ("val", "ext") for m in ("auc", "balanced_accuracy")
                                                       if f"{p}_{m}" in last}})
    minutes = experiment.stage_minutes().get("final fit", 0.0)
    searches = [entry for entry in experiment.compute_log() if entry.get("final_fit_estimate_seconds") is not None]
    estimated = (f"; estimated at {searches[-1]['final_fit_estimate_seconds'] / 60:.1f} min when the search ended"
                 + (", ended by the job budget" if searches[-1].get("ended_by") == "job budget" else "")) if searches else ""
    deciding = "external" if prefix == "ext" else "carved validation"
    return [
        "## Final fit", "",
        f"The search's {len({r.trial_id for r in runs})} best configuration(s) at the selected image size, trained again with "
        f"{len(runs) // max(1, len({r.trial_id for r in runs}))} new seed(s) each for {runs[0].epochs} epochs"
        f"{describe_changes(experiment.space().settings.final_fit_changes)} ({minutes:.1f} min wall{estimated}). "
        f"Their average takes each run's **last** epoch: no epoch is picked on the {deciding} set, only the threshold is; it is exported "
        f"only when its AUC on the {deciding} set is no lower than the search's own ensemble's (below). "
        f"Each run alone at its last epoch (`val_`: carved validation, `ext_`: the external set; balanced accuracy at that run's own "
        f"threshold{', a selection-set number' if prefix == 'ext' else ''}):", "",
        _table(pd.DataFrame(rows)), "",
    ]


def _markdown(info: dict, options: Any, table: pd.DataFrame, selected: pd.Series, prefix: str, exported: dict | None, notes: dict[str, str | None],
              final_fit: list[str], timing: list[str], best: str, unfinished: str = "") -> str:
    """report.md's text; ``best``: where the exported model is (the experiment's ``best/``, as this report's folder has it);
    ``unfinished``: see :func:`write_report`."""
    criterion = options.select.replace("_", " ")
    deciding = SET_NAMES[prefix]
    lines = [f"# Search report: {options.name}", ""]
    if unfinished:
        lines += [f"> **Unfinished search.** {unfinished}", ""]
    if info["synthetic"]:
        lines += ["> **SYNTHETIC DATA.** Every number below comes from procedurally drawn images, not patients.", ""]
    if prefix == "ext":
        lines += ["> **External validation numbers are selection-set numbers.** The external set chose the epochs, the trial, the ensemble "
                  "and the threshold, so its numbers are optimistic; the honest score is on images no choice saw.", ""]
    else:
        lines += ["> **Carved validation numbers are selection-set numbers.** With no external set deciding, carved validation chose the "
                  "epochs, the trial, the ensemble and the threshold, so its numbers are optimistic; the honest score is on images no choice saw.", ""]
    counts = ", ".join(f"{v} {k}" for k, v in table["stop_reason"].value_counts().items())
    external = info.get("external")
    ties = _tie_words(table, deciding)
    lines += [
        f"- Command: {code_span(search_command(info))}",
        *_rerun_line(info),
        f"- Data: {info['data_description']}",
        f"- Distinct images: training {_counts(info['class_counts_train'])}; carved validation {_counts(info['class_counts_val'])} (carved "
        f"from the training folder by patient group: {options.data.val_fraction:.0%}, split seed {options.data.split_seed})"
        + (f"; held-out test {_counts(info.get('class_counts_test'))}" if info.get("has_test") else ""),
        f"- External validation: {code_span(external)} (distinct images: {_counts(info.get('class_counts_external'))})" if external
        else f"- External validation: none{(' (' + info['external_note'] + ')') if info.get('external_note') else ''}",
        f"- Space: {code_span(info['space_path'])} (copied to `space.yaml`)",
        f"- Selection on **{deciding}**: each epoch's {criterion} at a threshold chosen on the same set"
        + (f" (sensitivity >= {options.min_sensitivity:g})" if options.min_sensitivity else "")
        + "; trials whose 95 % bootstrap interval overlaps the best trial's are tied, and the tied trial with the highest AUC on "
        + f"{deciding} wins (then lowest log loss). The test split never selects anything."
        + (f" Here {ties}." if ties else ""),
        f"- Trials: {len(table)} ({counts})",
        f"- Written {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"## Selected trial `{selected['trial_id']}`",
        "",
        f"Best epoch {int(selected['best_epoch'])} of {int(selected['epochs'])}; {others_tied(table)}.",
        "",
        _table(_set_rows(selected, prefix, options.select)),
        "",
        "Parameters: " + ", ".join(f"`{k}={_fmt(selected[k])}`" for k in _param_columns(table) if not _missing(selected.get(k))),
        "",
    ]
    lines += final_fit
    if exported:
        members = [m["trial_id"] for m in exported.get("members", [])]
        final = exported.get("final_fit") or {}
        what = (f"the average of the final-fit runs {', '.join(f'`{m}`' for m in members)}" if final.get("exported", bool(final))
                else f"the average of trials {', '.join(f'`{m}`' for m in members)}" if len(members) > 1
                else "this trial" if members == [selected["trial_id"]] else f"trial `{members[0]}`")
        if exported.get("tta_views", 1) > 1:
            what += f", averaged over {exported['tta_views']} test-time views"
        lines += [
            f"Exported to `best/`: {what} (ONNX, loaded back and checked against PyTorch and the stored scores)"
            + (f"; {final_fit_line(final)}" if final else "") + ". "
            f"Decision threshold {fmt(exported['threshold'])}: {threshold_words(exported)}. At it:",
            "",
            _table(_export_rows(exported)),
            "",
        ]
        lines += _test_section(exported)
        lines += ["## Next steps", "",
                  f"- The model card, {code_span(storage.join(best, CARD_FILE))}: intended use, data, performance per set and subgroup, "
                  "calibration, operating points and limitations.", *next_steps(best), ""]
    lines += _clinical_sections(exported, notes)
    if transfer.has_external(table):
        lines += ["## What transfers: carved validation vs the external set", ""]
        lines += transfer.markdown(table, "external" if prefix == "ext" else "carved", "plots/transfer.png", notes["transfer"])
    lines += timing
    lines += ["## Plots", ""]
    captions = {  # key: (file, caption, alt text: one sentence of what the image shows, for a reader who cannot see it)
        "progress": ("progress.png", "Search progress: every epoch's objective over time, the best so far, and the selected trial's best "
                     "epoch starred (among the trials tied with the best, the one with the highest AUC: not always the highest objective).",
                     "Scatter of every epoch's objective against time since the first result, the best so far as a line and the "
                     "selected trial's best epoch starred."),
        "importances": ("importances.png", "Parameter importances (Optuna's PED-ANOVA over the trials that ran every epoch; those ASHA stopped are not in it).",
                        "Horizontal bars of each sampled parameter's PED-ANOVA importance, the most important at the top."),
        "pareto": ("pareto.png", f"Sensitivity vs specificity on {deciding} of every trial's best epoch; the Pareto front and the selected trial."
                   + (f" {ties[0].upper()}{ties[1:]}: the selected trial has the highest AUC of them, so it need not lie on the front." if ties else ""),
                   f"Scatter of sensitivity against specificity on {deciding}, one point per trial's best epoch, with the Pareto front "
                   "and the selected trial marked."),
        "roc": ("roc.png", notes["roc_caption"],
                "ROC curve, sensitivity against 1 - specificity over every threshold, with the decision threshold's point marked."),
        "confusion": ("confusion.png", notes["confusion_caption"],
                      "Confusion matrix of image counts, true NORMAL or PNEUMONIA against predicted, at the decision threshold."),
        "learning": ("learning_curves.png", "Selected trial: learning curves.",
                     "Two panels against epoch for the selected trial: loss on each set, and AUC and balanced accuracy on each "
                     "validation set, the selected epoch a dotted line."),
    }
    for key, (file, caption, alt) in captions.items():
        lines += [f"**{caption}**", ""]
        lines += [f"_{notes[key]}_" if notes[key] else f"![{alt}](plots/{file})", ""]
        if notes.get(f"{key}_caveat"):
            lines += [f"_{notes[key + '_caveat']}_", ""]
    # A failed trial is never ranked, even after epochs (selection.ranked_trials): it has its own section below.
    ranked = table[table["status"].ne("ERROR")].sort_values("rank", na_position="last").head(TOP)
    lines += [f"## Top {len(ranked)} trials, in selection order", ""]
    columns = ["rank", "tied", "trial_id", "stop_reason", "epochs", "best_epoch", "objective", "objective_low", "objective_high",
               f"{prefix}_auc", f"{prefix}_sensitivity", f"{prefix}_specificity", f"{prefix}_threshold", f"{prefix}_loss"]
    if prefix == "ext":
        columns += ["val_balanced_accuracy", "val_auc"]
    lines += [_trial_table(ranked[[c for c in columns if c in ranked]], ranked[_param_columns(table)]), ""]
    errors = table[table["status"] == "ERROR"]
    if not errors.empty:
        where = errors["trial_id"].map(lambda trial_id: code_span(f"{trial_id}/{ERROR_FILE}", in_table=True))  # beside this report: every attempt's traceback (Ray's file)
        lines += ["## Failed trials", "", _table(errors[["trial_id", "error"]].assign(traceback=where)), ""]
    lines += ["All trials: `trials.csv` / `trials.parquet`. Optuna study: `study.db` (open with `optuna-dashboard`).", ""]
    return "\n".join(lines)


def _tied(table: pd.DataFrame) -> int:
    """How many trials the selection (:func:`cxr_tune.selection.ranked_trials`, the table's ``tied`` column) tied with the best."""
    return int(table["tied"].fillna(False).astype(bool).sum())


def _rerun_line(info: dict[str, Any]) -> list[str]:
    """The command that runs this search again into a new experiment, and what an equal rerun needs (:func:`cxr_tune.modelcard.rerun`,
    as the model card's How to reproduce says it); none where no command was recorded."""
    options = info.get("options") or {}
    experiment = storage.join(options["storage"], options["name"]) if options.get("storage") and options.get("name") else None
    command, _, how, exactness = rerun(info, experiment)
    return [f"- To rerun it ({how}): {code_span(command)}. {exactness}"] if command else []


def others_tied(table: pd.DataFrame) -> str:
    """"no other trial tied with it", "1 other trial ...", "3 other trials ...": the selected trial's ties, for the report and
    the console alike (both said "0 other trial(s) tied with it", and the console a tie-break where nothing tied)."""
    others = _tied(table) - 1
    return "no other trial tied with it" if others < 1 else f"{others} other trial{'s' if others > 1 else ''} tied with it"


def _tie_words(table: pd.DataFrame, deciding: str) -> str:
    """How many trials were tied with the best and that AUC on ``deciding`` ranked them, from the selection's own ``tied``
    and ``rank`` columns ("" when no other trial was tied): a star off the Pareto front is why."""
    tied = _tied(table)
    if tied < 2:
        return ""
    return (f"{tied - 1} of the {int(table['rank'].notna().sum()) - 1} other trials ranked tied with the best (their 95 % intervals "
            f"overlap its own), and the tied ones were ranked by AUC on {deciding}")


def _test_section(exported: dict[str, Any]) -> list[str]:
    """The held-out test split at the stored threshold, its intervals named as the card and predict name them
    (it said "bootstrap" of Wilson intervals); nothing without a test split."""
    if "test" not in exported:
        return []
    test, ci = exported["test"], exported["test"]["ci95"]
    withheld = withheld_line(test.get("ci95_withheld", {}))  # a small test split's AUC interval, say: null in model.json
    return [f"Held-out test split, scored once at the stored threshold ({INTERVAL_METHODS}):", "",
            _table(pd.DataFrame([{"n": test.get("n"), **{k: fmt(test.get(k)) + interval_in(ci, k)
                                                          for k in ("auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy")}}])), "",
            *([f"{withheld}.", ""] if withheld else [])]


def _set_rows(selected: pd.Series, deciding: str, criterion: str) -> pd.DataFrame:
    """The selected trial's best epoch on each set, the set that chose (``deciding``'s prefix) labelled a selection set;
    with the ``criterion`` that chose it (:func:`selected_metrics`)."""
    rows = []
    for prefix, name in SET_NAMES.items():
        if pd.notna(selected.get(f"{prefix}_auc")):
            rows.append({"set": selection_label(name, prefix == deciding), **{m: selected.get(f"{prefix}_{m}") for m in (*selected_metrics(criterion), "loss")}})
    return pd.DataFrame(rows)


def _export_rows(exported: dict[str, Any]) -> pd.DataFrame:
    rows = [{"set": selection_label("carved validation", bool(exported["validation"].get("selection_set"))), **exported["validation"]}]
    if "external" in exported:
        rows.append({"set": selection_label("external validation", bool(exported["external"]["selection_set"])), **exported["external"]})
    keys = ["set", "n", "auc", "sensitivity", "specificity", "balanced_accuracy", "accuracy"]
    return pd.DataFrame([{k: (fmt(r.get(k)) if k not in ("set", "n") else r.get(k)) for k in keys} for r in rows])


def _plot_progress(path: Path, histories: dict[str, pd.DataFrame], objective: str, selected: tuple[str, int] | None = None) -> str | None:
    """Every epoch's ``objective`` (:func:`objective_words`) against time since the first, the best so far, and ``selected``
    (trial id, best epoch) starred: the tie-break by AUC often selects another trial than the best so far ends at. The
    objective is measured on the set that selects, so its axis says "(selection set)"."""
    frames = [h.assign(trial=t) for t, h in histories.items() if not h.empty and "objective" in h and "timestamp" in h]
    if not frames:
        return "No results yet."
    results = pd.concat(frames).dropna(subset=["objective"]).sort_values("timestamp")
    seconds = results["timestamp"] - results["timestamp"].min()
    unit, per = ("seconds", 1) if seconds.max() < 120 else ("minutes", 60)  # a short search read 0.0000 to 0.0175 minutes
    elapsed = seconds / per
    fig, ax = subplots(figsize=(7, 4))
    ax.scatter(elapsed, results["objective"], s=12, alpha=0.5, label="an epoch of a trial")
    ax.step(elapsed, results["objective"].cummax(), where="post", color="C3", label="best so far")
    if selected is not None and "epoch" in results:  # an empty star (no such epoch recorded) is left out of the legend
        trial, epoch = selected
        at = ((results["trial"] == trial) & (results["epoch"] == epoch)).to_numpy()
        ax.scatter(elapsed.to_numpy()[at], results["objective"].to_numpy()[at], s=160, marker="*", color="C1", edgecolors="black",
                   linewidths=0.5, zorder=5, label=f"selected: trial {trial}, best epoch {epoch}")
    ax.set(xlabel=f"{unit} since the first result", ylabel=textwrap.fill(selection_label(objective), 32), title="Search progress")  # fits a 4-inch axis
    legend_beside(ax)
    save_figure(fig, path)
    return None


#: Optuna's PED-ANOVA contrasts the best ``IMPORTANCE_TOP_SHARE`` of the completed trials with the rest (its default
#: ``target_quantile``); its docstring asks for at least ``IMPORTANCE_MIN_TOP`` trials in that top share, so the chart
#: needs ``IMPORTANCE_MIN_TRIALS`` completed trials (41), counted as Optuna counts the top share (``ceil(share * n)``)
IMPORTANCE_TOP_SHARE, IMPORTANCE_MIN_TOP = 0.1, 5
IMPORTANCE_MIN_TRIALS = next(n for n in range(1, 10_000) if math.ceil(IMPORTANCE_TOP_SHARE * n) >= IMPORTANCE_MIN_TOP)


def plot_importances(path: Path, experiment: Experiment) -> dict[str, str | None]:
    """``{"importances": note or None, "importances_caveat": ...}``: which trials the estimate is from, and
    Optuna's own doubts about it (too few trials for some parameter values), go into the report, not onto the console.

    Why the count: Optuna's PED-ANOVA reads COMPLETE trials only, and the searcher tells Optuna every trial
    that ended early (ASHA, or the search's end) as PRUNED, so the chart is over the trials that ran every
    epoch: often a handful, and already picked by ASHA. Too few for PED-ANOVA's top share: no chart, one sentence.
    """
    import warnings

    import optuna
    from optuna.trial import TrialState

    db = experiment.study_path
    if not Path(db).exists():
        return {"importances": "No Optuna study file."}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            study = experiment.study()
            complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
            stopped = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
            basis = (f"the {complete} trial(s) that ran every epoch (Optuna reads only completed trials; "
                     f"the {stopped} that ASHA or the search's end stopped early are not in it)")
            if complete < IMPORTANCE_MIN_TRIALS:
                return {"importances": f"Parameter importances are not shown: they would come from {basis}, too few for Optuna's "
                                       f"PED-ANOVA, which contrasts the best {IMPORTANCE_TOP_SHARE:.0%} of them with the rest and "
                                       f"asks for at least {IMPORTANCE_MIN_TOP} in that top share, so the chart needs at least "
                                       f"{IMPORTANCE_MIN_TRIALS} completed trials."}
            evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=IMPORTANCE_TOP_SHARE)
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (RuntimeError, ValueError) as exc:
            return {"importances": f"Parameter importances are not available: {exc}"}
    doubts = sorted({str(w.message) for w in caught if issubclass(w.category, UserWarning)
                     and not issubclass(w.category, optuna.exceptions.ExperimentalWarning)})
    if not importances:
        return {"importances": "Parameter importances are not available: the completed trials sampled no parameter."}
    if len(set(importances.values())) == 1:  # Optuna's way of saying it could not tell them apart: no chart of equal bars
        return {"importances": "Parameter importances are not available: " + (" ".join(doubts) or "Optuna rates every parameter the same.")}
    names, values = list(importances)[::-1], list(importances.values())[::-1]
    fig, ax = subplots(figsize=(7, max(2.5, 0.4 * len(names))))
    ax.barh(names, values)
    ax.set(xlabel="importance (PED-ANOVA)", title=f"Parameter importances, from the {complete} trials that ran every epoch")
    save_figure(fig, path)
    return {"importances": None, "importances_caveat": f"From {basis}." + (" Optuna: " + " ".join(doubts) if doubts else "")}


def _plot_pareto(path: Path, table: pd.DataFrame, selected: pd.Series, prefix: str) -> str | None:
    done = table.dropna(subset=[f"{prefix}_sensitivity", f"{prefix}_specificity"])
    if done.empty:
        return "No trial has a scored epoch yet."
    sens, spec = done[f"{prefix}_sensitivity"].to_numpy(), done[f"{prefix}_specificity"].to_numpy()
    front = pareto_front(sens, spec)
    order = np.argsort(spec[front])
    fig, ax = subplots(figsize=(5.5, 5))
    ax.scatter(spec, sens, s=20, alpha=0.6, label="trials (best epoch)")
    ax.plot(spec[front][order], sens[front][order], "-o", color="C2", ms=5, label="Pareto front")
    ax.scatter([selected[f"{prefix}_specificity"]], [selected[f"{prefix}_sensitivity"]], s=120, marker="*", color="C3", label="selected", zorder=5)
    name = selection_label(SET_NAMES[prefix])  # the set that selected: every trial's best epoch and threshold were chosen on it
    ax.set(xlabel=f"specificity on {name}", ylabel=f"sensitivity on {name}", title="Sensitivity vs specificity")
    legend_beside(ax)
    save_figure(fig, path)
    return None


#: both ROC plots' axes, in a clinician's words (scikit-learn's say "False Positive Rate (Positive label: 1)")
ROC_AXES = {"xlabel": "1 - specificity (false positive rate)", "ylabel": "sensitivity (true positive rate)"}


def _draw_roc(ax: Any, labels: Any, scores: Any, name: str) -> None:
    """A ROC curve on ``ax`` in a clinician's words, its AUC to four decimals as the report's tables give it
    (scikit-learn's label rounds to two: a 0.9956 AUC read "AUC = 1.00")."""
    from sklearn.metrics import RocCurveDisplay

    display = RocCurveDisplay.from_predictions(labels, scores, ax=ax, name=name)
    display.line_.set_label(f"{name} (AUC {fmt(display.roc_auc)})")
    ax.set(**ROC_AXES)


def _best_predictions(experiment: Experiment, exported: dict[str, Any] | None, prefix: str) -> pd.DataFrame | None:
    """The exported model's scores on the set ``prefix`` names (``best/``'s predictions CSV: path, label, probability,
    prediction), or None without an export or for one from before the CSVs."""
    if not exported:
        return None
    path = experiment.file("best", PREDICTIONS_FILES[prefix])
    return from_spreadsheet(storage.read_csv(path, dtype={"path": str})) if storage.exists(path) else None


def _decision_plots(plots: Path, exported: dict[str, Any] | None, best: pd.DataFrame | None, selected: pd.Series,
                    trial: pd.DataFrame | None, prefix: str) -> dict[str, str | None]:
    """``roc.png`` and ``confusion.png`` on the deciding set, with their captions (``roc_caption``, ``confusion_caption``):
    the exported model (``best/``, what predict runs) at its stored threshold, wherever its scores on the set are at hand.
    A final fit or an ensemble has its own threshold, and these plots showed the search trial's (0.775 beside the model's
    0.9128) as "the chosen threshold". Else the selected search trial at its own, said so in the plots and captions."""
    name = selection_label(SET_NAMES[prefix])  # the deciding set chose the threshold shown
    if best is not None:
        scores, threshold = best.rename(columns={"probability": "score"}), float(exported["threshold"])
        who, whose, at = "Exported model (best/)", "Exported model (`best/`, what predict runs)", f"its decision threshold {fmt(threshold)}"
    else:
        scores, threshold = trial, float(selected[f"{prefix}_threshold"])
        who, whose, at = f"Search trial {selected['trial_id']}", f"Selected search trial `{selected['trial_id']}`", f"its own threshold {fmt(threshold)}"
        if exported:
            who += " (not the exported model)"
            at += f" (not the exported model's {fmt(exported['threshold'])}: `best/` holds no scores on {SET_NAMES[prefix]})"
    captions = {"roc_caption": f"{whose}: ROC curve on {name} and {at}.", "confusion_caption": f"{whose}: confusion matrix on {name} at {at}."}
    if scores is None:
        missing = f"The selected trial's checkpoint holds no scores on {name}."
        return {"roc": missing, "confusion": missing, **captions}
    return {"roc": _plot_roc(plots / "roc.png", scores, threshold, name, who),
            "confusion": _plot_confusion(plots / "confusion.png", scores, threshold, name, who), **captions}


def _plot_roc(path: Path, predictions: pd.DataFrame, threshold: float, name: str, who: str = "Selected trial") -> str | None:
    """``who``'s ROC curve on the set ``name``, with the point its ``threshold`` gives (to four decimals, as the tables)."""
    labels, scores = predictions["label"].to_numpy(), predictions["score"].to_numpy()
    if len(np.unique(labels)) < 2:
        return f"The {name} set holds one class only; no ROC curve."
    fig, ax = subplots(figsize=(5.5, 5))
    _draw_roc(ax, labels, scores, name)
    predicted = scores >= threshold
    sens, spec = predicted[labels == 1].mean(), 1 - predicted[labels == 0].mean()
    ax.scatter([1 - spec], [sens], s=80, color="C3", zorder=5, label=f"threshold {fmt(threshold)}")
    legend_beside(ax)
    ax.set(title=f"{who}\nROC on {name}")
    save_figure(fig, path)
    return None


def _plot_confusion(path: Path, predictions: pd.DataFrame, threshold: float, name: str, who: str = "Selected trial") -> str | None:
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(
        predictions["label"], (predictions["score"] >= threshold).astype(int), labels=[0, 1],
        display_labels=["NORMAL", "PNEUMONIA"], ax=ax, colorbar=False,
    )
    ax.set(title=f"{who}\n{name} at threshold {fmt(threshold)}")
    save_figure(fig, path)
    return None


def _plot_learning(path: Path, history: pd.DataFrame, deciding: str, mark: tuple[int, str] | None = None) -> str | None:
    """The selected trial's losses and metrics per epoch, each set in its :data:`SET_STYLES` on both panels (its balanced
    accuracy hollow and dotted beside its AUC: :data:`SECOND_METRIC`); ``deciding``: the prefix of the set that chose, labelled so; ``mark``: (epoch, label) of
    the epoch selected (:func:`_epoch_mark`), a dotted vertical line on both panels."""
    if history.empty or "epoch" not in history:
        return "No per-epoch history for the selected trial."
    fig, (left, right) = subplots(1, 2, figsize=(9, 4))  # widened by the two legends beside the panels
    left.plot(history["epoch"], history["train_loss"], **SET_STYLES["train"], label="train loss (weighted, augmented)")
    for prefix, name in ((p, selection_label(n, p == deciding)) for p, n in SET_NAMES.items()):
        if f"{prefix}_loss" in history and history[f"{prefix}_loss"].notna().any():
            left.plot(history["epoch"], history[f"{prefix}_loss"], **SET_STYLES[prefix], label=f"{name} log loss")
            right.plot(history["epoch"], history[f"{prefix}_auc"], **SET_STYLES[prefix], label=f"{name} AUC")
            right.plot(history["epoch"], history[f"{prefix}_balanced_accuracy"], **(SET_STYLES[prefix] | SECOND_METRIC),
                       label=f"{name} balanced accuracy")
    for ax in (left, right):
        if mark is not None:
            ax.axvline(mark[0], color="grey", linestyle=":", label=mark[1])
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))  # whole epochs, even when there is one
    left.set(xlabel="epoch", ylabel="loss")
    left.set_title("Loss", fontsize=10)
    legend_beside(left, fontsize=8)
    right.set(xlabel="epoch", ylabel="AUC; balanced accuracy")
    right.set_title("AUC, and balanced accuracy at\na threshold chosen on each set", fontsize=10)  # AUC needs no threshold
    legend_beside(right, fontsize=8)
    save_figure(fig, path)
    return None


def _epoch_mark(selected: pd.Series, exported: dict[str, Any] | None) -> tuple[int, str]:
    """The selected trial's best epoch and what became of it, for the learning curves: exported alone, one member of the
    exported average, or only selected (the export is a final fit, another trial, or none)."""
    epoch = int(selected["best_epoch"])
    members = [(m.get("trial_id"), m.get("epoch")) for m in (exported or {}).get("members", [])]  # a final fit's runs are named <trial>-seed<n>
    inside = (selected["trial_id"], epoch) in members
    what = ("selected, exported" if inside and len(members) == 1 else "selected, one of the exported average's members" if inside
            else "selected")
    return epoch, f"best epoch {epoch} ({what})"


# --- what a clinician checks: calibration, operating points, subgroups, saliency (from best/) ------


def _clinical_plots(plots: Path, experiment: Experiment, exported: dict[str, Any] | None, predictions: pd.DataFrame | None) -> dict[str, str | None]:
    """The reliability diagram, the operating points on the ROC curve and the Grad-CAM gallery of
    the exported model (``best/``), as notes for :func:`_clinical_sections`; nothing for an export
    from before these were measured. ``predictions``: its scores on the deciding set (:func:`_best_predictions`)."""
    if not exported or "calibration" not in exported.get("validation", {}):
        return {}
    deciding = "external" if exported.get("deciding_set") == "external" else "validation"
    plot_reliability(plots / "reliability.png", reliability_curves(exported), "Exported model: reliability")
    return {
        "reliability": None,
        "operating_points": _plot_operating_points(plots / "operating_points.png", exported, predictions, deciding),
        "saliency": _plot_saliency(plots / "saliency.png", experiment, exported, predictions),
    }


def _clinical_sections(exported: dict[str, Any] | None, notes: dict[str, str | None]) -> list[str]:
    """Calibration, operating points, subgroups and the saliency gallery of the exported model,
    rendered as the model card renders them (:mod:`cxr_tune.modelcard`), with the plots."""
    if "reliability" not in notes or not exported:
        return []
    lines = calibration_section(exported, "![Reliability diagram: the observed PNEUMONIA share against the mean predicted probability in "
                                            "each bin, one curve per set, beside the diagonal of perfect calibration.](plots/reliability.png)")
    lines += operating_point_section(exported)
    lines += [f"_{notes['operating_points']}_" if notes["operating_points"] else
              "![ROC curve of the exported model on the deciding set, each operating point marked with its own symbol and named with "
              "its threshold in the legend.](plots/operating_points.png)", ""]
    lines += subgroup_section(exported)
    lines += ["## Where the model looks (Grad-CAM)", "",
              "The deciding set's most confident false positives and false negatives, and a few of its most confident true positives, "
              "with Grad-CAM maps of the exported networks (`best/weights.safetensors`). A map shows what raised the score, not that the "
              "reason is medical. `python -m cxr_tune.predict --explain OUT_DIR` draws them for any image.", ""]
    lines += [f"_{notes['saliency']}_" if notes["saliency"] else
              "![Gallery of the deciding set's most confident false positives, false negatives and true positives, one row each, "
              "every X-ray with its Grad-CAM map over it and its P(PNEUMONIA).](plots/saliency.png)", ""]
    return lines


def _plot_operating_points(path: Path, exported: dict[str, Any], predictions: pd.DataFrame | None, deciding: str) -> str | None:
    points = exported.get("operating_points") or {}
    rates = exported[deciding].get("operating_points") or {}
    if predictions is None or predictions["label"].nunique() < 2 or not points:
        return "No ROC curve: the deciding set's predictions are missing or hold one class."
    name = selection_label(SET_NAMES["ext" if deciding == "external" else "val"])
    fig, ax = subplots(figsize=(5.5, 5))
    _draw_roc(ax, predictions["label"], predictions["probability"], f"exported model, {name}")
    at: dict[tuple[float, float], list[str]] = {}  # points at the same place are one marker and one entry (else six entries, three markers)
    for point in (p for p in points if p in rates):
        at.setdefault((1 - rates[point]["specificity"], rates[point]["sensitivity"]), []).append(point)
    for index, ((x, y), names) in enumerate(at.items()):
        cuts = {f"{points[name]['threshold']:.4f}" for name in names}  # as the operating points' table gives them (0.0005 read 0.000)
        label = (f"{', '.join(names)} (threshold {cuts.pop()})" if len(cuts) == 1
                 else ", ".join(f"{name} (threshold {points[name]['threshold']:.4f})" for name in names))
        ax.scatter([x], [y], s=60, color=f"C{index + 1}", marker=POINT_MARKERS[index % len(POINT_MARKERS)], edgecolors="black",
                   linewidths=0.8, zorder=5, label=label)
    legend_beside(ax, fontsize=7)
    ax.set(title="Operating points on the ROC curve")
    save_figure(fig, path)
    return None


def _plot_saliency(path: Path, experiment: Experiment, exported: dict[str, Any], predictions: pd.DataFrame | None, per_row: int = 4) -> str | None:
    """Most confident false positives, false negatives and true positives of the deciding set, with their maps."""
    if predictions is None or predictions.empty:
        return "No Grad-CAM gallery: the deciding set's predictions are missing."
    try:
        members = load_members(experiment.file("best"), exported)
    except FileNotFoundError:
        return "No Grad-CAM gallery: the export has no weights.safetensors."
    called, label = predictions["prediction"] == 1, predictions["label"] == 1
    threshold = float(exported["threshold"])  # the report states it to four decimals: no P in the gallery may read as equal to it
    rows = {
        "false positives (most confident)": predictions[called & ~label].sort_values("probability", ascending=False).head(per_row),
        "false negatives (most confident)": predictions[~called & label].sort_values("probability").head(per_row),
        "true positives (most confident)": predictions[called & label].sort_values("probability", ascending=False).head(per_row),
    }
    picked = pd.concat(rows.values())
    size = members.image_size
    images = np.stack([decode_gray(p, size) for p in picked["path"]]) if len(picked) else np.zeros((0, size, size), np.uint8)
    maps = grad_cam(members, images)
    gallery, start = {}, 0
    for title, frame in rows.items():
        gallery[title] = [(images[start + i], maps[start + i], f"{Path(str(row.path)).name}\nP(PNEUMONIA) {against(row.probability, threshold, 4)[0]}")
                          for i, row in enumerate(frame.itertuples())]
        start += len(frame)
    if not any(gallery.values()):
        return "No Grad-CAM gallery: no false positive, false negative or true positive on the deciding set."
    plot_gallery(path, gallery, grid=cam_grid(members))  # how coarse the maps are: 4x4 cells for results/real/best
    return None


def _param_columns(table: pd.DataFrame) -> list[str]:
    """The sampled parameters: the trial table places them between its id columns and its metrics."""
    from cxr_tune.search.results import param_columns

    return param_columns(table)


def _counts(counts: Any) -> str:
    """``[NORMAL, PNEUMONIA]`` counts for people."""
    return f"{counts[0]:,} NORMAL, {counts[1]:,} PNEUMONIA" if counts is not None and len(counts) == 2 else "n/a"


def _table(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, floatfmt=".4f")


def _trial_table(metrics: pd.DataFrame, params: pd.DataFrame) -> str:
    """Metrics to four decimals; each sampled parameter as it was drawn (a whole number as one, blank
    where the trial had none, e.g. a third block's filters in a two-block net)."""
    counts = [c for c in ("rank", "epochs", "best_epoch") if c in metrics]  # whole numbers, even in a column a failed trial's blank made float
    cells = pd.concat([metrics.drop(columns=counts).map(lambda v: f"{v:.4f}" if isinstance(v, float) and not math.isnan(v) else "" if _missing(v) else str(v)),
                       metrics[counts].map(lambda v: "" if _missing(v) else _fmt(v)),
                       params.map(lambda v: "" if _missing(v) else _fmt(v))], axis=1)[[*metrics.columns, *params.columns]]
    return cells.to_markdown(index=False, disable_numparse=True)


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))
