"""Where a search's trial time went, from its trials' per-epoch records: the start-up before each
run's first epoch, and each epoch's training, scoring of the validation sets and the rest, then its checkpoint and report.

Why: on a small machine a trial's fixed costs (Ray Train starting its processes, imports, building
the model) compete with its training, and which part to cut first is a measurement, not a
guess. Each record carries Tune's ``time_this_iter_s`` (the wall time since the previous report,
or since the run started) and the loop's ``epoch_seconds``, ``train_seconds`` and ``score_seconds``
(experiments from before a field was recorded leave its row out).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from cxr_tune.experiment import HEARTBEAT_SECONDS

PARTS = {  # record field -> what it is, in the report's words
    "train_seconds": "training (reading its batches, augmentation, forward, backward, optimizer, EMA)",
    "score_seconds": "scoring carved validation and the external set",
}


@dataclass(frozen=True)
class TimeSplit:
    """Sums and medians over every reported epoch of every search trial (a resumed run counts as another run)."""

    runs: int
    epochs: int
    trial_seconds: float  # the trials' own clocks added up: start-ups, epochs and reporting
    startup_seconds: list[float]  # per run: wall time before its first epoch began
    epoch_seconds: list[float]  # per epoch
    parts: dict[str, list[float]]  # per epoch, for the fields of PARTS every epoch recorded


def time_split(histories: dict[str, pd.DataFrame]) -> TimeSplit | None:
    """The split of ``histories`` (trial id -> per-epoch records); None when no epoch carries the timing fields."""
    frames = [h for h in histories.values() if not h.empty and {"time_this_iter_s", "epoch_seconds", "epoch"} <= set(h.columns)]
    if not frames:
        return None
    rows = pd.concat(frames, ignore_index=True).dropna(subset=["time_this_iter_s", "epoch_seconds"])
    if rows.empty:
        return None
    first_of_run = rows["epoch"] == rows.get("start_epoch", pd.Series(0, index=rows.index)).fillna(0) + 1
    startup = (rows.loc[first_of_run, "time_this_iter_s"] - rows.loc[first_of_run, "epoch_seconds"]).clip(lower=0)
    parts = {field: rows[field].astype(float).tolist() for field in PARTS if field in rows and rows[field].notna().all()}
    return TimeSplit(runs=int(first_of_run.sum()), epochs=len(rows), trial_seconds=float(rows["time_this_iter_s"].sum()),
                     startup_seconds=startup.astype(float).tolist(), epoch_seconds=rows["epoch_seconds"].astype(float).tolist(), parts=parts)


def time_section(split: TimeSplit | None, stage_minutes: dict[str, float], cut_short: int = 0) -> list[str]:
    """The report's "Where the time went" section ([] when the trials recorded no timing); ``stage_minutes``:
    :meth:`cxr_tune.experiment.Experiment.stage_minutes`; ``cut_short``: how many of those runs never ended
    (killed or crashed; counted to their last record)."""
    if split is None or split.trial_seconds <= 0:
        return []

    def share(seconds: float) -> str:
        return f"{100 * seconds / split.trial_seconds:.0f} %"

    def median(values: list[float]) -> str:
        return f"{pd.Series(values).median():.2f}"

    rows = [{"part": "start-up before a run's first epoch (Ray Train's processes, imports, the model)", "median seconds": f"{median(split.startup_seconds)} per run",
             "share of trial time": share(sum(split.startup_seconds))},
            {"part": "the epochs", "median seconds": f"{median(split.epoch_seconds)} per epoch", "share of trial time": share(sum(split.epoch_seconds))}]
    for field, values in split.parts.items():
        rows.append({"part": f"- of which {PARTS[field]}", "median seconds": f"{median(values)} per epoch", "share of trial time": share(sum(values))})
    rest = sum(split.epoch_seconds) - sum(sum(v) for v in split.parts.values())
    if len(split.parts) == len(PARTS) and rest >= 0:
        rows.append({"part": "- of which the rest (gathering scores, metrics and their bootstrap intervals)", "median seconds": "", "share of trial time": share(rest)})
    reporting = split.trial_seconds - sum(split.startup_seconds) - sum(split.epoch_seconds)
    if reporting >= 0:
        rows.append({"part": "after each epoch (its checkpoint, the report to Tune)", "median seconds": "", "share of trial time": share(reporting)})
    wall = "; ".join(f"{stage} {minutes:.1f} min wall" for stage, minutes in stage_minutes.items() if minutes > 0)
    if wall and cut_short:
        wall += (f", with {cut_short} run(s) that never ended (killed or crashed) counted to their last record, "
                 f"written every {HEARTBEAT_SECONDS:.0f} s")
    return [
        "## Where the time went", "",
        f"The search's {split.runs} trial run(s) and {split.epochs} epoch(s): {split.trial_seconds / 60:.1f} trial-minutes by the trials' "
        f"own clocks (trials that run side by side make this more than the wall time{'; ' + wall if wall else ''}). "
        "From each epoch's record; the final fit's runs are not counted here.", "",
        pd.DataFrame(rows).to_markdown(index=False), "",
    ]
