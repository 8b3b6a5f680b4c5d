"""What a trial checkpoint holds and how it is read back, without unpickling arbitrary objects.

``state.pt`` holds tensors and plain values only (model, optimizer and scheduler state, epoch,
threshold, hyperparameters, metric history) and is always loaded with ``weights_only=True``.
``val_predictions.parquet`` (carved validation) and ``ext_predictions.parquet`` (the external set,
when there is one) hold the scores behind the metrics and the threshold, so ROC curves, ensembles
and exports never need to re-run the model on them.
"""

from __future__ import annotations

import io
import tempfile
from typing import Any

import numpy as np
import pandas as pd

from cxr_tune import storage
from cxr_tune.errors import damaged
from cxr_tune.selection import diverged
from cxr_tune.train.precision import epochs_trained_in

STATE = "state.pt"
RUN_FILE = "run.json"  # beside a train run's checkpoints: the data it trains and is scored on (a resume must have the same), and how it computed
PREDICTIONS = {"val": "val_predictions.parquet", "ext": "ext_predictions.parquet"}


def save_state(folder: str, state: dict[str, Any], scored: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> None:
    """``scored``: per set prefix (``val``, ``ext``), its (labels, scores, content hashes)."""
    import torch  # here, not above: export reads this module's predictions and answers --help without torch

    torch.save(state, storage.join(folder, STATE))
    for prefix, (labels, scores, hashes) in scored.items():
        frame = pd.DataFrame({"content_hash": hashes, "label": labels.astype(int), "score": scores})
        frame.to_parquet(storage.join(folder, PREDICTIONS[prefix]), index=False)


def staging_folder() -> tempfile.TemporaryDirectory:
    """A temporary folder to write one epoch's checkpoint in for ``ray.train.report``, named after this process so that
    the next one removes it when a run stopped inside that report (Ctrl-C, SIGTERM, ASHA, a killed worker) killed its
    worker there, a whole checkpoint left in ``$TMPDIR``: ``with staging_folder() as folder: save_state(folder, ...)``."""
    return storage.scratch_folder("checkpoint")


def load_state(folder: str) -> dict[str, Any]:
    """The checkpoint's state; refuses anything that is not tensors and plain values. A file that is not a checkpoint's
    state (bytes torch did not write, or no dict with an epoch) is damaged's one line, not a traceback in a caller."""
    import pickle

    import torch

    path = storage.join(folder, STATE)
    try:
        data = storage.read_bytes(path)
    except OSError as exc:  # gone, or the store refused it (its StoreError is kept as it is)
        raise damaged(path, exc) from None
    try:  # only torch's errors are the bytes': a ValueError from the read (Arrow's ArrowInvalid) is not a file torch did not save
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # a zip archive cut short is torch's RuntimeError
        raise damaged(path, exc) from None
    except (KeyError, ValueError):  # other bytes, read by torch's older format's unpickler: a bare opcode number
        raise damaged(path, ValueError("not a file torch saved")) from None
    if not isinstance(state, dict) or "epoch" not in state:  # every checkpoint the loop saves records its epoch
        raise damaged(path, ValueError("it holds no checkpoint state"))
    return state


def load_predictions(folder: str, prefix: str = "val") -> pd.DataFrame:
    """Scores a checkpoint stored for one set: ``val`` (carved) or ``ext`` (external)."""
    path = storage.join(folder, PREDICTIONS[prefix])
    try:
        return storage.read_frame(path)
    except (OSError, ValueError) as exc:  # Arrow's ArrowInvalid is a ValueError
        raise damaged(path, exc) from None


def has_predictions(folder: str, prefix: str) -> bool:
    return storage.exists(storage.join(folder, PREDICTIONS[prefix]))


def saved_checkpoints(run: str) -> list[str]:
    """The run's checkpoint folders that hold a saved state.

    Ray Train keeps each checkpoint as a ``checkpoint_<time>`` folder next to its own bookkeeping
    files, so only folders holding a state count.
    """
    return [p for p in storage.glob(run, "checkpoint_*") if storage.exists(storage.join(p, STATE))]


def saved_states(run: str) -> list[tuple[str, dict[str, Any]]]:
    """Each of the run's checkpoint folders with its state (``state["epoch"] + 1`` is the epoch it saved)."""
    return [(folder, load_state(folder)) for folder in saved_checkpoints(run)]


def newest(run: str) -> tuple[str, dict[str, Any]] | None:
    """The run's checkpoint of its latest epoch and that checkpoint's state (None before its first checkpoint)."""
    states = saved_states(run)
    return max(states, key=lambda pair: pair[1]["epoch"]) if states else None


def trained_in(state: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint's weights trained in, ``{"precision": ..., "channels_last": ...}``: over every epoch its history
    holds (:func:`cxr_tune.train.precision.epochs_trained_in`; a run resumed on another machine may mix precisions),
    else, for a history from before epochs recorded it, what the run that saved it recorded."""
    epochs, run = epochs_trained_in(state.get("history") or []), state.get("run") or {}
    return {key: epochs.get(key, run.get(key)) for key in ("precision", "channels_last")}


def diverged_at_last(state: dict[str, Any]) -> bool:
    """Whether the last epoch a checkpoint's ``state`` recorded scored some image non-finite (:func:`cxr_tune.selection.diverged`)."""
    last = (state.get("history") or [])[-1:]
    return bool(last) and bool(diverged(pd.DataFrame(last)).iloc[0])


def run_ended(state: dict[str, Any], epochs: int) -> bool:
    """Whether a run whose newest checkpoint holds ``state`` has nothing left to train: it trained all ``epochs``, or its
    scores turned non-finite (the loop stops there, and the same seed would diverge again)."""
    return state["epoch"] + 1 >= epochs or diverged_at_last(state)
