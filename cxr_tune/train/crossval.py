"""K-fold cross-validation of one configuration, folds grouped by patient and stratified by class.

How stable is a configuration the search chose? One carved validation split is a single draw;
training the same hyperparameters k times, each time validating on another k-th of the training
folder's patients, gives the spread. The test folder stays out of it.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

import pandas as pd

from cxr_tune.data.prepared import SplitData
from cxr_tune.data.splits import group_kfold
from cxr_tune.selection import best_epoch
from cxr_tune.train.checkpoints import load_state
from cxr_tune.train.hparams import HParams
from cxr_tune.train.trainer import Resources, RunOptions, make_trainer

REPORTED = ["val_auc", "val_sensitivity", "val_specificity", "val_balanced_accuracy", "val_threshold", "val_loss", "val_brier"]


def fold_roles(split: SplitData, k: int, seed: int = 0) -> list[pd.DataFrame]:
    """``k`` copies of the roles table; in copy i, fold i of the training folder is ``val``."""
    roles = split.roles
    pool = roles[roles["role"].isin(["train", "val"])]
    out = []
    for fit, val in group_kfold(pool.reset_index(drop=True), k, seed):
        fold = roles.copy()
        fold.loc[pool.index[fit], "role"] = "train"
        fold.loc[pool.index[val], "role"] = "val"
        out.append(fold)
    return out


def cross_validate(hp: HParams, split: SplitData, k: int, *, resources: Resources, storage_path: str, name: str, seed: int = 0,
                   run: RunOptions = RunOptions()) -> pd.DataFrame:
    """Train ``hp`` once per fold through Ray Train; one row per fold (best and last epoch). Needs Ray.

    Folds run side by side, as many as the cluster holds with ``resources`` each
    (:meth:`Resources.runs_at_once`); each fold's datasets are built as it starts, so no more than
    that many are held at once.
    """
    import ray

    from cxr_tune.data.cache import prepare_cache, role_datasets
    from cxr_tune.train.progress import epoch_lines

    cache = prepare_cache(split.source.manifest, hp.image_size, split.cache_dir)
    folds = fold_roles(split, k, seed)
    at_once = min(k, resources.runs_at_once(ray.cluster_resources()))
    rows: dict[int, dict[str, Any]] = {}

    def fit(index: int, roles: pd.DataFrame, datasets: dict, callbacks: list) -> dict[str, Any]:
        # Train's fit() runs outside the main thread (it then leaves Ctrl-C to the main thread).
        started = time.monotonic()
        result = make_trainer(hp, datasets, replace(split, roles=roles).class_counts(), resources=resources,
                              storage_path=storage_path, name=f"{name}-fold{index + 1}", deciding="carved", run=run, callbacks=callbacks).fit()
        with result.checkpoint.as_directory() as folder:
            return {**_fold_row(index + 1, pd.DataFrame(load_state(folder)["history"])), "seconds": time.monotonic() - started}

    pool = ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="fold")
    try:
        with epoch_lines(k * hp.epochs, "carved") as callbacks_for:
            running: set[Future] = set()
            for index, roles in enumerate(folds):
                if len(running) == at_once:
                    _collect(running, rows, k)
                # datasets built here, one at a time
                running.add(pool.submit(fit, index, roles, role_datasets(cache, roles), callbacks_for(f"fold {index + 1}/{k}", hp.epochs)))
            while running:
                _collect(running, rows, k)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # on Ctrl-C, Ray's shutdown ends the running folds
    return pd.DataFrame([rows[fold] for fold in sorted(rows)])


def _collect(running: set[Future], rows: dict[int, dict[str, Any]], k: int) -> None:
    """Wait for the next fold to end; record and print its row (a fold's failure raises here)."""
    done, _ = wait(running, return_when=FIRST_COMPLETED)
    running -= done
    for future in done:
        row = future.result()
        rows[row["fold"]] = row
        print(f"Fold {row['fold']}/{k}: best epoch {row['best_epoch']}, balanced accuracy {row['best_val_balanced_accuracy']:.4f}, "
              f"AUC {row['best_val_auc']:.4f}; last epoch {row['last_val_balanced_accuracy']:.4f} / {row['last_val_auc']:.4f}", flush=True)


def _fold_row(fold: int, history: pd.DataFrame) -> dict[str, Any]:
    best = best_epoch(history, "carved")  # folds of the training folder: carved validation decides
    last = history.iloc[-1]
    row: dict[str, Any] = {"fold": fold, "val_images": int(best["val_n"]), "best_epoch": int(best["epoch"])}
    row.update({f"best_{m}": float(best[m]) for m in REPORTED})
    row.update({f"last_{m}": float(last[m]) for m in REPORTED})
    return row


def summary(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation, min and max over folds of every reported metric."""
    numeric = folds.drop(columns=["fold"])
    return pd.DataFrame({"mean": numeric.mean(), "std": numeric.std(ddof=1), "min": numeric.min(), "max": numeric.max()})


def markdown(folds: pd.DataFrame, hp: HParams, command: str, description: str) -> str:
    stats = summary(folds)
    key = [f"{when}_{m}" for when in ("best", "last") for m in ("val_auc", "val_sensitivity", "val_specificity", "val_balanced_accuracy", "val_threshold", "val_loss")]
    lines = [
        f"# {len(folds)}-fold cross-validation by patient group",
        "",
        f"Command: `{command}`  ",
        f"Data: {description}  ",
        f"Hyperparameters: {', '.join(f'`{k}={v}`' for k, v in hp.to_dict().items())}",
        "",
        "Per fold (`best_`: the epoch with the best validation objective, as the search picks; `last_`: the final epoch):",
        "",
        folds.to_markdown(index=False, floatfmt=[".0f" if c in ("fold", "val_images", "best_epoch") else ".1f" if c == "seconds" else ".4f" for c in folds.columns]),
        "",
        "Spread over folds:",
        "",
        stats.loc[key].to_markdown(floatfmt=".4f"),
        "",
        f"Balanced accuracy at the chosen epoch: {stats.loc['best_val_balanced_accuracy', 'mean']:.4f} +- "
        f"{stats.loc['best_val_balanced_accuracy', 'std']:.4f} (mean +- sd); AUC {stats.loc['best_val_auc', 'mean']:.4f} +- "
        f"{stats.loc['best_val_auc', 'std']:.4f}. Folds are grouped by patient, so no patient is in a fold's training and validation at once.",
    ]
    return "\n".join(lines) + "\n"
