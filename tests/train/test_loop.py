"""The Ray Train loop: real learning, checkpoints that resume exactly, repeatability, cross-validation.

A two-worker DDP run (sharding, every validation image scored once) is tests/test_cluster.py's:
its trial spans two nodes."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxr_tune.data.prepared import DataOptions, datasets_by_size, split_data
from cxr_tune.train.checkpoints import load_state
from cxr_tune.train.hparams import HParams
from cxr_tune.train.trainer import Resources, make_trainer

SIZE = 32


def fit(data, tmp_path, name: str, loop_options: dict | None = None, cpus: float = 0.9, **overrides):
    split, datasets = data
    params = {"image_size": SIZE, "depth": 3, "filters": 8, "batch_size": 32, "epochs": 2, "augment_strength": 0.3}
    hp = HParams(**{**params, **overrides})
    trainer = make_trainer(hp, datasets, split.class_counts(), resources=Resources(1, cpus), storage_path=str(tmp_path),
                           name=name, loop_options=loop_options, deciding="carved")
    result = trainer.fit()
    assert result.error is None
    with result.checkpoint.as_directory() as folder:
        return result, load_state(folder)


@pytest.fixture(scope="module")
def blob_data(ray_session, tmp_path_factory):
    """Images whose class is plain to see: PNEUMONIA adds one bright blob to a noisy background.

    The SYNTHETIC set needs ~1000 images at 64 px before a small CNN separates it (see
    results/synthetic/README.md); at test size its validation AUC is noise, so the loop's
    learning is checked on a signal any working loop must pick up within a few epochs.
    """
    root = tmp_path_factory.mktemp("blobs") / "chest_xray"
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for i in range(200):
        sick = i % 2 == 1
        image = rng.normal(110, 25, (SIZE, SIZE))
        if sick:
            cy, cx, r = rng.uniform(8, SIZE - 8, 2).tolist() + [rng.uniform(3, 6)]
            image += rng.uniform(70, 110) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        name = f"PNEUMONIA/person{i}_bacteria_{i}.png" if sick else f"NORMAL/IM-{i:04d}-0001.png"
        path = root / "train" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path)
    split = split_data(DataOptions(data=str(root)), progress=False)
    return split, datasets_by_size(split, [SIZE])[SIZE]


LEARN = {"epochs": 6, "lr": 1e-2, "class_weighting": "none", "augment_strength": 0.2}


@pytest.fixture(scope="module")
def side_by_side(blob_data, tmp_path_factory) -> dict:
    """Three runs at once (the session's 2 CPUs hold three at 0.6 CPU, one torch thread each; Train's fit() runs
    outside the main thread, and each run has processes of its own, so none sees another): a run that learns, the
    same seed crashed before epoch 5 and restarted by Train from its epoch-4 checkpoint, and one whose scores turn
    NaN at epoch 2. Side by side because a Train run's start-up, not its tiny epochs, is what each costs.
    ``{name: (result, final state)}``."""
    from concurrent.futures import ThreadPoolExecutor

    folder = tmp_path_factory.mktemp("side-by-side")
    runs = {"learn": {**LEARN}, "crashed": {**LEARN, "loop_options": {"fail_at_epoch": 5}},
            # Before: NaN scores made the AUC raise inside the worker, Train retried twice, and the command ended in a traceback.
            "diverged": {"loop_options": {"nan_at_epoch": 2}, "epochs": 4}}
    with ThreadPoolExecutor(max_workers=len(runs)) as pool:
        started = {name: pool.submit(fit, blob_data, folder, name, cpus=0.6, **options) for name, options in runs.items()}
        return {name: future.result() for name, future in started.items()}


@pytest.mark.slow  # starts Ray and trains
def test_the_loop_learns_a_visible_signal_and_a_crashed_run_resumes_it_exactly(side_by_side):
    """The loop learns; and two runs of one seed end with the same weights bit for bit on the CPU,
    one of them crashed and restarted from its checkpoint: repeatable, and resumed exactly."""
    (_, straight), (result, resumed) = side_by_side["learn"], side_by_side["crashed"]
    history = straight["history"]
    losses = [h["val_loss"] for h in history]
    assert losses[-1] < min(losses[0] - 0.1, 0.4), losses  # ln 2 = 0.69 is chance on this 50/50 set
    assert history[-1]["val_auc"] > 0.95, [h["val_auc"] for h in history]
    assert history[-1]["val_balanced_accuracy"] > 0.85

    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4, 5, 6] and resumed["epoch"] == 5
    # The failure fired: epochs 1-4 ran in the first attempt, epochs 5-6 in a run restored from the
    # epoch-4 checkpoint (an uninterrupted run reports start_epoch 0 throughout, as "learn" does).
    assert [h["start_epoch"] for h in resumed["history"]] == [0, 0, 0, 0, 4, 4] and result.metrics["start_epoch"] == 4
    assert [h["start_epoch"] for h in history] == [0] * 6
    for key, tensor in straight["model"].items():
        assert torch.equal(tensor, resumed["model"][key]), key


@pytest.mark.slow  # starts Ray and trains
def test_a_diverged_run_is_scored_as_a_coin_toss_and_stops_without_retries(side_by_side):
    _, state = side_by_side["diverged"]
    history = state["history"]
    assert [h["epoch"] for h in history] == [1, 2] and [h["diverged"] for h in history] == [False, True]
    assert history[1]["val_non_finite"] == history[1]["val_n"] > 0 and history[1]["val_auc"] == 0.5 and history[1]["start_epoch"] == 0  # no retry


@pytest.mark.slow  # starts Ray and trains
def test_cross_validation_folds_are_patient_groups_and_each_trains_showing_its_epochs_and_is_kept(ray_session, synthetic_root, tmp_path, capsys):
    from cxr_tune.errors import UserError
    from cxr_tune.train.crossval import cross_validate, fold_roles

    split = split_data(DataOptions(data=str(synthetic_root)), progress=False)
    folds = fold_roles(split, 3)
    pool = split.roles["role"].isin(["train", "val"])
    seen = pd.concat([f.loc[f["role"] == "val", "path"] for f in folds])
    assert sorted(seen) == sorted(split.roles.loc[pool, "path"])  # every training-folder image validates once
    for fold in folds:
        assert not set(fold.loc[fold["role"] == "train", "group_id"]) & set(fold.loc[fold["role"] == "val", "group_id"])
        assert fold.loc[~pool, "role"].equals(split.roles.loc[~pool, "role"])  # test and excluded rows untouched
    hp = HParams(image_size=SIZE, depth=2, filters=4, epochs=1)
    warned: list[logging.LogRecord] = []  # what Tune logs as it reads the folds' trials
    reader_log = logging.getLogger("ray.tune.analysis.experiment_analysis")
    catch = logging.Handler()
    catch.emit = warned.append
    reader_log.addHandler(catch)
    started = time.monotonic()
    try:
        result = cross_validate(hp, split, 2, resources=Resources(1, 0.9), storage_path=str(tmp_path), name="cv")
    finally:
        reader_log.removeHandler(catch)
    took = time.monotonic() - started
    # No fold writes a result.json (its row is folds/fold<i>.json): Tune's warning about that, one per fold in train.log before, is left out.
    assert not [r for r in warned if r.getMessage().startswith("Failed to fetch metrics")], [r.getMessage() for r in warned]
    assert list(result["fold"]) == [1, 2] and result["best_val_auc"].between(0, 1).all()
    # The session's 2 CPUs hold both folds at 0.9 CPU each: they ran side by side, not one after the other.
    assert took < 0.8 * result["seconds"].sum(), (took, result["seconds"].tolist())
    # Each fold's epoch reached the console as it ended (Ray Train's controller, an actor, hands it to the driver).
    shown = capsys.readouterr().out
    for fold in (1, 2):
        assert re.search(rf"^\[\d\d:\d\d\] fold {fold}/2 epoch 1/1: carved validation \(selection set\) AUC \d\.\d{{4}}, sens \d\.\d{{3}}, spec \d\.\d{{3}}(, (about \d+ min|under a minute) left)?$", shown, re.M), shown
    # The same call again keeps the finished folds: the same rows, nothing trained.
    again = cross_validate(hp, split, 2, resources=Resources(1, 0.9), storage_path=str(tmp_path), name="cv")
    pd.testing.assert_frame_equal(again, result)
    assert " epoch " not in capsys.readouterr().out
    # Other settings under the same name are refused, naming the file and what differs.
    with pytest.raises(UserError, match=r"cv/folds/plan\.json: .*other settings \(epochs=1 there, 2 here\)"):
        cross_validate(HParams(image_size=SIZE, depth=2, filters=4, epochs=2), split, 2, resources=Resources(1, 0.9), storage_path=str(tmp_path), name="cv")


def test_a_cluster_holds_as_many_runs_side_by_side_as_its_scarcest_resource_allows():
    assert Resources(1, 0.9).runs_at_once({"CPU": 2.0}) == 2
    assert Resources(2, 1.0).runs_at_once({"CPU": 7.0}) == 3
    assert Resources(1, 0.1).runs_at_once({"CPU": 1.0}) == 10  # no float floor division surprise (1.0 // 0.1 == 9)
    assert Resources(1, 4.0, 0.25).runs_at_once({"CPU": 64.0, "GPU": 2.0}) == 8  # the GPUs, not the CPUs, decide
    assert Resources(1, 4.0).runs_at_once({"CPU": 2.0}) == 1  # a run bigger than the cluster still runs (it waits)


class _FirstStep(Exception):
    """Stops the loop at its first training step, once it has handed the step what it computed."""


def test_the_loop_hands_the_loss_the_normal_to_pneumonia_ratio_as_pneumonia_s_weight(monkeypatch, request):
    """1 NORMAL and 3 PNEUMONIA: balanced weighting weighs each PNEUMONIA image 1/3 in the loss, so
    each class weighs the same in all; the loop's own Ray Train calls are stood in for (no Ray)."""
    import ray.train
    import ray.train.torch

    from cxr_tune.train import loop

    handed = {}

    def first_step(model, batches, hp, optimizer, scheduler, pos_weight, *args, **kwargs):
        handed["pos_weight"] = float(pos_weight)
        raise _FirstStep

    no_batches = SimpleNamespace(iter_torch_batches=lambda **kwargs: iter(()), iter_batches=lambda **kwargs: iter(()))
    monkeypatch.setattr(ray.train, "get_context", lambda: SimpleNamespace(get_world_rank=lambda: 0, get_world_size=lambda: 1))
    monkeypatch.setattr(ray.train, "get_dataset_shard", lambda role: no_batches)
    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: None)
    monkeypatch.setattr(ray.train.torch, "get_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(ray.train.torch, "prepare_model", lambda net: net)
    monkeypatch.setattr(loop, "train_one_epoch", first_step)
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # the loop's one thread per CPU is for a worker, not this process
    root = logging.getLogger()
    request.addfinalizer(lambda level=root.level: root.setLevel(level))  # the loop quiets a worker's root logger
    hp = HParams(image_size=SIZE, depth=2, filters=4, epochs=1, class_weighting="balanced")
    before = rng_states()
    with global_rngs_kept(), pytest.raises(_FirstStep):
        loop.train_loop_per_worker({"hparams": hp.to_dict(), "class_counts": [1, 3], "deciding_set": "carved"})
    assert handed["pos_weight"] == pytest.approx(1 / 3)
    assert rng_states() == before  # the loop reseeds a worker's generators, here this process's: later tests draw as they would alone


@contextlib.contextmanager
def global_rngs_kept() -> Iterator[None]:
    """random's, numpy's and torch's global generators as they were before the block (the loop's seed_everything, run in
    this process rather than a Ray worker, would reseed them for the rest of the session)."""
    import random

    kept = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        try:
            yield
        finally:
            random.setstate(kept[0])
            np.random.set_state(kept[1])


def rng_states() -> tuple:
    """random's, numpy's and torch's global generator states, comparable with ``==``."""
    import random

    kind, keys, *rest = np.random.get_state()
    return random.getstate(), (kind, keys.tobytes(), *rest), torch.random.get_rng_state().numpy().tobytes()
