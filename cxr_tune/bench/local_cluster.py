"""A real multi-node Ray cluster on one machine: a head and worker nodes as separate processes.

Used by the multi-node tests and the scaling benchmark. Each node is ``ray start --block`` in
its own process group, temp folder and ports, so a test can kill exactly one node (as if its
machine died) and stop everything by PID afterwards; ``ray stop`` would kill every Ray process on
the host, including other sessions.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_ports() -> list[str]:
    """Explicit ports for everything a node binds, so two nodes on one host never collide."""
    # Worker ports from 10100-29999: below Linux's ephemeral range (32768+), where free_port()'s
    # picks come from, so a node's own ports never land inside its worker range.
    worker_low = 10100 + (free_port() % 199) * 100
    return [
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--min-worker-port={worker_low}",
        f"--max-worker-port={worker_low + 99}",
    ]


@dataclass
class LocalCluster:
    temp_dir: Path
    port: int = field(default_factory=free_port)
    nodes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], log: str) -> subprocess.Popen:
        # RAY_ADDRESS names this cluster to every process its nodes start: Ray's own helpers (Train's
        # placement-group cleaner among them) otherwise look for "the" local cluster and give up
        # when a host runs more than one.
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": self.address}
        handle = open(self.temp_dir / log, "w")  # noqa: SIM115 - closed with the process
        # Every node its own temp folder: nodes of one host would otherwise share socket files.
        node_dir = self.temp_dir / f"node{len(self.nodes)}"
        node_dir.mkdir(exist_ok=True)
        args = [*args, f"--temp-dir={node_dir}"]
        process = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args, *_node_ports()],
                                   stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.nodes.append(process)
        return process

    def start_head(self, cpus: int = 1) -> None:
        self._start(["--head", f"--port={self.port}", f"--num-cpus={cpus}",
                     "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={free_port()}",
                     f"--ray-client-server-port={free_port()}"], "head.log")

    def add_worker(self, cpus: int = 1) -> subprocess.Popen:
        return self._start([f"--address={self.address}", f"--num-cpus={cpus}"], f"worker{len(self.nodes)}.log")

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        script = f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [p for p in self.nodes if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a Ray node exited while starting; see the logs in {self.temp_dir}")
            try:  # the GCS must accept connections before a driver can join
                socket.create_connection(("127.0.0.1", self.port), timeout=2).close()
            except OSError:
                time.sleep(1)
                continue
            try:
                done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                                      env={**os.environ, "RAY_AUTH_MODE": "disabled"})
            except subprocess.TimeoutExpired:
                continue
            lines = done.stdout.strip().splitlines()
            if done.returncode == 0 and lines and lines[-1] == str(count):
                return
            time.sleep(2)
        raise TimeoutError(f"the cluster did not reach {count} live nodes; logs in {self.temp_dir}")

    def kill_node(self, process: subprocess.Popen) -> None:
        """Kill a node's whole process group at once, as if its machine lost power."""
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def stop(self) -> None:
        """Kill every node's process group (a test cluster has nothing to save)."""
        for process in reversed(self.nodes):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # Workers the raylets forked may have left their group; the session folder names them all.
        subprocess.run(["pkill", "-9", "-f", str(self.temp_dir)], check=False)


def start_cluster(temp_dir: Path, workers: int, cpus: int = 1, head_cpus: int = 1) -> LocalCluster:
    cluster = LocalCluster(temp_dir)
    try:
        cluster.start_head(head_cpus)
        for _ in range(workers):
            cluster.add_worker(cpus)
            time.sleep(1)
        cluster.wait_for_nodes(workers + 1)
    except BaseException:
        cluster.stop()  # never leave half a cluster running
        raise
    return cluster
