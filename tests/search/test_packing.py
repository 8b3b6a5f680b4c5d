"""Packed GPU trials, on CPU: the default share per trial follows the space, and Ray places that many
trials on one GPU at once (a local Ray that declares GPUs; the trainable never touches CUDA)."""

from __future__ import annotations

import time

import pytest
import yaml

from cxr_tune.errors import UserError
from cxr_tune.search.options import SearchOptions
from cxr_tune.search.runner import plan_search
from cxr_tune.search.space import load_space
from tests.conftest import ROOT


def space_at(tmp_path, image_size: int, arch: str = "cnn"):
    """The smoke space with another image size (and architecture)."""
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    raw["fixed"] = {**raw["fixed"], "image_size": image_size, "arch": arch}
    if arch != "cnn":
        raw["params"] = {k: v for k, v in raw["params"].items() if k not in ("depth", "filters")}
    path = tmp_path / f"packed{image_size}{arch}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return load_space(str(path))


def test_the_default_share_packs_small_trials_and_gives_big_ones_more(tmp_path):
    one_gpu = {"CPU": 16, "GPU": 1}
    shares = {(size, arch): plan_search(SearchOptions(trials=16), space_at(tmp_path, size, arch), one_gpu).resources.gpus_per_worker
              for size, arch in ((64, "cnn"), (128, "cnn"), (224, "cnn"), (224, "resnet18"), (384, "resnet18"))}
    assert shares == {(64, "cnn"): 0.25, (128, "cnn"): 0.25, (224, "cnn"): 0.25, (224, "resnet18"): 0.5, (384, "resnet18"): 1.0}
    plan = plan_search(SearchOptions(trials=16), space_at(tmp_path, 224), one_gpu)
    assert plan.concurrency == 4 and plan.resources.cpus_per_worker >= 3.9  # a 1-GPU machine runs 4 at once, CPUs shared among them
    assert plan_search(SearchOptions(trials=16, gpus_per_worker=0.5), space_at(tmp_path, 64), {"CPU": 16, "GPU": 2}).concurrency == 4
    ddp = plan_search(SearchOptions(trials=16, workers_per_trial=2), space_at(tmp_path, 64), {"CPU": 16, "GPU": 4})
    assert ddp.resources.gpus_per_worker == 1.0 and ddp.concurrency == 2  # the ranks of one DDP trial never share a GPU
    with pytest.raises(UserError, match="cannot share a GPU"):
        plan_search(SearchOptions(trials=16, workers_per_trial=2, gpus_per_worker=0.5), space_at(tmp_path, 64), {"CPU": 16, "GPU": 4})
    cpu_only = plan_search(SearchOptions(trials=16), space_at(tmp_path, 64), {"CPU": 2})
    assert not cpu_only.resources.use_gpu and cpu_only.concurrency == 2  # no flag needed without GPUs


def test_as_many_trials_run_at_once_as_the_shares_fit(tmp_path):
    space = space_at(tmp_path, 64)
    for share, fits in ((0.2, 5), (0.1, 10), (0.25, 4)):  # 1 // 0.2 is 4.0 in floating point; five fit
        assert plan_search(SearchOptions(trials=16, gpus_per_worker=share), space, {"CPU": 16, "GPU": 1}).concurrency == fits
    # 2 CPUs a worker on 8: three trials with their drivers' hundredths, not the eight the default would start
    assert plan_search(SearchOptions(trials=16, cpus_per_worker=2.0), space, {"CPU": 8}).concurrency == 3
    assert plan_search(SearchOptions(trials=16, cpus_per_worker=0.5), space, {"CPU": 8}).concurrency == 8


@pytest.mark.slow
@pytest.mark.own_ray
def test_ray_runs_four_packed_trials_at_once_on_one_declared_gpu(shared_ray, tmp_path):
    """Five trials at 224 px on a local Ray that declares 1 GPU (and 4 CPUs), each holding what a search
    trial holds (its driver's sliver of a CPU and its worker's bundle): 4 run at a time (the fifth waits) and
    together hold the GPU."""
    import ray
    from ray import tune

    from cxr_tune.ray_session import ray_session

    plan = plan_search(SearchOptions(trials=5), space_at(tmp_path, 224), {"CPU": 4, "GPU": 1})
    assert plan.resources.gpus_per_worker == 0.25 and plan.concurrency == 4

    arrived = tmp_path / "arrived"
    arrived.mkdir()

    def trial(config: dict) -> None:
        # Each waits until four have started (a fixed sleep let a loaded machine start the fourth after the first ended:
        # 3 at once, seen in a suite run at load 14); if Ray ran fewer at once, they wait out the deadline and the test fails.
        started = time.time()
        (arrived / str(config["i"])).touch()
        while len(list(arrived.iterdir())) < plan.concurrency and time.time() < started + 120:
            time.sleep(0.1)
        free = ray.available_resources().get("GPU", 0.0)  # what the trials running now leave of the one GPU
        time.sleep(0.5)
        tune.report({"started": started, "ended": time.time(), "free_gpu": free})

    shared_ray.release()  # a Ray of its own, with the declared GPU
    with ray_session(num_cpus=4, num_gpus=1):
        grid = tune.Tuner(
            tune.with_resources(trial, tune.PlacementGroupFactory(plan.trial_bundles())),
            param_space={"i": tune.grid_search(list(range(plan.trials)))},
            tune_config=tune.TuneConfig(max_concurrent_trials=plan.concurrency),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "runs"), name="packed", verbose=0),
        ).fit()
        results = [r.metrics for r in grid]
    assert len(results) == 5 and min(r["free_gpu"] for r in results) == 0.0  # four quarters: the whole GPU held
    events = sorted([(r["started"], 1) for r in results] + [(r["ended"], -1) for r in results])
    running, most = 0, 0
    for _, step in events:
        running += step
        most = max(most, running)
    assert most == 4
