"""A real multi-node Ray cluster on one machine: a head and worker nodes as separate processes.

Used by the multi-node tests and the scaling benchmark. Each node is ``ray start --block`` in a
session and temp folder of its own, so a test can kill exactly one node (as if its machine died)
and stop everything the harness started, found by session and parentage; ``ray stop`` (or
``pkill`` by pattern) would kill every Ray process on the host, including other people's.

Ports: every port Ray can choose itself is passed as 0 (node manager, object manager, agents,
metrics, dashboard, workers), so nodes on one host never collide. Two are picked beforehand: the
head's GCS port (``RAY_ADDRESS`` must name it before the head starts) and its Ray Client server
port (Ray rejects 0 there). Another process can bind a picked port before the head does; the head
is then started again with new ports. A node that fails to start raises with its own log lines.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
STARTED = "Ray runtime started."
# How a Ray process says that a port it was given is already bound (gRPC servers in C++ and Python, the dashboard).
PORT_TAKEN = re.compile(r"Failed to start the grpc server\. The specified port is \d+|Failed to bind to address"
                        r"|Address already in use|already occupied", re.IGNORECASE)
# Error lines: Python tracebacks, Ray's C++ fatal/error lines ("[... ,391 C 8371 8371]"), gRPC's ("E1126 ..."), `ray start`'s.
ERROR_LINE = re.compile(r"Check failed|Traceback|Error|Failed|exited unexpectedly|,\d{3} [CFE] \d+ \d+\]|^[EF]\d{4} |\bERR\b")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
START_ATTEMPTS = 3
START_TIMEOUT_S = 120.0
# The GCS declares a node dead after this many missed health checks, one a second: about 3 s after a
# node is killed, not Ray's 15 s (5 missed, every 3 s), so a test that kills one waits less. The
# checks answer from the raylet's C++ thread and may take 10 s each (Ray's default), so a busy
# node is not mistaken for a dead one.
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
SELF_CHOSEN_PORTS = ["--node-manager-port=0", "--object-manager-port=0", "--dashboard-agent-listen-port=0",
                     "--dashboard-agent-grpc-port=0", "--runtime-env-agent-port=0", "--metrics-export-port=0",
                     "--min-worker-port=0", "--max-worker-port=0"]


class NodeStartError(RuntimeError):
    """A node died or hung while starting; the message quotes the node's own logs."""


class PortTaken(NodeStartError):
    """Another process bound a port picked for the node before the node did: worth a new start."""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def spare_port() -> int:
    """A port free right now, below the range the kernel hands out for port 0.

    Ray's own port-0 binds (and every other program's) come from that range and Ray's defaults lie
    below 20000, so a pick in between is rarely taken before the node binds it; a start-up retry
    covers the rest.
    """
    low = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(20000, low) if low > 21000 else 0
        with socket.socket() as sock:
            try:
                sock.bind(("", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port to give a Ray node")


def _distinct_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = spare_port()
        if port not in ports:
            ports.append(port)
    return ports


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent, session) of a live process from /proc, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[3])


def _process_table() -> dict[int, tuple[str, int, int]]:
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            table[int(entry.name)] = stat
    return table


def node_processes(leader: int) -> set[int]:
    """Live processes a node started: its session plus anything descended from it.

    Ray workers move to process groups of their own and outlive a killed raylet under init, but
    keep the session; a child that left the session is still a descendant while its parent lives.
    The leader is left unreaped until the node is killed, so no other session can reuse its id.
    """
    table = _process_table()
    found = {pid for pid, (_, _, session) in table.items() if session == leader} | ({leader} & table.keys())
    while True:
        children = {pid for pid, (_, parent, _) in table.items() if parent in found} - found
        if not children:
            return {pid for pid in found if table[pid][0] != "Z"}
        found |= children


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd.path)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def _listening_inodes(port: int) -> set[int]:
    """Inodes of the TCP sockets listening on ``port`` (any address, IPv4 or IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(int(fields[9]))
    return inodes


def _tail(path: Path, lines: int) -> list[str]:
    try:
        text = path.read_bytes()[-200_000:].decode(errors="replace")
    except OSError:
        return []
    return [ANSI.sub("", line).rstrip() for line in text.splitlines()][-lines:]


def _quote(line: str, limit: int = 400) -> str:
    """A log line from the failed check on (a Ray crash line opens with boilerplate), cut to ``limit``."""
    start = line.find("Check failed")
    return line[max(start, 0):][:limit]


@dataclass
class Node:
    """One ``ray start --block`` process, leader of a session of its own."""

    name: str
    folder: Path  # its --temp-dir
    log: Path  # what ``ray start`` printed
    process: subprocess.Popen
    ports: tuple[int, ...] = ()  # picked beforehand: the node is up once its own processes listen on them

    @property
    def pid(self) -> int:
        return self.process.pid

    def exit_code(self) -> int | None:
        """The leader's exit status, without reaping it (see ``node_processes``)."""
        if self.process.returncode is not None:
            return self.process.returncode
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        if info is None:
            return None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def component_logs(self) -> list[Path]:
        """The stdout/stderr files of the node's Ray components (raylet.out, gcs_server.out, ...), not of its workers."""
        logs = self.folder / "session_latest" / "logs"
        files = sorted([*logs.glob("*.out"), *logs.glob("*.err")])
        return [f for f in files if not f.name.startswith(("worker-", "python-core"))]

    def port_taken(self) -> bool:
        texts = [self.log, *self.component_logs()]
        return any(PORT_TAKEN.search(line) for path in texts for line in _tail(path, 400))

    def owns_ports(self) -> bool:
        if not self.ports:
            return True
        inodes = set().union(*(_socket_inodes(pid) for pid in node_processes(self.pid)))
        return all(_listening_inodes(port) & inodes for port in self.ports)

    def started(self) -> bool:
        return any(STARTED in line for line in _tail(self.log, 400)) and self.owns_ports()

    def errors(self, per_file: int = 6) -> list[str]:
        """The node's own error lines, file by file; the end of its output when none match."""
        quoted = []
        for path in [*self.component_logs(), self.log]:
            hits = [line for line in _tail(path, 2000) if ERROR_LINE.search(line)][-per_file:]
            quoted += [f"  {path.name}: {_quote(line)}" for line in hits]
        return quoted or [f"  {self.log.name}: {_quote(line)}" for line in _tail(self.log, 10)]

    def failure(self, what: str) -> str:
        return "\n".join([f"Ray node {self.name} {what}. Its logs say:", *self.errors(),
                          f"All its logs: {self.log} and {self.folder / 'session_latest' / 'logs'}"])


def kill(node: Node) -> None:
    """SIGKILL everything the node started until nothing is left (a raylet may fork meanwhile), then reap it."""
    if node.process.returncode is not None:
        return
    deadline = time.monotonic() + 60
    while (pids := node_processes(node.pid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    node.process.wait()


def await_start(node: Node, timeout: float = START_TIMEOUT_S, poll: float = 0.25, settle: float = 2.0) -> None:
    """Return once the node is up; raise with its own error once it dies, loses a port or hangs."""
    deadline = time.monotonic() + timeout
    while True:
        code = node.exit_code()
        if node.port_taken():
            time.sleep(settle)  # the failing process is still writing why (gRPC's bind error comes before Ray's check)
            raise PortTaken(node.failure("could not bind a port it was given (another process took it)"))
        if code is not None:
            raise NodeStartError(node.failure(f"exited with code {code} while starting"))
        if node.started():
            return
        if time.monotonic() > deadline:
            raise NodeStartError(node.failure(f"did not start within {timeout:.0f} s"))
        time.sleep(poll)


@dataclass
class LocalCluster:
    """Nodes started one at a time, each awaited, so a failure names the node that failed."""

    temp_dir: Path
    port: int = field(default_factory=spare_port)
    nodes: list[Node] = field(default_factory=list)
    start_attempts: int = START_ATTEMPTS
    start_timeout: float = START_TIMEOUT_S
    restarted: list[str] = field(default_factory=list)  # why each node start that was tried again failed

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def spawn(self, label: str, command: list[str], ports: tuple[int, ...] = ()) -> Node:
        """Run ``command`` as a node: a new session, its output in ``<label>.log``, its own folder."""
        # RAY_ADDRESS names this cluster to every process its nodes start: Ray's own helpers (Train's
        # placement-group cleaner among them) otherwise look for "the" local cluster and give up
        # when a host runs more than one.
        env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_ADDRESS": self.address,
               "PYTHONUNBUFFERED": "1", **FAST_NODE_DEATH}
        folder = self.temp_dir / label  # nodes of one host would otherwise share socket files
        folder.mkdir(exist_ok=True)
        log = self.temp_dir / f"{label}.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return Node(label, folder, log, process, ports)

    def _ray_start(self, label: str, args: list[str], ports: tuple[int, ...] = ()) -> Node:
        command = [RAY, "start", "--block", "--disable-usage-stats", *args, *SELF_CHOSEN_PORTS,
                   f"--temp-dir={self.temp_dir / label}"]
        return self.spawn(label, command, ports)

    def start_node(self, name: str, launch: Callable[[str], Node]) -> Node:
        """Launch a node and wait until it is up; one that lost a picked port is launched again."""
        for attempt in range(1, self.start_attempts + 1):
            node = launch(name if attempt == 1 else f"{name}-try{attempt}")
            try:
                await_start(node, self.start_timeout)
            except BaseException as error:
                kill(node)
                if not isinstance(error, PortTaken) or attempt == self.start_attempts:
                    raise
                self.restarted.append(str(error))
                continue
            self.nodes.append(node)
            return node
        raise AssertionError("start_attempts must be at least 1")

    def start_head(self, cpus: int = 1) -> Node:
        def launch(label: str) -> Node:
            self.port, client_port = _distinct_ports(2)
            return self._ray_start(label, ["--head", f"--port={self.port}", f"--num-cpus={cpus}",
                                           "--include-dashboard=true", "--dashboard-host=127.0.0.1", "--dashboard-port=0",
                                           f"--ray-client-server-port={client_port}"], (self.port, client_port))

        return self.start_node("head", launch)

    def add_worker(self, cpus: int = 1) -> Node:
        args = [f"--address={self.address}", f"--num-cpus={cpus}"]
        return self.start_node(f"worker{len(self.nodes)}", lambda label: self._ray_start(label, args))

    def _dead_node(self) -> Node | None:
        return next((node for node in self.nodes if node.exit_code() is not None), None)

    def wait_for_nodes(self, count: int, timeout: float = 120) -> None:
        script = f"import ray; ray.init(address='{self.address}', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (dead := self._dead_node()) is not None:
                raise NodeStartError(dead.failure(f"exited with code {dead.exit_code()}"))
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

    def kill_node(self, node: Node) -> None:
        """Kill a node and everything it started at once, as if its machine lost power."""
        kill(node)

    def stop(self) -> None:
        """Kill every node and what it started (a test cluster has nothing to save)."""
        for node in reversed(self.nodes):
            kill(node)


def start_cluster(temp_dir: Path, workers: int, cpus: int = 1, head_cpus: int = 1) -> LocalCluster:
    cluster = LocalCluster(temp_dir)
    try:
        cluster.start_head(head_cpus)
        for _ in range(workers):
            cluster.add_worker(cpus)
        cluster.wait_for_nodes(workers + 1)
    except BaseException:
        cluster.stop()  # never leave half a cluster running
        raise
    return cluster
