"""The selection rule as the README states it, written out independently of ``cxr_tune.selection``, for
end-to-end tests to check a search's choice against (not the same call the product makes)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch


def expected_winner(table: pd.DataFrame, prefix: str) -> str:
    """README: trials whose objective interval overlaps the best trial's are tied; the tied trial with
    the highest AUC on the deciding set wins, then the lowest log loss."""
    done = table[(table["epochs"] > 0) & table[f"{prefix}_objective"].notna()]
    best = done.sort_values([f"{prefix}_objective", f"{prefix}_auc", f"{prefix}_loss"], ascending=[False, False, True]).iloc[0]
    tied = done[done[f"{prefix}_objective_high"] >= best[f"{prefix}_objective_low"] - 1e-12]
    return str(tied.sort_values([f"{prefix}_auc", f"{prefix}_loss"], ascending=[False, True]).iloc[0]["trial_id"])


def expected_best_epoch(history: pd.DataFrame, prefix: str) -> int:
    """README: a trial is judged by its best epoch on the deciding set (ties: higher AUC, lower log
    loss, earlier), from its per-epoch results alone."""
    ranked = history.sort_values([f"{prefix}_objective", f"{prefix}_auc", f"{prefix}_loss", "epoch"], ascending=[False, False, True, True])
    return int(ranked.iloc[0]["epoch"])


def checkpoint_scores(experiment: Path, trial_id: str, epoch: int, prefix: str = "val") -> pd.Series:
    """The scores a trial's Ray Train checkpoint of ``epoch`` stored for one set, by content hash."""
    for state in (experiment / "train" / trial_id).glob("checkpoint_*/state.pt"):
        if torch.load(state, weights_only=True)["epoch"] + 1 == epoch:
            return pd.read_parquet(state.parent / f"{prefix}_predictions.parquet").set_index("content_hash")["score"]
    raise AssertionError(f"trial {trial_id} kept no checkpoint of epoch {epoch}")


def exported_scores(experiment: Path, csv: str = "val_predictions.csv", folder: Path | None = None) -> pd.Series:
    """An exported model's probabilities on one set, by content hash (default: the experiment's best/)."""
    splits = pd.read_csv(experiment / "splits.csv").drop_duplicates("path").set_index("path")
    scores = pd.read_csv((folder or experiment / "best") / csv)
    return pd.Series(scores["probability"].to_numpy(), index=splits.loc[scores["path"], "content_hash"].to_numpy())
