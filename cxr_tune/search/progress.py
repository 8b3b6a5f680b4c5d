"""One console line per trial epoch and per finished trial, with the best so far.

Tune's own status tables are switched off (verbose=0): they do not know our selection metric and
print every field of every result. This callback prints what a person watching wants.
"""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback


class ProgressPrinter(Callback):
    """Prints ``[mm:ss] trial <id> epoch e/E objective ... | best ... | done/total``."""

    def __init__(self, total_trials: int, max_epochs: int, criterion: str) -> None:
        self.total = total_trials
        self.max_epochs = max_epochs
        self.criterion = criterion
        self.started = time.monotonic()
        self.best: tuple[float, str] | None = None
        self.finished = 0

    def _count(self, trials: list, ending: Any = None) -> int:
        """Trials that have ended, counted from Tune's list so a resumed search counts the earlier ones."""
        ended = {t.trial_id for t in trials if t.status in ("TERMINATED", "ERROR")}
        if ending is not None:
            ended.add(ending.trial_id)
        self.finished = len(ended)
        return self.finished

    def _clock(self) -> str:
        minutes, seconds = divmod(int(time.monotonic() - self.started), 60)
        return f"[{minutes:02d}:{seconds:02d}]"

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        params = ", ".join(f"{k}={_short(v)}" for k, v in sorted(trial.config.items()))
        print(f"{self._clock()} trial {trial.trial_id} started: {params}", flush=True)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        objective = result.get("objective")
        if objective is None:
            return
        if self.best is None or objective > self.best[0]:
            self.best = (objective, trial.trial_id)
        print(
            f"{self._clock()} trial {trial.trial_id} epoch {result.get('epoch')}/{self.max_epochs} "
            f"{self.criterion} {objective:.4f} (AUC {result.get('val_auc', float('nan')):.4f}, "
            f"sens {result.get('val_sensitivity', float('nan')):.3f}, spec {result.get('val_specificity', float('nan')):.3f}) "
            f"| best {self.best[0]:.4f} ({self.best[1]}) | {self._count(trials)}/{self.total} trials done",
            flush=True,
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._count(trials, trial)
        epochs = (trial.last_result or {}).get("epoch", 0)
        how = "finished" if epochs >= self.max_epochs else f"stopped early by ASHA after {epochs} epoch(s)"
        print(f"{self._clock()} trial {trial.trial_id} {how} ({self.finished}/{self.total} done)", flush=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._count(trials, trial)
        print(f"{self._clock()} trial {trial.trial_id} FAILED; the search goes on ({self.finished}/{self.total} done)", flush=True)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class TrialEventLog(Callback):
    """Appends why each trial ended to ``trial_events.jsonl`` in the experiment folder.

    Tune marks a trial TERMINATED whether ASHA stopped it, it ran all its epochs, or the search
    ended around it (time budget, Ctrl-C); only this log tells them apart afterwards.
    """

    def __init__(self, path: str, max_epochs: int) -> None:
        self.path = path
        self.max_epochs = max_epochs

    def _write(self, trial: Any, event: str) -> None:
        import json

        epochs = int((trial.last_result or {}).get("epoch", 0))
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"trial_id": trial.trial_id, "event": event, "epochs": epochs, "time": time.time()}) + "\n")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        epochs = int((trial.last_result or {}).get("epoch", 0))
        self._write(trial, "completed" if epochs >= self.max_epochs else "ASHA stopped")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._write(trial, "error")
