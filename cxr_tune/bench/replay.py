"""Replay early-stopping rules on a search that ran every trial to the end (``--no-early-stopping``).

Why: what TPE + ASHA saves over random search mixes two causes, the proposals and the stopping rule.
A random search's trials do not depend on one another (the random sampler ignores results and every
trial is seeded), so its full learning curves say what each rule would have run and found on the
very same proposals, without training anything again. The rules:

- Ray's asynchronous ASHA and Optuna's asynchronous successive halving (``SuccessiveHalvingPruner``):
  the two schedulers the search builds (:func:`asha_scheduler`, ``asha_rule: ray`` or ``optuna``),
  each fed every result as Tune feeds it;
- synchronous successive halving: every trial reaches a rung before the best 1/rf go on (what ASHA's
  promotions approach; it needs trials paused and resumed, which the search does not do).

Asynchronous rules depend on the order results arrive: the replay starts trials in their recorded
order on as many slots as ran at once, and reports each epoch after the time it took in the full run.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd

from cxr_tune.bench.common import RESULTS, seed_suffix, write_result
from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from cxr_tune.formatting import code_span
from cxr_tune.plotting import legend_beside, save_figure, subplots
from cxr_tune.search.report import objective_words
from cxr_tune.search.results import asha_rungs
from cxr_tune.selection import diverged, prefix_of


@dataclass(frozen=True)
class Curve:
    """One trial's learning curve: its start (seconds, the experiment's clock) and, per epoch, the
    objective, the AUC on the same set and the seconds from the trial's start to that report."""

    trial_id: str
    start: float
    epochs: pd.DataFrame  # epoch, objective, auc, elapsed, diverged


@dataclass
class Replay:
    """What one rule ran: epochs per trial, every epoch run in the order it reported, and the
    simulated minutes (None where the rule cannot be simulated without pausing trials)."""

    rule: str
    ran: dict[str, int] = field(default_factory=dict)
    order: list[tuple[str, int]] = field(default_factory=list)
    minutes: float | None = None


def curves_of(experiment: Experiment, *, complete: bool = True) -> list[Curve]:
    """The experiment's trials in start order. ``complete``: refuse a trial that did not run every epoch."""
    prefix = prefix_of(experiment.deciding_set)
    trials, histories = experiment.histories()
    started = {t.trial_id: t.run_metadata.start_time for t in trials if getattr(getattr(t, "run_metadata", None), "start_time", None)}
    out = []
    for trial_id, history in histories.items():
        if history.empty or "objective" not in history:
            if complete:
                raise UserError(f"{experiment.path}: trial {trial_id} reported no epoch; the replay needs every trial run to the end")
            continue
        rows = history.dropna(subset=["objective"]).sort_values("epoch")
        if complete and list(rows["epoch"]) != list(range(1, experiment.max_epochs + 1)):
            raise UserError(f"{experiment.path}: trial {trial_id} ran {len(rows)} of {experiment.max_epochs} epochs; the replay needs "
                            "a search that ran every trial to the end (python -m cxr_tune.search ... --sampler random --no-early-stopping)")
        epochs = pd.DataFrame({"epoch": rows["epoch"].astype(int).to_numpy(), "objective": rows["objective"].astype(float).to_numpy(),
                               "auc": rows[f"{prefix}_auc"].astype(float).to_numpy(), "elapsed": rows["time_total_s"].astype(float).to_numpy(),
                               "diverged": diverged(rows).to_numpy()})
        first = rows.iloc[0]  # without Tune's start time: the first report's (whole-second) time less the time it took
        out.append(Curve(trial_id, float(started.get(trial_id) or float(first["timestamp"]) - float(first["time_total_s"])), epochs))
    return sorted(out, key=lambda c: (c.start, c.trial_id))


def slots_of(curves: list[Curve]) -> int:
    """How many trials ran at once at most (their start-to-last-report spans overlapping)."""
    edges = sorted([(c.start, 1) for c in curves] + [(c.start + float(c.epochs["elapsed"].iloc[-1]), -1) for c in curves],
                   key=lambda e: (e[0], e[1]))
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return max(most, 1)


def simulate(curves: list[Curve], slots: int, rule: str, start: Callable[[str], Any],
             result: Callable[[Any, int, float, bool], bool]) -> Replay:
    """Run ``curves`` on ``slots``: ``start(trial_id)`` returns the rule's handle of a trial;
    ``result(handle, epoch, objective, last)`` says whether the rule stops it after that epoch."""
    replay = Replay(rule)
    pending: list[tuple[float, int, str, int, Any]] = []  # (time, order, trial, row index, handle)
    waiting = list(curves)
    counter = 0

    def launch(slot_time: float) -> None:
        nonlocal counter
        curve = waiting.pop(0)
        handle = start(curve.trial_id)
        for i, elapsed in enumerate(curve.epochs["elapsed"]):
            heapq.heappush(pending, (slot_time + float(elapsed), counter, curve.trial_id, i, handle))
            counter += 1

    for _ in range(min(slots, len(waiting))):
        launch(0.0)
    by_id = {c.trial_id: c for c in curves}
    stopped: set[str] = set()
    end = 0.0
    while pending:
        when, _, trial_id, i, handle = heapq.heappop(pending)
        if trial_id in stopped:
            continue
        row = by_id[trial_id].epochs.iloc[i]
        last = i == len(by_id[trial_id].epochs) - 1
        replay.order.append((trial_id, int(row["epoch"])))
        replay.ran[trial_id] = int(row["epoch"])
        end = max(end, when)
        if result(handle, int(row["epoch"]), float(row["objective"]), last) or last:
            stopped.add(trial_id)
            if waiting:
                launch(when)
    replay.minutes = end / 60
    return replay


def ray_asha(curves: list[Curve], slots: int, max_epochs: int, settings: Any) -> Replay:
    """Ray's ASHA as the search builds it (``asha_rule: ray``)."""
    return scheduled(curves, slots, max_epochs, replace(settings, asha_rule="ray"), "Ray's asynchronous ASHA")


def optuna_halving(curves: list[Curve], slots: int, max_epochs: int, settings: Any) -> Replay:
    """Optuna's asynchronous successive halving as the search builds it (``asha_rule: optuna``): a
    trial goes on past a rung when it is in the best 1/rf of all trials at that rung so far, and the
    first rf - 1 only when they are the best."""
    return scheduled(curves, slots, max_epochs, replace(settings, asha_rule="optuna"), "Optuna's asynchronous successive halving")


def scheduled(curves: list[Curve], slots: int, max_epochs: int, settings: Any, rule: str) -> Replay:
    """The search's own scheduler for ``settings``, told each result as Tune tells it:
    ``on_trial_result``, then ``on_trial_complete`` once the trial ends."""
    from ray.tune.schedulers import TrialScheduler

    from cxr_tune.search.runner import asha_scheduler

    scheduler = asha_scheduler(max_epochs, settings)

    def start(trial_id: str) -> Any:
        trial = SimpleNamespace(trial_id=trial_id)
        scheduler.on_trial_add(None, trial)
        return trial

    def result(trial: Any, epoch: int, objective: float, last: bool) -> bool:
        reported = {"epoch": epoch, "objective": objective}
        stop = scheduler.on_trial_result(None, trial, reported) == TrialScheduler.STOP
        if stop or last:
            scheduler.on_trial_complete(None, trial, reported)
        return stop

    return simulate(curves, slots, rule, start, result)


def synchronous_halving(curves: list[Curve], rungs: tuple[int, ...], max_epochs: int, reduction_factor: int) -> Replay:
    """Every trial runs to a rung; the best ``len // rf`` (at least one) by that epoch's objective go on."""
    replay = Replay("synchronous successive halving (needs pausing)")
    alive = [c.trial_id for c in curves]
    by_id = {c.trial_id: c.epochs.set_index("epoch") for c in curves}
    done = 0
    for stop_at in (*rungs, max_epochs):
        for trial_id in alive:
            replay.order += [(trial_id, e) for e in range(done + 1, stop_at + 1)]
            replay.ran[trial_id] = stop_at
        if stop_at == max_epochs:
            break
        keep = max(1, len(alive) // reduction_factor)
        alive = sorted(alive, key=lambda t: (-by_id[t].loc[stop_at, "objective"], t))[:keep]
        done = stop_at
    return replay


def full_run(curves: list[Curve]) -> Replay:
    """The search as it ran: every epoch, in the order the reports came."""
    replay = Replay("none (as the search ran)")
    events = sorted((c.start + float(r.elapsed), c.trial_id, int(r.epoch)) for c in curves for r in c.epochs.itertuples())
    replay.order = [(t, e) for _, t, e in events]
    replay.ran = {c.trial_id: int(c.epochs["epoch"].max()) for c in curves}
    replay.minutes = (events[-1][0] - min(c.start for c in curves)) / 60
    return replay


BEST_AUC = "best_auc (of any epoch run)"  # not bench search's, which is taken at each trial's best epoch
MINUTES = "trial minutes"  # the first trial's start to the last report; bench search's command minutes also count Ray's start and the cache


def summarize(replay: Replay, curves: list[Curve], total_epochs: int, max_epochs: int) -> dict[str, Any]:
    """Trial-epochs, share of the full run's, and the best objective (and AUC) among the epochs run."""
    by_id = {c.trial_id: c.epochs.set_index("epoch") for c in curves}
    run = pd.DataFrame([{"trial": t, "epoch": e, **by_id[t].loc[e].to_dict()} for t, e in replay.order])
    run = run[~diverged(run)] if not diverged(run).all() else run  # as selection.best_epoch: a diverged epoch is never the best
    best = run.sort_values(["objective", "auc"], ascending=False).iloc[0]
    epochs = sum(replay.ran.values())
    return {"rule": replay.rule, "trial_epochs": epochs, "share": epochs / total_epochs,
            "trials_to_the_end": sum(1 for c in curves if replay.ran.get(c.trial_id) == max_epochs),
            "best_objective": float(best["objective"]), "best_trial": f"{best['trial']} @ {int(best['epoch'])}",
            "best_auc": float(run["auc"].max()), "minutes": replay.minutes}


def anytime(replay: Replay, curves: list[Curve]) -> pd.Series:
    """Best objective so far against trial-epochs spent, in the order the epochs reported."""
    by_id = {c.trial_id: c.epochs.set_index("epoch")["objective"].where(~diverged(c.epochs).to_numpy()) for c in curves}
    values = pd.Series([by_id[t].loc[e] for t, e in replay.order], index=range(1, len(replay.order) + 1))
    return values.cummax()


def plot_anytime(path: Path, lines: dict[str, pd.Series], title: str) -> None:
    import matplotlib.ticker

    fig, ax = subplots(figsize=(8, 4.5))
    dashes = ["-", (0, (6, 3)), (0, (2, 2)), (0, (6, 2, 2, 2)), (0, (1, 3))]
    for index, (label, series) in enumerate(lines.items()):  # thinner and dashed over the ones before: identical curves all show
        wider = len(lines) - 1 - index
        ax.step(series.index, series.to_numpy(), where="post", label=label, linewidth=1.5 + 1.2 * wider, linestyle=dashes[index % len(dashes)],
                marker="o" if len(series) == 1 else None, markersize=5 + 3 * wider)  # a step of one point draws nothing: a dot
    ax.set(xlabel="trial-epochs spent", ylabel="best objective so far", title=title)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))  # whole trial-epochs, even one
    legend_beside(ax, fontsize=8)
    save_figure(fig, path)


def compared(experiment: Experiment, replayed: Experiment) -> tuple[dict[str, Any], pd.Series]:
    """A search that ran with its own early stopping (e.g. TPE + ASHA), as it ran: its row and anytime curve.
    Refused unless its objective is ``replayed``'s: another set's or criterion's numbers in the same column compare nothing."""
    if objective_words(experiment) != objective_words(replayed):
        raise UserError(f"{experiment.path}: its objective is {objective_words(experiment)}, the replayed search's is {objective_words(replayed)}; "
                        "compare searches that select on the same set by the same criterion")
    curves = curves_of(experiment, complete=False)
    if not curves:
        raise UserError(f"{experiment.path}: no trial reported an epoch; nothing to compare")
    replay = full_run(curves)
    replay.rule = (f"ran: {experiment.name} ({experiment.options.sampler} sampler, {'ASHA' if experiment.options.early_stopping else 'no early stopping'}, "
                   f"{len(curves)} trials)")
    return summarize(replay, curves, sum(replay.ran.values()), experiment.max_epochs), anytime(replay, curves)


def run(experiment_dir: str, compare: str | None = None, folder: Path | None = None) -> Path:
    folder = folder or RESULTS
    folder.mkdir(parents=True, exist_ok=True)  # the plot is written before the table
    experiment = Experiment(experiment_dir)  # a one-line error for a folder that holds none
    if experiment.options.early_stopping:
        raise UserError(f"{experiment_dir}: ran with early stopping; the replay needs a search run with --no-early-stopping")
    settings, max_epochs = experiment.space().settings, experiment.max_epochs
    rungs = asha_rungs(settings.grace_period, settings.reduction_factor, max_epochs)
    curves = curves_of(experiment)
    slots = slots_of(curves)
    total = len(curves) * max_epochs
    replays = [full_run(curves), ray_asha(curves, slots, max_epochs, settings), optuna_halving(curves, slots, max_epochs, settings),
               synchronous_halving(curves, rungs, max_epochs, settings.reduction_factor)]
    replays[1 if settings.asha_rule == "ray" else 2].rule += " (the space's rule)"
    rows = [summarize(r, curves, total, max_epochs) for r in replays]
    lines = {r.rule: anytime(r, curves) for r in replays}
    if compare:
        row, line = compared(Experiment(compare), experiment)
        row["share"] = row["trial_epochs"] / total
        rows.append(row)
        lines[row["rule"]] = line
    prefix = prefix_of(experiment.deciding_set)
    on = "external_" if prefix == "ext" else ""
    name = f"search_stopping_replay_{on}{len(curves)}trials{seed_suffix(experiment.options.seed)}"
    plot_anytime(folder / f"{name}.png", lines, f"Early-stopping rules replayed on {len(curves)} full trials")
    frame = pd.DataFrame(rows)
    shown = frame.assign(share=frame["share"].map(lambda s: f"{s:.0%}"),
                         minutes=frame["minutes"].map(lambda m: "not simulated" if m is None or pd.isna(m) else f"{m:.1f}"))
    shown = shown.rename(columns={"best_auc": BEST_AUC, "minutes": MINUTES})
    selection = " (a selection set: its numbers are optimistic)" if prefix == "ext" else ""
    summary = [
        f"Replayed on {code_span(experiment.path)} ({experiment.options.sampler} sampler, {len(curves)} trials of {max_epochs} epochs, "
        f"{slots} at a time; space {code_span(experiment.options.space)}). Objective: {objective_words(experiment)}{selection}.",
        (f"Rungs at epochs {', '.join(map(str, rungs))}, reduction factor {settings.reduction_factor}." if rungs else
         f"No rung before the last of {max_epochs} epoch(s): no rule can stop a trial early here.") + " Each trial's curve is the one it "
        "trained in the full run; the asynchronous rules see the results in the order the replay's slots produce them "
        "(each epoch after the time it took in the full run), so their minutes are simulated, not measured. Trial minutes: from the "
        "first trial's start to the last report (`bench search`'s command minutes also count Ray's start and the image cache).",
        "",
        shown.to_markdown(index=False, floatfmt=".4f"),
        "",
        f"Share: trial-epochs as a fraction of the full run's {total}. Best: the highest objective among the epochs the rule ran "
        "(trial @ epoch), and the highest AUC on the same set among those epochs, whichever epoch had it (`bench search`'s best AUC "
        "is taken at each trial's best epoch only, so it can be lower on the same search). Plot: best objective so far against trial-epochs spent, "
        f"`{name}.png` beside this file.",
    ]
    write_result(name, f"Early-stopping rules replayed on a search that ran every trial to the end, {len(curves)} trials", summary,
                 {"experiment": experiment.path, "compare": compare, "slots": slots, "rungs": list(rungs), "rows": rows,
                  "minutes_clock": f"{MINUTES}: the first trial's start to the last report"}, folder)
    return folder / f"{name}.md"
