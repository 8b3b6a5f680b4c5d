"""How long the final fit would take if the search ended now, from the search trials' own epochs.

A whole-job budget (``--job-budget``) has to leave the final fit its time, and that time depends on
what the search finds: on these 2 cores a final fit of 64-px configurations took 16 minutes, one
of 96-px configurations 53. So the estimate asks the selection rule which configurations the final
fit would train now (:func:`cxr_tune.search.finalfit.plan_final_fit`'s own call:
:func:`cxr_tune.selection.ensemble_members` of :func:`cxr_tune.selection.ranked_trials`, each trial
at its :func:`cxr_tune.selection.best_epoch`), ``seeds`` runs of each, ``concurrency`` at a time,
for ``epochs`` epochs, every epoch as slow as the slowest of those configurations' epochs in the
search (the median of its reported ``epoch_seconds``, so a trial's start-up does not count),
scaled by the FLOPs the space's ``final_fit_changes`` add to that network (:func:`cost_ratio`).
No Ray import: the budget stopper calls this, and tests check it alone.
"""

from __future__ import annotations

import bisect
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from cxr_tune.selection import best_epoch, ensemble_members, prefix_of, ranked_trials


def final_fit_epochs(settings: Any, search_max_epochs: int) -> int:
    """The final fit's schedule: the space's ``final_fit_epochs``, else the search's ``max_epochs``
    (``settings``: a space's :class:`~cxr_tune.search.space.SearchSettings`). One rule for the
    final fit's plan and for this estimate of it."""
    return settings.final_fit_epochs or search_max_epochs


@dataclass(frozen=True)
class FinalFitShape:
    """What the final fit will train: the space's ``final_fit_*`` settings, the runs at once, and
    the set whose ranking picks the configurations (``external`` or ``carved``)."""

    top: int
    seeds: int
    epochs: int
    concurrency: int
    deciding: str = "carved"
    changes: tuple[tuple[str, Any], ...] = ()  # the space's final_fit_changes, as (key, value) items

    def rounds(self, configurations: int) -> int:
        """Runs one after another in the busiest slot: ``seeds`` runs of each of ``configurations``
        (``top`` or fewer: the ensemble rule keeps only those at the selected image size),
        ``concurrency`` at a time."""
        return math.ceil(configurations * self.seeds / max(1, self.concurrency))


@dataclass
class TrialPace:
    """What the budget has seen of one search trial: its image size and each epoch's metrics.

    Its sorted epoch times and, per deciding set, its best epoch are kept, each new epoch weighed once:
    the stopper asks for them at every result of every trial, and working them out from all epochs each
    time grew with the square of the search (200 trials: over 2 minutes of the driver's CPU, now 4 s).
    """

    image_size: int | None = None
    epochs: list[dict[str, float]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # its hyperparameters, as Tune reports them
    _times: list[float] = field(default_factory=list, init=False, repr=False, compare=False)  # epoch_seconds, sorted
    # deciding set -> (its best epoch so far, how many of `epochs` it has seen, how many of those it scored)
    _best: dict[str, tuple[dict[str, float] | None, int, int]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._times = sorted(row["epoch_seconds"] for row in self.epochs if row.get("epoch_seconds", 0) > 0)
        self._best = {}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)  # a pace saved before these were kept (a resumed search) has only its epochs
        self.__post_init__()

    def add(self, result: dict) -> None:
        """Record one epoch's Tune result (one without an epoch number, or one seen before, changes nothing)."""
        epoch = result.get("epoch")
        if not isinstance(epoch, (int, float)) or any(row["epoch"] == epoch for row in self.epochs):
            return  # Tune repeats a trial's last result when it ends
        row = {k: float(v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.epochs.append(row)
        if row.get("epoch_seconds", 0) > 0:
            bisect.insort(self._times, row["epoch_seconds"])
        config = result.get("config") or {}
        if config:
            self.config = dict(config)
        if config.get("image_size") is not None:
            self.image_size = int(config["image_size"])

    def epoch_seconds(self) -> float | None:
        return statistics.median(self._times) if self._times else None

    def best(self, deciding: str) -> tuple[dict[str, float] | None, int]:
        """Its :func:`~cxr_tune.selection.best_epoch` on ``deciding`` among the epochs scored on it, and how many
        those are. The rule picks the same epoch from the best so far and the new ones as from all of them."""
        best, seen, scored = self._best.get(deciding, (None, 0, 0))
        objective = f"{prefix_of(deciding)}_objective"
        new = [row for row in self.epochs[seen:] if math.isfinite(row.get(objective, math.nan))]
        if new:
            import pandas as pd

            best = best_epoch(pd.DataFrame(([] if best is None else [best]) + new), deciding).to_dict()
        self._best[deciding] = best, len(self.epochs), scored + len(new)
        return best, scored + len(new)


def final_fit_seconds(paces: dict[str, TrialPace], shape: FinalFitShape) -> float | None:
    """Estimated wall seconds of the final fit if the search ended now; None before any trial
    reported a scored epoch, 0 for a space without a final fit.

    >>> row = {"ext_objective": 0.9, "ext_auc": 0.95, "ext_loss": 0.3, "epoch_seconds": 11.0}
    >>> paces = {"a": TrialPace(64, [{**row, "epoch": 1}, {**row, "epoch": 2, "epoch_seconds": 12.0}])}
    >>> final_fit_seconds(paces, FinalFitShape(top=1, seeds=2, epochs=32, concurrency=2, deciding="external"))
    368.0
    """
    if shape.top <= 0 or shape.seeds <= 0:
        return 0.0
    import pandas as pd

    rows = []
    for trial_id, pace in paces.items():
        best, scored = pace.best(shape.deciding)
        if best is not None and pace.epoch_seconds() is not None:
            rows.append({**best, "trial_id": trial_id, "image_size": pace.image_size, "epochs": scored})
    if not rows:
        return None
    members = ensemble_members(ranked_trials(pd.DataFrame(rows), shape.deciding), shape.top)
    # getattr: a pace saved with a stopper before TrialPace had a config (a resumed search) scales by 1
    epoch = max((paces[t].epoch_seconds() or 0.0) * cost_ratio(getattr(paces[t], "config", {}), shape.changes) for t in members["trial_id"])
    return shape.rounds(len(members)) * shape.epochs * epoch


def cost_ratio(config: dict[str, Any], changes: tuple[tuple[str, Any], ...]) -> float:
    """How much costlier a search trial's network is with the final fit's changes: the ratio of
    :func:`cxr_tune.train.model.step_flops` (1 without changes, or for a trial whose configuration
    was not seen). FLOPs overstate the time ratio of small networks on a CPU (a second convolution per
    block at 64 px: 3.4-3.7x the FLOPs; 2.0x the time one run at a time on 2 cores, 1.7x two at a
    time in a job), so the estimate errs long: the search ends earlier than it needs to, not the job later."""
    if not changes or not config:
        return 1.0
    key = (tuple(sorted((k, repr(v)) for k, v in config.items())), changes)
    if key not in _RATIOS:  # each configuration once: the stopper asks at every result
        from cxr_tune.train.hparams import HParams
        from cxr_tune.train.model import step_flops

        plain, costlier = HParams.from_config(config), HParams.from_config({**config, **dict(changes)})
        _RATIOS[key] = step_flops(costlier) / max(1, step_flops(plain))
    return _RATIOS[key]


_RATIOS: dict[tuple, float] = {}
