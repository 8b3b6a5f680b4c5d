"""The paired AUC difference the benchmarks report: sklearn's AUC on the same class-stratified resamples."""

from __future__ import annotations

import json
import os
import platform

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cxr_tune.bench.common import paired_auc_difference


def test_the_paired_interval_is_the_spread_of_per_resample_auc_differences_ties_included():
    rng = np.random.default_rng(3)
    labels = (rng.random(80) < 0.6).astype(int)
    scores, reference = np.round(rng.random(80) + 0.5 * labels, 1), np.round(rng.random(80) + 0.3 * labels, 1)  # many ties
    difference, (low, high) = paired_auc_difference(labels, scores, reference, resamples=200)

    draw = np.random.default_rng(0)  # the documented draws: within each class, positives then negatives, seed 0
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    diffs = []
    for _ in range(200):
        pick = np.r_[draw.choice(positives, len(positives)), draw.choice(negatives, len(negatives))]
        diffs.append(roc_auc_score(labels[pick], scores[pick]) - roc_auc_score(labels[pick], reference[pick]))
    assert difference == roc_auc_score(labels, scores) - roc_auc_score(labels, reference)
    np.testing.assert_allclose([low, high], np.percentile(diffs, [2.5, 97.5]), atol=1e-12)
    assert paired_auc_difference(labels, scores, scores, resamples=50) == (0.0, None)  # the same scores: every resample gives 0, no interval


def synthetic_experiment(folder):
    """A searched experiment's record on SYNTHETIC data (only experiment.json: the refusal comes before anything else is read)."""
    import json

    from tests.conftest import ROOT
    from tests.exports import write_export

    info = json.loads((ROOT / "results/real/carved/experiment.json").read_text())
    info.update(data_description="SYNTHETIC chest X-rays (generated, not real patients) at /d/syn", synthetic=True, data_root=None)
    write_export(folder / "best", hparams={"lr": 0.001, "epochs": 9})  # ablation reads the selected configuration first
    (folder / "experiment.json").write_text(json.dumps(info))
    return folder


def test_a_run_on_other_data_than_the_committed_results_needs_out_before_any_measuring(tmp_path):
    """Before: ``bench train --data SMALL --sizes 32 --images 64`` (and scoring, search, ...) replaced the committed
    real-data results in results/benchmarks that the README cites."""
    from tests.conftest import call_cli

    data, experiment = str(tmp_path / "syn"), str(synthetic_experiment(tmp_path / "exp"))
    for args in (["data", "--data", data], ["train", "--data", data, "--sizes", "32", "--images", "64"], ["scoring", "--data", data],
                 ["search", "--data", data, "--trials", "2"], ["precision", "--data", data],
                 ["ablation", experiment], ["transfer", experiment]):  # value and epochs ask after their --model checks
        done = call_cli("cxr_tune.bench", *args)
        assert done.returncode == 2 and f"bench {args[0]}: pass --out FOLDER for " in done.stderr, (args, done.stderr[-2000:])
        assert "holds the committed results of the default real data" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "syn").exists()
    from cxr_tune.bench.common import other_experiment_data
    from cxr_tune.experiment import Experiment

    assert other_experiment_data(Experiment(experiment)) == f"'{experiment}' (searched on SYNTHETIC chest X-rays (generated, not real patients) at /d/syn)"


def test_out_is_where_a_result_goes_and_the_default_is_for_the_default_real_data_only(tmp_path):
    from cxr_tune.bench.common import DEFAULT_DATA, RESULTS, results_folder
    from cxr_tune.errors import UserError

    assert results_folder("train", str(tmp_path), "the data '/d/syn'") == tmp_path
    assert results_folder("train", None, None) == RESULTS
    with pytest.raises(UserError, match="bench train: pass --out FOLDER for the data '/d/syn'"):
        results_folder("train", None, "the data '/d/syn'")
    from cxr_tune.bench.common import other_data

    assert other_data(None) is None and other_data(str(DEFAULT_DATA)) is None and other_data("/d/syn") == "the data '/d/syn'"


def test_a_benchmark_asking_more_training_images_than_there_are_times_them_all():
    """Before: ``bench train`` with its default ``--images 1024`` on a set of fewer training images stopped on pandas'
    "Cannot take a larger sample than population" traceback."""
    import pandas as pd

    from cxr_tune.bench.common import sample_training

    roles = pd.DataFrame({"content_hash": ["a", "a", "b", "c", "d", "v"], "role": ["train"] * 5 + ["val"]})
    assert sample_training(roles, 1024)["role"].tolist() == roles["role"].tolist()
    assert sample_training(roles, 0)["role"].tolist() == roles["role"].tolist()
    two = sample_training(roles, 2)
    assert two.loc[two["role"] == "train", "content_hash"].nunique() == 2 and (two["role"] == "unused").sum() in (2, 3)
    assert two["role"].iloc[-1] == "val" and roles["role"].tolist() == ["train"] * 5 + ["val"]  # the caller's table is not changed


def test_a_result_names_the_cpu_model_it_ran_on(tmp_path, monkeypatch):
    """Before: every result's .md said only "on 2 CPU(s), no GPU" and its JSON's ``cpu`` was "x86_64"
    (``platform.processor()`` is empty on Linux)."""
    from cxr_tune.bench import common

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu\n\n"
                       "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    monkeypatch.setattr(common, "CPUINFO", cpuinfo, raising=False)
    common.write_result("demo", "Demo", ["body"], {}, tmp_path)
    assert json.loads((tmp_path / "demo.json").read_text())["machine"]["cpu"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert f"on {os.cpu_count()} CPU(s) (Intel(R) Xeon(R) Platinum 8480+), " in (tmp_path / "demo.md").read_text()
    monkeypatch.setattr(common, "CPUINFO", tmp_path / "none", raising=False)  # no /proc/cpuinfo (macOS, Windows): what platform says
    assert common.machine()["cpu"] == (platform.processor() or platform.machine())


def test_a_result_names_the_commit_and_libraries_that_measured_it(tmp_path):
    """Before: a benchmark's JSON named the machine and the command but not the code, so a number could not be tied to a commit."""
    from cxr_tune.bench import common
    from cxr_tune.provenance import provenance

    common.write_result("demo", "Demo", ["body"], {}, tmp_path)
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["provenance"] == provenance() and record["provenance"]["versions"]["torch"]
