"""Compare TPE + ASHA with random search without early stopping, on the same space, trials and seed.

Both searches run through the real search code on the data's training split; only the sampler and
the scheduler differ. They optimize the search's own objective: balanced accuracy on the external
validation set when the data has one (its val/ folder; a selection set), else on validation
carved from train. Compute is counted in trial-epochs; quality is the best trial's objective (at its
own threshold), its interval and its AUC on the same set, all at its best epoch (``bench replay``'s
AUC is the highest of any epoch run, so it can be higher on the same search). The
random arm's full learning curves then go to ``bench replay`` (the stopping rules replayed on them).
"""

from __future__ import annotations

import time

import pandas as pd

from cxr_tune import storage as storage_paths
from cxr_tune.bench import replay
from cxr_tune.bench.common import bench_command, data_named, other_data, real_data, results_folder, seed_suffix, write_result
from cxr_tune.data.prepared import DataOptions
from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from cxr_tune.formatting import code_span
from cxr_tune.search.finish import finish_experiment
from cxr_tune.search.options import SearchOptions
from cxr_tune.search.report import SET_NAMES
from cxr_tune.search.runner import run_search
from cxr_tune.selection import prefix_of

SPACE = "bench"
RULES = {  # the space's search.asha_rule, in words
    "ray": "Ray's rule (`asha_rule: ray`): a trial goes on past a rung when its objective reaches the (1 - 1/{rf}) percentile of "
           "those recorded there before it",
    "optuna": "Optuna's rule (`asha_rule: optuna`): a trial goes on past a rung when it is among the best max(1, n // {rf}) of the "
              "n trials that reached it, itself included",
}


def _interval(row: dict) -> str:
    low, high = row["best_interval"]
    return f"[{low:.3f}, {high:.3f}]"


def _overlap(a: dict, b: dict) -> bool:
    return a["best_interval"][0] <= b["best_interval"][1] and b["best_interval"][0] <= a["best_interval"][1]


def drawn_at_random(experiment: Experiment) -> tuple[int, int]:
    """How many of a TPE search's trials TPE drew at random, and after how many ended trials it took over.

    The sampler is built with ``n_startup_trials = min(startup_trials, trials)`` and, by Optuna's rule, draws at random
    while fewer than that many trials have ended (COMPLETE or PRUNED): with k trials at once, the trials started meanwhile
    are random too, so the count is read from the study (when each trial was asked for, and how many had ended by then).
    """
    import optuna

    settings = experiment.space().settings
    startup = min(settings.startup_trials, experiment.options.trials or settings.trials)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = experiment.study()
    trials = study.get_trials(deepcopy=False)
    ended = [t.datetime_complete for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    return sum(sum(end <= t.datetime_start for end in ended) < startup for t in trials), startup


def setting_line(ran: Experiment, trials: int, seed: int, deciding: str) -> str:
    """The summary's first line: space, trials and seed, the data and external set the searches recorded, the objective."""
    return (f"Space `search_spaces/{SPACE}.yaml`, {trials} trials each, seed {seed}. Data: {data_named(ran.info.get('data_description', ''), ran.external)}. "
            f"Objective: balanced accuracy on the {deciding}" + (" (a selection set: its numbers are optimistic)." if deciding.startswith("external") else "."))


BEST_AUC = "best_auc (the best trial's, at its best epoch)"  # not bench replay's, which is the highest AUC of any epoch run
MINUTES = "command minutes"  # the whole search command, Ray's start and the image cache included; bench replay's are the trials' alone


def best_trial(table: pd.DataFrame, prefix: str) -> dict:
    """The best trial's objective, interval and AUC (on the ``prefix`` set), all read from its one row, so the AUC shown beside
    the best balanced accuracy is that trial's, not the highest of any trial. A trial that failed (ERROR) is never it, even after
    it reported, as selection never selects it and the report leaves it out of its ranking."""
    ran = table[table["status"].ne("ERROR")]
    best = ran.loc[ran["objective"].idxmax()]
    return {"best_balanced_accuracy": float(best["objective"]), "best_interval": (float(best["objective_low"]), float(best["objective_high"])),
            "best_auc": float(best[f"{prefix}_auc"])}


def results_table(rows: list[dict]) -> str:
    """The two arms side by side; the AUC and minutes columns say which AUC and which clock they are (``bench replay``'s differ)."""
    frame = pd.DataFrame(rows).drop(columns=["experiment", "best_interval"]).rename(columns={"best_auc": BEST_AUC, "minutes": MINUTES})
    return frame.to_markdown(index=False, floatfmt=".4f")


def comparison_line(tpe: dict, rnd: dict, share: float) -> str:
    """The verdict: the share of trial-epochs and the two best trials with their intervals, which are the trial tables'
    (``selection.objective_interval``, stratified by class), not a model card's, so the line says so."""
    return (f"**TPE + ASHA used {share:.0%} of the trial-epochs of random search** (goal: <= 40 %) and reached a best "
            f"balanced accuracy of {tpe['best_balanced_accuracy']:.4f} vs {rnd['best_balanced_accuracy']:.4f} "
            f"(difference {tpe['best_balanced_accuracy'] - rnd['best_balanced_accuracy']:+.4f}; goal: >= 0). 95 % bootstrap "
            "intervals of the two best trials (stratified by class: NORMAL and PNEUMONIA images resampled apart, at each trial's "
            "threshold, as the trial tables' objective_low and objective_high; a model card's resample all images together, so "
            f"they differ slightly): {_interval(tpe)} and {_interval(rnd)}"
            + (" (they overlap: the difference is within the deciding set's noise)." if _overlap(tpe, rnd) else "."))


def run(data: str | None, trials: int, storage: str, seed: int = 0, out: str | None = None) -> None:
    folder = results_folder("search", out, other_data(data))
    folder.mkdir(parents=True, exist_ok=True)  # the trial tables are written before the summary
    root = real_data(data)
    tag = seed_suffix(seed)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for label, sampler, early in (("TPE + ASHA", "tpe", True), ("random, no early stopping", "random", False)):
        options = SearchOptions(space=SPACE, name=f"{sampler}-{'asha' if early else 'full'}-{stamp}", storage=storage, trials=trials,
                                sampler=sampler, early_stopping=early, seed=seed, data=DataOptions(data=root))
        started = time.perf_counter()
        experiment, outcome = run_search(options, command=bench_command())  # what made it, recorded in experiment.json
        minutes = (time.perf_counter() - started) / 60
        table = finish_experiment(experiment, export=False)["table"]
        prefix = prefix_of(Experiment(experiment).deciding_set)
        on = "external_" if prefix == "ext" else ""
        table.to_csv(folder / f"search_{sampler}_{'asha' if early else 'full'}_{on}{trials}trials{tag}.trials.csv", index=False)
        rows.append({"search": label, "experiment": experiment, "outcome": outcome, "trials": len(table),
                     "trial_epochs": int(table["epochs"].sum()), "deciding set": SET_NAMES[prefix], **best_trial(table, prefix),
                     "minutes": minutes})
    tpe, rnd = rows
    ran = Experiment(tpe["experiment"])  # the space and rungs the TPE + ASHA arm recorded, not today's file
    asha = ran.space().settings
    at_random, startup = drawn_at_random(ran)
    on_file = "external_" if tpe["deciding set"].startswith("external") else ""
    share = tpe["trial_epochs"] / rnd["trial_epochs"]
    summary = [
        setting_line(ran, trials, seed, tpe["deciding set"]),
        f"ASHA: up to {ran.max_epochs} epochs, grace period {asha.grace_period}, reduction factor {asha.reduction_factor}, rungs at epochs "
        f"{', '.join(map(str, ran.rungs()))}; {RULES[asha.asha_rule].format(rf=asha.reduction_factor)}. TPE: the first {at_random} trials drawn at random (TPE takes over once {startup} "
        "have ended; the trials started meanwhile are random too).",
        "",
        results_table(rows),
        "",
        comparison_line(tpe, rnd, share),
        "",
        f"Trial tables: `search_tpe_asha_{on_file}{trials}trials{tag}.trials.csv` and `search_random_full_{on_file}{trials}trials{tag}.trials.csv` "
        f"beside this file. The experiment folders ({code_span(storage_paths.resolve(tpe['experiment']))}, "
        f"{code_span(storage_paths.resolve(rnd['experiment']))}) are not committed. The random arm ran every trial to the end; the stopping "
        f"rules replayed on its curves: `search_stopping_replay_{on_file}{trials}trials{tag}.md`.",
        "",
        "Command minutes: each arm's whole search command, Ray's start, the image cache and the driver's work included; the replay's "
        "trial minutes count only from the first trial's start to the last report, so they are fewer for the same search.",
    ]
    # One file per trial count and seed: ASHA saves more as trials grow (it lets the first trials through).
    write_result(f"search_tpe_asha_vs_random_{on_file}{trials}trials{tag}", f"Search: TPE + ASHA vs random search without early stopping, {trials} trials"
                 + (", external objective" if on_file else "") + (f", seed {seed}" if seed else ""), summary,
                 {"rows": rows, "epoch_share": share, "minutes_clock": f"{MINUTES}: the whole search command, start-up included"}, folder)
    # The random arm ran every trial to the end: replay the stopping rules on its curves (nothing trained again).
    try:
        replay.run(rnd["experiment"], compare=tpe["experiment"], folder=folder)
    except UserError as error:  # e.g. a trial that failed: the comparison above stands without the replay
        print(f"No replay of the stopping rules: {error}")
