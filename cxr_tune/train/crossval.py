"""K-fold cross-validation of one configuration, folds grouped by patient and stratified by class.

How stable is a configuration the search chose? One carved validation split is a single draw;
training the same hyperparameters k times, each time validating on another k-th of the training
folder's patients, gives the spread. The test folder stays out of it.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from typing import Any

import pandas as pd

from cxr_tune import storage
from cxr_tune.console import unreported_trials_unwarned
from cxr_tune.data.prepared import SplitData, images_fingerprint
from cxr_tune.data.sources import CLASSES
from cxr_tune.data.splits import group_kfold
from cxr_tune.errors import UserError, ctrl_c_kept
from cxr_tune.provenance import describe as describe_code
from cxr_tune.selection import best_epoch, diverged
from cxr_tune.train.hparams import HParams
from cxr_tune.train.trainer import TRIAL_DRIVER_CPU, Resources, RunOptions, make_trainer

FOLDS_DIR = "folds"  # under the run folder: Tune's state, the folds' Train runs and rows
TRAIN_DIR = "train"
PLAN_FILE = "plan.json"  # k, split seed and hyperparameters: a resume must match them
REPORTED = ["val_auc", "val_sensitivity", "val_specificity", "val_balanced_accuracy", "val_threshold", "val_loss", "val_brier"]


def fold_roles(split: SplitData, k: int, seed: int = 0) -> list[pd.DataFrame]:
    """``k`` copies of the roles table; in copy i, fold i of the training folder is ``val``.

    Refuses (:class:`UserError`, no Ray needed, so the command calls it before Ray starts) a ``k`` that some
    validation fold could not meet with both classes: more folds than patient groups, or than the groups that hold
    the rarer class. A fold of one class has no AUC, specificity or balanced accuracy, and the means over folds
    would quietly be taken over fewer folds than the title says.
    """
    roles = split.roles
    pool = roles[roles["role"].isin(["train", "val"])]
    groups = {name: pool.loc[pool["label"] == label, "group_id"].nunique() for label, name in enumerate(CLASSES)}
    counts = f"{pool['group_id'].nunique()} patient groups in the training folder ({', '.join(f'{n} with {c} images' for c, n in groups.items())})"
    rarer = min(groups.values())
    if k > rarer:
        fewer = f"give --cv {rarer} or fewer" if rarer >= 2 else "cross-validation needs at least 2 of each class"
        raise UserError(f"--cv {k}: {counts}, so some validation fold would hold one class or none; {fewer}")
    out = []
    for i, (fit, val) in enumerate(group_kfold(pool.reset_index(drop=True), k, seed), start=1):
        if pool["label"].iloc[val].nunique() < 2:  # enough groups of each class, and still dealt unevenly
            raise UserError(f"--cv {k}: validation fold {i} would hold one class only ({counts}); give a smaller --cv or another --split-seed")
        fold = roles.copy()
        fold.loc[pool.index[fit], "role"] = "train"
        fold.loc[pool.index[val], "role"] = "val"
        out.append(fold)
    return out


def describe_folds(split: SplitData, k: int) -> str:
    """What judges the folds, said where a single run says what selects it (:meth:`SplitData.describe_external`'s first
    line): each fold's own held-out fold. An external set is neither scored nor selecting (the folds' datasets are
    their train and val roles only), whatever ``--select-on`` says, and the line must not claim otherwise."""
    what = f"Cross-validation: each of the {k} folds chooses its best epoch and threshold on its own held-out fold of the training folder"
    if split.has_external:
        return f"{what}; the external validation set {split.external} is not used (neither scored nor selecting, whatever --select-on says)."
    return f"{what}{f' ({split.external_note})' if split.external_note else ''}."


def pool_fingerprint(split: SplitData) -> str:
    """What the folds are drawn from, in a few characters: the images of the training folder (their
    contents), so a resumed cross-validation knows its finished folds measured the same data."""
    return images_fingerprint(split.roles.loc[split.roles["role"].isin(["train", "val"]), "content_hash"])


def cross_validate(hp: HParams, split: SplitData, k: int, *, resources: Resources, storage_path: str, name: str, seed: int = 0,
                   run: RunOptions = RunOptions()) -> pd.DataFrame:
    """Train ``hp`` once per fold; one row per fold that trained all its epochs (best and last epoch). Needs Ray.

    Each fold is a Ray Tune trial that drives one Ray Train run, as the final fit's runs are, so
    folds run side by side, as many as the cluster holds with ``resources`` each
    (:meth:`Resources.runs_at_once`), and each builds its datasets as it starts (no more than that
    many are held at once). Ctrl-C stops them gracefully (Tune's own handler; fewer than ``k`` rows
    come back), and the same call again keeps the finished folds and resumes the others from their
    last checkpoints. Under ``storage_path/name/folds``: Tune's state, fold i's Train run
    (``train/fold<i>``) and, once it ended, its row (``fold<i>.json``).
    """
    import ray
    from ray import tune

    from cxr_tune.data.cache import prepare_cache
    from cxr_tune.train.progress import epoch_lines

    folder = storage.join(storage_path, name, FOLDS_DIR)
    resume = tune.Tuner.can_restore(folder)
    _check_plan(folder, json.loads(json.dumps({"k": k, "seed": seed, "hparams": hp.to_dict(), "images": pool_fingerprint(split)})), resume)
    cache = prepare_cache(split.source.manifest, hp.image_size, split.cache_dir)
    folds = fold_roles(split, k, seed)
    left = k - len(_rows(folder, k))
    with epoch_lines(left * hp.epochs, "carved") as callbacks_for:
        trainable = tune.with_resources(
            tune.with_parameters(_fit_fold, hp=hp, cache=cache, folds=folds, class_counts=[replace(split, roles=r).class_counts() for r in folds],
                                 resources=resources, folder=folder, run=run,
                                 callbacks={i: callbacks_for(f"fold {i}/{k}", hp.epochs) for i in range(1, k + 1)}),
            {"cpu": TRIAL_DRIVER_CPU},
        )
        if resume:
            tuner = tune.Tuner.restore(folder, trainable=trainable, resume_unfinished=True, resume_errored=True)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"fold": tune.grid_search(list(range(1, k + 1)))},
                tune_config=tune.TuneConfig(max_concurrent_trials=min(k, resources.runs_at_once(ray.cluster_resources())), trial_dirname_creator=_fold_dirname),
                run_config=tune.RunConfig(name=FOLDS_DIR, storage_path=storage.join(storage_path, name), verbose=0),
            )
        with unreported_trials_unwarned(), ctrl_c_kept():  # no fold writes a result.json: its row is folds/fold<i>.json
            results = tuner.fit()
    for result in results:
        if result.error is not None:
            raise result.error
    return pd.DataFrame(_rows(folder, k))


def fold_runs(run_dir: str) -> list[str]:
    """The folds' Train runs under a --cv run folder, whose checkpoints a resume continues from."""
    return storage.glob(storage.join(run_dir, FOLDS_DIR, TRAIN_DIR), "fold*")


def _fit_fold(config: dict[str, Any], *, hp: HParams, cache: Any, folds: list[pd.DataFrame], class_counts: list[tuple[int, int]],
              resources: Resources, folder: str, run: RunOptions, callbacks: dict[int, list]) -> None:
    """Tune trainable of one fold: its datasets, its Train run (resumed from its last checkpoint if it has one), then its row."""
    # Each epoch reaches Tune, so the trial can stop between two (Ctrl-C takes about 1 s); a trial that never reports
    # keeps its actor busy, and Tune waits 10 s before it kills it.
    from cxr_tune.data.cache import role_datasets
    from cxr_tune.train.tune_relay import fit_reporting_to_tune

    fold = config["fold"]
    started = time.monotonic()
    result = fit_reporting_to_tune(lambda relay: make_trainer(
        hp, role_datasets(cache, folds[fold - 1]), class_counts[fold - 1], resources=resources, storage_path=storage.join(folder, TRAIN_DIR),
        name=f"fold{fold}", deciding="carved", run=run, callbacks=[*callbacks[fold], *relay]))
    from cxr_tune.train.checkpoints import load_state  # torch: not before the run, whose start waits on this process

    with result.checkpoint.as_directory() as checkpoint:
        row = {**_fold_row(fold, pd.DataFrame(load_state(checkpoint)["history"])), "seconds": time.monotonic() - started}
    storage.write_text_atomic(storage.join(folder, f"fold{fold}.json"), json.dumps(row))


def _fold_dirname(trial: Any) -> str:
    return f"fold{trial.config['fold']}"


def _rows(folder: str, k: int) -> list[dict[str, Any]]:
    """The rows of the folds that ended, in fold order."""
    paths = [storage.join(folder, f"fold{fold}.json") for fold in range(1, k + 1)]
    return [storage.read_json(path) for path in paths if storage.exists(path)]


def _check_plan(folder: str, plan: dict[str, Any], resume: bool) -> None:
    """Write the folds' settings for a new cross-validation; refuse to resume one that had others."""
    path = storage.join(folder, PLAN_FILE)
    if not resume or not storage.exists(path):
        storage.write_text_atomic(path, json.dumps(plan, indent=2))
        return
    saved = storage.read_json(path)
    differ = [f"{flag} {saved.get(key)} there, {plan[key]} here" for key, flag in (("k", "--cv"), ("seed", "--split-seed")) if saved.get(key) != plan[key]]
    if saved.get("images", plan["images"]) != plan["images"]:  # a plan from before the data was recorded is taken at its word
        differ.append(f"data: {saved['images']} there, {plan['images']} here")
    differ += [f"{key}={saved['hparams'].get(key)} there, {value} here" for key, value in plan["hparams"].items() if saved["hparams"].get(key) != value]
    if differ:
        raise UserError(f"{path}: this run folder holds a cross-validation with other settings ({'; '.join(differ)}); "
                        "give the same settings to resume it, or another --name")


def _fold_row(fold: int, history: pd.DataFrame) -> dict[str, Any]:
    best = best_epoch(history, "carved")  # folds of the training folder: carved validation decides
    last = history.iloc[-1]
    row: dict[str, Any] = {"fold": fold, "val_images": int(best["val_n"]), "best_epoch": int(best["epoch"]),
                           "diverged": bool(diverged(history).any())}  # its last epoch's scores were not finite: it stopped there
    row.update({f"best_{m}": float(best[m]) for m in REPORTED})
    row.update({f"last_{m}": float(last[m]) for m in REPORTED})
    return row


def summary(folds: pd.DataFrame) -> pd.DataFrame:
    """Mean, standard deviation, min and max over folds of every reported metric."""
    numeric = folds.drop(columns=["fold", "diverged"], errors="ignore")
    return pd.DataFrame({"mean": numeric.mean(), "std": numeric.std(ddof=1), "min": numeric.min(), "max": numeric.max()})


def diverged_line(folds: pd.DataFrame) -> str:
    """What to say when some folds diverged ("" when none did); folds written before the column existed count as finite."""
    lost = [int(fold) for fold in folds.loc[diverged(folds), "fold"]]
    return (f"Fold(s) {', '.join(map(str, lost))} of {len(folds)} diverged (the network's scores turned non-finite, counted as 0.5, and the "
            "fold stopped there): their numbers do not measure this configuration; lower the learning rate or weight decay" if lost else "")


def markdown(folds: pd.DataFrame, hp: HParams, command: str, description: str) -> str:
    stats = summary(folds)
    warning = diverged_line(folds)
    key = [f"{when}_{m}" for when in ("best", "last") for m in ("val_auc", "val_sensitivity", "val_specificity", "val_balanced_accuracy", "val_threshold", "val_loss")]
    lines = [
        f"# {len(folds)}-fold cross-validation by patient group",
        "",
        f"Command: `{command}`  ",
        f"Data: {description}  ",
        f"Hyperparameters: {', '.join(f'`{k}={v}`' for k, v in hp.to_dict().items())}",
        "",
        *([f"**{warning}.**", ""] if warning else []),
        "Per fold (`best_`: the epoch with the best validation objective, as the search picks; `last_`: the final epoch; "
        "`diverged`: its scores turned non-finite and it stopped there):",
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


def setup_lines(run_dir: str, threads: int, code: dict[str, Any]) -> str:
    """cv.md's closing lines: what the folds computed in, as each fold's last checkpoint records it (one line when they
    agree; folds resumed on another machine may not: ``--precision auto`` resolves per machine), the torch threads per
    worker and the code (:func:`cxr_tune.provenance.provenance`), to run them again."""
    from cxr_tune.train.checkpoints import newest, trained_in

    computed = {}  # fold name ("fold2") -> what it trained in
    for run in fold_runs(run_dir):
        found = newest(run)
        record = trained_in(found[1]) if found else {}
        computed[storage.name(run)] = f"{record.get('precision') or 'n/a'}{', channels_last' if record.get('channels_last') is True else ''}"
    folds = sorted(computed, key=lambda fold: int(fold.removeprefix("fold") or 0))
    shown = set(computed.values())
    precision = (shown.pop() if len(shown) == 1 else "; ".join(f"{fold}: {computed[fold]}" for fold in folds)) if shown else "n/a"
    return f"\nComputed in: {precision}; {threads} torch thread(s) per worker  \nCode: {describe_code(code)}\n"
