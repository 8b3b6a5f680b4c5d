"""Beyond one machine: cluster.yaml, a multi-node cluster, a node dying.

The multi-node test starts a real Ray cluster of separate node processes on this machine (a head
without CPUs and worker nodes with one CPU each) and runs the real search CLI against it: a
trial's two workers on two nodes, one node lost mid-run. (A killed driver and ``--resume`` are
tested on one machine in tests/search/test_resume.py.)
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import jsonschema
import pytest
import yaml

from tests.conftest import read_trials, ROOT
from cxr_tune.bench import local_cluster
from cxr_tune.bench.local_cluster import LocalCluster, Node, NodeStartError, PortTaken, node_processes, start_cluster
from cxr_tune.experiment import Experiment

CLUSTER_YAML = ROOT / "cluster.yaml"
DELETE = object()
T = TypeVar("T")


def _validate(config: dict) -> None:
    """Ray's schema on the file as written (``prepare_config`` crashes on a missing provider), then Ray's own checks."""
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(copy.deepcopy(config)))


def _edited(config: dict, path: tuple[str, ...], value: object) -> dict:
    """A copy with ``path`` set to ``value`` (or deleted); the path up to its last key must exist."""
    out = copy.deepcopy(config)
    parent = out
    for key in path[:-1]:
        assert isinstance(parent, dict) and key in parent, f"cluster.yaml has no {'.'.join(path[:-1])}"
        parent = parent[key]
    if value is DELETE:
        assert path[-1] in parent, f"cluster.yaml has no {'.'.join(path)}"
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


def test_cluster_yaml_is_valid_for_the_ray_cluster_launcher():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    _validate(config)
    assert config["provider"]["type"] == "aws"
    workers, head = config["available_node_types"]["gpu_worker"], config["available_node_types"]["head"]
    # The search plans its trials at once from the GPUs present when it starts: they are there from the start.
    assert workers["min_workers"] == workers["max_workers"] >= 1 and workers["resources"]["GPU"] == 1
    # No task on the head, so each trial's CPU share is counted from the CPUs beside its GPU; one image, set, everywhere.
    assert head["resources"] == {"CPU": 0} and "--num-cpus=0" in " ".join(config["head_start_ray_commands"])
    assert head["node_config"]["ImageId"] == workers["node_config"]["ImageId"]
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start and "RAY_AUTH_MODE=token" in start
    assert any("pip install -e" in c for c in config["setup_commands"])


def test_the_on_premises_example_parses_and_its_head_holds_no_cpus_as_on_aws():
    """Before: its head offered its CPUs, the search divided them into each trial's share, and trials asked for more CPUs
    than a GPU node has (half of them placed, the others timing out)."""
    config = _on_premises_example()
    assert config["provider"]["type"] == "local" and config["cluster_name"] == "cxr-tune-onprem"
    assert "--num-cpus=0" in config["head_start_ray_commands"][-1] and "--head" in config["head_start_ray_commands"][-1]


def _on_premises_example() -> dict:
    """The commented `local` provider example at the end of cluster.yaml, parsed."""
    text = CLUSTER_YAML.read_text().split("# --- On premises")[1].split("\n#\n", 1)[1].split("\n#\n", 1)[0]
    return yaml.safe_load("\n".join(line.removeprefix("# ") if line.startswith("# ") else "" for line in text.splitlines()))


def test_the_on_premises_example_copies_the_checkout_without_what_the_aws_one_leaves_out():
    """Before: it had no rsync_exclude, so `ray up` copied the ~6 GB .venv, .git and results/ to every node."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _on_premises_example()
    assert config.get("rsync_exclude") == yaml.safe_load(CLUSTER_YAML.read_text())["rsync_exclude"]
    validate_config(prepare_config(config))  # as `ray up` reads it (the local provider folds min_workers into its node type)


def _cluster_section() -> str:
    """README's "Object storage and clusters" section, where the cluster's steps are."""
    return (ROOT / "README.md").read_text().split("## Object storage and clusters")[1].split("\n## ")[0]


def test_the_heads_instance_profile_is_asked_for_what_launching_the_workers_needs():
    """Ray uses a profile the head's node_config names as it is (its own role, with EC2 access, only goes to a head that
    names none), so a head with the S3-only profile the comment asked for could not launch a worker. Before: both node
    types named one profile, "read/write on YOUR-BUCKET", and README step 1 asked for nothing else."""
    from ray.autoscaler._private.aws.config import _configure_iam_role
    from ray.autoscaler._private.util import prepare_config

    text = CLUSTER_YAML.read_text()
    config = yaml.safe_load(text)
    head = config["available_node_types"]["head"]["node_config"]["IamInstanceProfile"]
    booted = _configure_iam_role(prepare_config(copy.deepcopy(config)))  # returns before any AWS call: the profile is named
    assert booted["available_node_types"]["head"]["node_config"]["IamInstanceProfile"] == head
    assert "IamInstanceProfile" not in booted.get("head_node", {})  # Ray adds no role of its own
    head_block = text.split("\n  head:\n")[1].split("\n  gpu_worker:\n")[0]
    step_1 = _cluster_section().split("\n1. ")[1].split("\n2. ")[0]
    # What the autoscaler on the head calls (ray/autoscaler/_private/aws/node_provider.py), and passing the workers' role.
    for action in ("ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags", "ec2:Describe*", "iam:PassRole"):
        assert action in head_block and action in step_1, action
    worker = config["available_node_types"]["gpu_worker"]["node_config"]["IamInstanceProfile"]
    assert worker != head  # the workers need the bucket only


def _cluster_yaml_header() -> str:
    """cluster.yaml's opening comment: the commands that bring the cluster up, run the search and take it down."""
    return CLUSTER_YAML.read_text().split("\ncluster_name:")[0]


def test_the_documented_client_commands_send_the_clusters_token():
    """cluster.yaml turns token authentication on, and a client sends its token (~/.ray/auth_token) only with
    RAY_AUTH_MODE=token. Before: `ray exec cluster.yaml '~/venv/bin/ray status'` and `ray job submit` / `logs` from the
    laptop, as written, ended in AuthenticationError ("Missing authentication token")."""
    for name, text in (("cluster.yaml", _cluster_yaml_header()), ("README.md", _cluster_section())):
        status = [line for line in text.splitlines() if "ray exec" in line and "ray status" in line]
        assert status and all("'RAY_AUTH_MODE=token ~/venv/bin/ray status'" in line for line in status), (name, status)
        assert "ray job submit" in text and "export RAY_AUTH_MODE=token" in text.split("ray job ")[0], name
        assert "~/.ray/auth_token" in text, name  # where the client's token is, the one copied to the nodes


def test_the_cluster_docs_keep_results_on_object_storage_not_the_heads_disk():
    """On a real cluster the workers write the checkpoints and the image cache, so a local --storage on the head fails
    every trial (Ray Train: "A local path on the head node is not accessible by worker nodes"), and with S3 storage the
    head's disk holds nothing to fetch. Before: cluster.yaml suggested `ray rsync-down ... ~/cxr_tune/results/`, and
    README's last step, `ray down`, did not say that it takes whatever is on the nodes' disks with it."""
    header, section = _cluster_yaml_header(), _cluster_section()
    assert "rsync-down" not in header and "rsync-down" not in section
    assert "aws s3 sync s3://YOUR-BUCKET/cxr_tune/experiments/real-gpu/best ./best" in header
    step_5 = section.split("\n5. ")[1].split("\n\n")[0]
    assert "ray down cluster.yaml" in step_5 and "object storage" in step_5 and "lost" in step_5


def test_the_search_on_the_cluster_runs_the_nodes_venv_python():
    """A job's `bash -lc` is a login shell, which may set PATH afresh: bare `python` was "command not found" there."""
    import re

    job = _cluster_section().split("```bash")[1].split("```")[0]
    for name, text in (("cluster.yaml", CLUSTER_YAML.read_text()), ("README.md", job)):
        runs = re.findall(r"(\S+) -m cxr_tune\.search", text)
        assert runs and set(runs) == {"~/venv/bin/python"}, (name, runs)


def test_the_cluster_steps_say_which_ray_runs_them_and_from_where():
    """The laptop's `ray` (launcher and job client) must be the nodes' pinned version, and `ray up` copies `.`, the folder it
    runs in (cluster.yaml's file_mounts). Before: README said neither."""
    import re

    pinned = re.search(r'"ray\[[^\]]*\]==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    section = _cluster_section()
    assert f"Ray {pinned}" in section and "from the repository root" in section
    assert yaml.safe_load(CLUSTER_YAML.read_text())["file_mounts"]["/home/ubuntu/cxr_tune"] == "."


@pytest.mark.parametrize(("path", "value", "rejection", "message"), [
    (("available_node_types", "gpu_worker", "min_workers"), "none", jsonschema.ValidationError, "'none' is not of type 'integer'"),
    (("provider",), DELETE, jsonschema.ValidationError, "'provider' is a required property"),
    (("head_node_type",), "no_such_type", ValueError, "`head_node_type` must be one of `available_node_types`."),
    (("provider", "security_group"), {"GroupName": "x", "Ports": [22]}, jsonschema.ValidationError,
     "Additional properties are not allowed ('Ports' was unexpected)"),
], ids=["min-workers-not-a-number", "no-provider", "unknown-head-type", "unknown-security-group-key"])
def test_a_broken_cluster_yaml_is_rejected(path, value, rejection, message):
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    broken = _edited(config, path, value)
    _validate(config)  # the edit, not something else, is what gets rejected
    with pytest.raises(rejection) as caught:
        _validate(broken)
    assert str(caught.value).splitlines()[0] == message
    if isinstance(caught.value, jsonschema.ValidationError):
        assert tuple(caught.value.absolute_path) in {path, path[:-1]}


def test_ray_up_opens_ssh_only_to_the_range_in_the_security_group_the_comment_makes(tmp_path, monkeypatch):
    """What ``ray up`` sets up on AWS before it launches a node (its provider's bootstrap: key pair, subnets, security
    groups), against moto's EC2 in this process, after making the group as cluster.yaml's comment says. Before: Ray
    made the group itself, and a group Ray makes always gets SSH from 0.0.0.0/0 besides the rules provider.security_group lists."""
    import re

    import boto3
    from moto import mock_aws
    from ray.autoscaler._private.aws.config import bootstrap_aws
    from ray.autoscaler._private.util import prepare_config

    text = CLUSTER_YAML.read_text()
    cidr = re.search(r"--cidr (\S+)", text).group(1)
    for key in [k for k in os.environ if k.startswith("AWS_")]:  # the s3 tests' endpoint would take EC2 calls there
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("HOME", str(tmp_path))  # Ray writes the cluster's SSH key to ~/.ssh
    monkeypatch.setenv("MOTO_EC2_LOAD_DEFAULT_AMIS", "false")  # seconds saved: cluster.yaml names its image
    config = yaml.safe_load(text)
    with mock_aws():
        ec2 = boto3.client("ec2", region_name=config["provider"]["region"])
        group = ec2.create_security_group(GroupName="cxr-tune-cluster", Description="cxr_tune Ray cluster")["GroupId"]
        ec2.authorize_security_group_ingress(GroupId=group, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp=cidr)
        ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{"IpProtocol": "-1", "UserIdGroupPairs": [{"GroupId": group}]}])
        for node_type in config["available_node_types"].values():  # the CHANGE lines, filled in
            if "SecurityGroupIds" in node_type["node_config"]:
                node_type["node_config"]["SecurityGroupIds"] = [group]
        booted = bootstrap_aws(prepare_config(config))  # what ray up's _bootstrap_config runs, less filling in instance types' CPUs
        used = {g for node_type in booted["available_node_types"].values() for g in node_type["node_config"]["SecurityGroupIds"]}
        rules = [r for g in ec2.describe_security_groups(GroupIds=sorted(used))["SecurityGroups"] for r in g["IpPermissions"]]
    open_to = [(r.get("FromPort"), ip["CidrIp"]) for r in rules for ip in r["IpRanges"]]
    assert open_to == [(22, cidr)], open_to  # before: [(22, '0.0.0.0/0'), (22, cidr)]
    assert used == {group} and any(pair["GroupId"] == group for r in rules for pair in r["UserIdGroupPairs"])


def _fake_node(cluster: LocalCluster, label: str, logs: dict[str, str], script: str) -> Node:
    """A node that is a shell ``script`` with Ray-style log files already in its folder."""
    node = cluster.spawn(label, ["sh", "-c", script])
    (node.folder / "session_latest" / "logs").mkdir(parents=True, exist_ok=True)
    for name, text in logs.items():
        (node.folder / "session_latest" / "logs" / name).write_text(text)
    return node


RAYLET_PORT_TAKEN = ("[2026-01-01 00:00:00,000 C 1 1] (raylet) grpc_server.cc:134: Check failed: server_ Failed to start "
                     "the grpc server. The specified port is 50853. This means that Ray's core components will not be able "
                     "to function correctly.\n*** StackTrace Information ***\n")


def test_a_node_whose_port_was_taken_is_started_again_and_the_cause_is_kept(tmp_path):
    cluster = LocalCluster(tmp_path, start_timeout=30)
    launches = []

    def launch(label: str) -> Node:
        launches.append(label)
        if len(launches) == 1:
            return _fake_node(cluster, label, {"raylet.out": RAYLET_PORT_TAKEN}, "exit 1")
        return _fake_node(cluster, label, {}, "echo 'Ray runtime started.'; exec sleep 300")

    try:
        node = cluster.start_node("worker1", launch)
        assert launches == ["worker1", "worker1-try2"] and cluster.nodes == [node]
        assert len(cluster.restarted) == 1
        quoted = "raylet.out: Check failed: server_ Failed to start the grpc server. The specified port is 50853."
        assert quoted in cluster.restarted[0]
    finally:
        cluster.stop()


def test_a_node_that_fails_otherwise_is_not_retried_and_raises_with_its_own_error(tmp_path):
    cluster = LocalCluster(tmp_path, start_timeout=30)
    launches = []

    def launch(label: str) -> Node:
        launches.append(label)
        crash = "Traceback (most recent call last):\nRuntimeError: the plasma store is out of disk\n"
        return _fake_node(cluster, label, {"raylet.err": crash}, "echo 'Some Ray subprocesses exited unexpectedly:'; exit 3")

    with pytest.raises(NodeStartError, match="exited with code 3") as caught:
        cluster.start_node("worker1", launch)
    assert not isinstance(caught.value, PortTaken) and launches == ["worker1"] and cluster.nodes == []
    message = str(caught.value)
    assert "raylet.err: RuntimeError: the plasma store is out of disk" in message
    assert "worker1.log: Some Ray subprocesses exited unexpectedly:" in message


def _alive(pid: int) -> bool:
    stat = local_cluster._proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def test_stop_kills_what_the_nodes_started_even_after_it_left_their_group_and_nothing_else(tmp_path):
    cluster = LocalCluster(tmp_path, start_timeout=30)
    pid_file = tmp_path / "orphan.pid"
    # Like a Ray worker: a process group of its own, re-parented to init when its parent exits.
    orphan = f"import os, time; os.setpgid(0, 0); open('{pid_file}', 'w').write(str(os.getpid())); time.sleep(300)"
    script = f"('{sys.executable}' -c \"{orphan}\" &); echo 'Ray runtime started.'; exec sleep 300"
    # Not the harness's, though its command line names the temp folder (what `pkill -f` would match).
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(tmp_path)])
    try:
        node = cluster.start_node("worker1", lambda label: _fake_node(cluster, label, {}, script))
        deadline = time.monotonic() + 30
        while not pid_file.exists() or not pid_file.read_text():
            assert time.monotonic() < deadline, "the orphan did not start"
            time.sleep(0.1)
        orphan_pid = int(pid_file.read_text())
        assert os.getpgid(orphan_pid) != node.pid and orphan_pid in node_processes(node.pid)
        cluster.stop()
        assert not _alive(orphan_pid) and node.process.returncode == -signal.SIGKILL
        assert bystander.poll() is None
    finally:
        cluster.stop()
        bystander.kill()
        bystander.wait()


@pytest.mark.slow  # starts Ray
def test_a_head_whose_picked_ports_another_process_took_is_started_again_until_it_gets_free_ones(monkeypatch):
    """The GCS port taken in the first try, the Ray Client server's in the second: the third starts (one head start for
    both causes: each start costs seconds of both cores)."""
    folder = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))
    cluster = LocalCluster(folder)
    cluster.start_attempts = 4  # two tries lost on purpose, and a spare for a port some other program takes by chance
    holder = socket.socket()
    holder.bind(("", local_cluster.spare_port()))
    holder.listen()
    held = holder.getsockname()[1]
    picks = [held, local_cluster.spare_port(), local_cluster.spare_port(), held]  # (GCS, client) per try
    real_spare_port = local_cluster.spare_port
    monkeypatch.setattr(local_cluster, "spare_port", lambda: picks.pop(0) if picks else real_spare_port())
    started: set[int] = set()
    try:
        head = cluster.start_head(cpus=0)
        tries = int(head.name.removeprefix("head-try"))  # 3; 4 where some other program took one of the third try's ports
        assert tries in (3, 4) and held not in head.ports and cluster.port == head.ports[0]
        assert len(cluster.restarted) == tries - 1 and all(local_cluster.PORT_TAKEN.search(why) for why in cluster.restarted)
        assert all(str(held) in why for why in cluster.restarted[:2])
        cluster.wait_for_nodes(1)
        started = node_processes(head.pid)
        assert len(started) > 3  # GCS, raylet, dashboard, agents, ...
    finally:
        cluster.stop()
        holder.close()
        shutil.rmtree(folder, ignore_errors=True)
    assert not any(_alive(pid) for pid in started)


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


def search_args(synthetic_root, storage: Path, name: str, cluster: LocalCluster, *extra: str) -> list[str]:
    return ["--space", "smoke", "--data", str(synthetic_root), "--storage", str(storage), "--name", name,
            "--address", cluster.address, "--workers-per-trial", "2", "--cpus-per-worker", "0.9", "--concurrency", "1", *extra]


class Output:
    """A process's output, read in the background so its pipe never fills while a test waits."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(process.stdout), daemon=True)
        self._reader.start()

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, probe: Callable[[], T | None], what: str, timeout: float = 900) -> T:
        """``probe()``'s first answer other than None; fails once the process has ended without one."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.process.poll() is not None  # before the probe, so the probe sees all it left
            if (found := probe()) is not None:
                return found
            if ended:
                pytest.fail(f"the search ended before {what}:\n{self.text()[-4000:]}")
            assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s:\n{self.text()[-4000:]}"
            time.sleep(0.2)

    def finish(self, timeout: float = 900, explain: Callable[[], str] = str) -> int:
        """The exit code; fails with the output so far and ``explain()`` (and ends the process) if
        it runs past ``timeout``."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            context = explain()  # while the process still holds what it holds
            self.process.kill()
            self.process.wait()
            self._reader.join(timeout=60)
            pytest.fail(f"still running after {timeout:.0f} s:\n{self.text()[-5000:]}\n{context}")
        self._reader.join(timeout=60)
        return code


def _state_of(cluster: LocalCluster, experiment: Path) -> str:
    """For a failure message: what the cluster holds (free resources, live actors, placement groups)
    and the warnings in the search's log."""
    script = ("import ray; ray.init(address=%r, logging_level='ERROR'); from ray.util.state import list_actors; "
              "print('available:', ray.available_resources()); "
              "print('live actors:', [(a.class_name, a.state, a.job_id, a.node_id[:8]) for a in list_actors(filters=[('state', '!=', 'DEAD')])]); "
              "print('placement groups:', [(v['state'], v['bundles']) for v in ray.util.placement_group_table().values() if v['state'] != 'REMOVED'])")
    try:
        done = subprocess.run([sys.executable, "-c", script % cluster.address], capture_output=True, text=True, timeout=90)
        state = done.stdout + done.stderr[-2000:]
    except subprocess.TimeoutExpired:
        state = "(the cluster did not answer within 90 s)"
    log = experiment / "search.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    warnings = [line[:300] for line in lines if " WARNING " in line or " ERROR " in line]
    return f"cluster now:\n{state}\nlast warnings in {log}:\n" + "\n".join(warnings[-30:])


def _start_search(*args: str) -> Output:
    search = subprocess.Popen([sys.executable, "-m", "cxr_tune.search", *args], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
    return Output(search)


def _registered_checkpoint(experiment: Path) -> Path | None:
    """A Train run of the experiment whose controller has registered a checkpoint: what a restart resumes from.

    Train's checkpoint manager writes this snapshot as it registers each reported checkpoint.
    """
    for path in experiment.glob("train/*/checkpoint_manager_snapshot.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):  # caught while being written
            if json.loads(path.read_text())["checkpoint_results"]:
                return path.parent
    return None


@pytest.mark.slow  # starts a multi-node Ray cluster
def test_a_trial_spans_nodes_survives_losing_one_and_resumes_from_its_checkpoint(cluster, synthetic_root, tmp_path):
    search = _start_search(*search_args(synthetic_root, tmp_path, "fault", cluster, "--trials", "1", "--max-epochs", "6", "--no-export"))
    # Kill once Train has registered a checkpoint. Its controller takes one report per worker per poll
    # (every 2 s), so the 5 epochs left keep the run going for 10 s or more after this: the kill lands
    # mid-run. (Waiting for a later epoch's console line can land after training ended.)
    search.wait_for(lambda: _registered_checkpoint(tmp_path / "fault"), "Train registered a checkpoint", timeout=240)
    victim = cluster.nodes[1]  # a worker node: with a CPU-less head, every trial worker is on one
    cluster.kill_node(victim)
    cluster.add_worker(1)  # the replacement an autoscaler would launch
    assert search.finish(timeout=540, explain=lambda: _state_of(cluster, tmp_path / "fault")) == 0, search.text()[-5000:]
    table = read_trials(tmp_path / "fault")
    assert len(table) == 1 and set(table["status"]) == {"TERMINATED"}
    # Every epoch once, before and after the loss: an epoch whose report the lost node took with it
    # (its checkpoint registered, its report not yet at Tune) comes from the checkpoint's history.
    experiment = Experiment(str(tmp_path / "fault"))
    _, histories = experiment.histories()
    first = next(iter(histories.values())).to_dict("records")
    assert [row["epoch"] for row in first] == [1, 2, 3, 4, 5, 6], search.text()[-5000:]
    # It resumed from a checkpoint, not from scratch.
    assert any(row["start_epoch"] > 0 for row in first), search.text()[-5000:]
    n_train, n_val = (sum(experiment.info[f"class_counts_{role}"]) for role in ("train", "val"))
    for row in first:  # before and after the loss: rank 0 and rank 1 on different nodes, each on its own shard
        nodes = row["worker_nodes"].split(",")
        shards = [int(n) for n in row["worker_images"].split(",")]
        assert len(nodes) == 2 and len(set(nodes)) == 2, row["worker_nodes"]
        assert row["world_size"] == 2 and abs(shards[0] - shards[1]) <= 1 and sum(shards) >= n_train - 1, row["worker_images"]
        assert row["val_n"] == n_val  # every validation image scored once, not once per rank
