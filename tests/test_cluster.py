"""Beyond one machine: cluster.yaml, a multi-node cluster, a node dying, the driver being killed.

The multi-node tests start a real Ray cluster of separate node processes on this machine (a head
without CPUs and worker nodes with one CPU each) and run the real search CLI against it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, run_cli
from cxr_tune.bench.local_cluster import LocalCluster, start_cluster

CLUSTER_YAML = ROOT / "cluster.yaml"


def _validate(config: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_is_valid_for_the_ray_cluster_launcher():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    _validate(config)
    assert config["provider"]["type"] == "aws"
    assert config["available_node_types"]["gpu_worker"]["min_workers"] == 0
    assert config["available_node_types"]["gpu_worker"]["resources"]["GPU"] == 1
    ssh_rules = config["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in ssh_rules] == [(22, 22)]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in ssh_rules for ip in r["IpRanges"])
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start
    assert any("pip install -e" in c for c in config["setup_commands"])


@pytest.mark.parametrize("break_it", [
    lambda c: c["available_node_types"]["gpu_worker"].update(min_workers="none"),
    lambda c: c.pop("provider"),
    lambda c: c.update(head_node_type="no_such_type"),
    lambda c: c["provider"]["security_group"].update(Ports=[22]),
])
def test_a_broken_cluster_yaml_is_rejected(break_it):
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    break_it(config)
    with pytest.raises(Exception):  # noqa: B017 - jsonschema or Ray's own checks, either is a rejection
        _validate(config)


def _cluster() -> LocalCluster:
    # A short folder: Ray's Unix socket paths inside it must stay under 108 bytes.
    folder = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    started = start_cluster(folder, workers=2, cpus=1, head_cpus=0)
    try:
        yield started
    finally:
        started.stop()
        shutil.rmtree(folder, ignore_errors=True)


# Each test gets a cluster of its own: a fault a test injects (a dead node, a killed driver) must
# not leave state behind for the next one, and a healthy test must not hide what the fault left.
cluster = pytest.fixture(_cluster)


def results_of(experiment: Path) -> dict[str, list[dict]]:
    """Every reported result of every trial, from Tune's result.json files."""
    out = {}
    for path in experiment.glob("*/result.json"):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        out[path.parent.name] = rows
    return out


def search_args(synthetic_root, storage: Path, name: str, cluster: LocalCluster, *extra: str) -> list[str]:
    return ["--space", "smoke", "--data", str(synthetic_root), "--storage", str(storage), "--name", name,
            "--address", cluster.address, "--workers-per-trial", "2", "--cpus-per-worker", "0.9", "--concurrency", "1", *extra]


def test_trial_workers_run_on_different_nodes_and_each_reads_a_shard(cluster, synthetic_root, tmp_path):
    done = run_cli("cxr_tune.search", *search_args(synthetic_root, tmp_path, "multi", cluster, "--trials", "1", "--no-export"), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = results_of(tmp_path / "multi")
    assert len(results) == 1
    for rows in results.values():
        for row in rows:
            nodes = row["worker_nodes"].split(",")
            shards = [int(n) for n in row["worker_images"].split(",")]
            assert len(nodes) == 2 and len(set(nodes)) == 2  # rank 0 and rank 1 on different nodes
            assert all(n > 0 for n in shards)  # each worker trained on its own share of the data


def test_a_trial_survives_losing_a_node_and_resumes_from_its_checkpoint(cluster, synthetic_root, tmp_path):
    args = search_args(synthetic_root, tmp_path, "fault", cluster, "--trials", "1", "--max-epochs", "5", "--no-export")
    search = subprocess.Popen([sys.executable, "-m", "cxr_tune.search", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    seen = []
    for line in search.stdout:
        seen.append(line)
        if " epoch 2/5 " in line:
            break
    victim = cluster.nodes[1]  # a worker node: with a CPU-less head, every trial worker is on one
    cluster.kill_node(victim)
    cluster.add_worker(1)  # the replacement an autoscaler would launch
    rest = search.communicate(timeout=900)[0]
    assert search.returncode == 0, "".join(seen)[-2000:] + rest[-3000:]
    table = pd.read_csv(tmp_path / "fault" / "trials.csv")
    assert len(table) == 1 and set(table["status"]) == {"TERMINATED"}
    first = next(iter(results_of(tmp_path / "fault").values()))
    epochs = [row["epoch"] for row in first]
    assert epochs[-1] == 5
    assert any(row["start_epoch"] > 0 for row in first), epochs  # it resumed from a checkpoint, not from scratch
    assert max(epochs) == len(set(epochs))  # no epoch lost


def test_a_killed_driver_resumes_with_every_trial_exactly_once(cluster, synthetic_root, tmp_path):
    args = search_args(synthetic_root, tmp_path, "killed", cluster, "--trials", "2", "--no-export")
    search = subprocess.Popen([sys.executable, "-m", "cxr_tune.search", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    first_done = None
    for line in search.stdout:
        if "(1/2 done)" in line:
            first_done = line.split(" trial ")[1].split()[0]
            break
    assert first_done, "no trial finished"
    time.sleep(12)  # Tune snapshots the experiment every few seconds; the kill comes after one
    search.send_signal(signal.SIGKILL)  # kill -9: no clean-up of any kind
    search.wait()
    before = results_of(tmp_path / "killed")[first_done]

    resumed = run_cli("cxr_tune.search", "--resume", "--name", "killed", "--storage", str(tmp_path), "--no-export", timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    table = pd.read_csv(tmp_path / "killed" / "trials.csv")
    assert len(table) == 2 and table["trial_id"].is_unique and set(table["status"]) == {"TERMINATED"}
    after = table.set_index("trial_id").loc[first_done]
    assert after["epochs"] == before[-1]["epoch"]  # the trial finished before the kill was not run again
    assert after["objective"] == max(row["objective"] for row in before)
    assert results_of(tmp_path / "killed")[first_done] == before
