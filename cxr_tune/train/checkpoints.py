"""What a trial checkpoint holds and how it is read back, without unpickling arbitrary objects.

``state.pt`` holds tensors and plain values only (model, optimizer and scheduler state, epoch,
threshold, hyperparameters, metric history) and is always loaded with ``weights_only=True``.
``val_predictions.parquet`` holds the validation scores behind the threshold, so ROC curves and
exports never need to re-run the model on validation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

STATE = "state.pt"
PREDICTIONS = "val_predictions.parquet"


def save_state(folder: str | Path, state: dict[str, Any], labels: np.ndarray, scores: np.ndarray, hashes: np.ndarray) -> None:
    folder = Path(folder)
    torch.save(state, folder / STATE)
    pd.DataFrame({"content_hash": hashes, "label": labels.astype(int), "score": scores}).to_parquet(folder / PREDICTIONS, index=False)


def load_state(folder: str | Path) -> dict[str, Any]:
    """The checkpoint's state; refuses anything that is not tensors and plain values."""
    return torch.load(Path(folder) / STATE, map_location="cpu", weights_only=True)


def load_predictions(folder: str | Path) -> pd.DataFrame:
    return pd.read_parquet(Path(folder) / PREDICTIONS)


def best_epoch(history: pd.DataFrame) -> pd.Series:
    """The epoch a run is judged by (search, cross-validation and ablation alike): highest
    objective; ties go to higher AUC, then lower loss, then the earlier epoch."""
    ranked = history.sort_values(["objective", "val_auc", "val_loss", "epoch"], ascending=[False, False, True, True])
    return ranked.iloc[0]
