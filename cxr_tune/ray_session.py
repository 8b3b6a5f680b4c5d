"""Start (or join) Ray once per command, with the settings this project relies on.

Local runs keep the dashboard on, bound to 127.0.0.1: each trial's Ray Train run starts a
placement-group cleaner that asks Ray's State API whether the trial's controller is still alive
before it frees the trial's reserved CPUs, and the dashboard is what serves the State API.
``--address auto`` (or ``RAY_ADDRESS`` set in the environment) joins a running cluster instead; without
either, a command never joins one that a ``ray start`` left on the machine.

Every worker process pins ``RAY_ADDRESS`` to the cluster it belongs to as it starts: Ray's own
helpers inside trials (that placement-group cleaner among them) otherwise look for "the" local
cluster and give up when a machine runs more than one (two searches, or a search beside a test).
Ray's and Optuna's console output can be routed to a log file (:mod:`cxr_tune.console`).

A Ray of the command's own is checked before it starts (:func:`check_own_ray`): a temp folder too long
for the Unix sockets Ray makes in it otherwise fails a minute later with a traceback whose reason is
only in one of Ray's log files. Where Ray could not write its token file (``~/.ray/auth_token``) it is
given a token through the environment instead (:func:`token_for_own_ray`).
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TextIO

from cxr_tune.errors import RunFailure, UserError

_QUIET_ENV = {
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_DATA_LOG_LEVEL": "WARNING",
    # Train's controller polls its workers every 2 s by default; a finished trial then idles that
    # long before its CPUs go to the next one. Polling is cheap.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Ray Train's own ingest options trip a Ray Data deprecation warning in every trial.
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
    # Tune's legacy reporter honours verbose=0; the newer one prints a configuration box regardless.
    "RAY_AIR_NEW_OUTPUT": "0",
}

# Where object storage is and how to reach it, forwarded to every worker when the driver has them
# set (workers read and write s3:// too: the image cache, checkpoints). Credentials are not
# forwarded: each node carries its own (instance role, its own environment).
_STORAGE_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")


#: The longest path a Unix socket may have on this system, as Ray checks it (``validate_socket_filepath``).
SOCKET_PATH_LIMIT = (104 if sys.platform == "darwin" else 108) - 1
#: The longest socket a local Ray 2.60 makes: its dashboard's MetricsHead module, in the session's folder.
_LONGEST_SOCKET = ("sockets", "dash_MetricsHead")


def ray_temp_root() -> tuple[str, str]:
    """Where a Ray started on this machine keeps its files (in ``ray/`` under it), and which setting chose
    it: ``$RAY_TMPDIR``, else ``$TMPDIR`` (on Linux), else ``/tmp``, as Ray's own
    ``ray._common.utils.get_default_system_temp_dir`` picks it (also on Windows, which needs no socket check)."""
    if "RAY_TMPDIR" in os.environ:
        return os.environ["RAY_TMPDIR"], "$RAY_TMPDIR"
    if sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        return os.environ["TMPDIR"], "$TMPDIR"
    return os.path.join(os.sep, "tmp"), "Ray's default"


def check_own_ray(address: str | None) -> None:
    """One line before any work when the Ray this command would start itself (no ``address``, no
    ``RAY_ADDRESS``) could not start: its temp folder is too long for the socket paths Ray makes in it
    (``TEMP/ray/session_<date>_<pid>/sockets/dash_MetricsHead``; 70 bytes plus TEMP with a 5-digit pid)."""
    if address or os.environ.get("RAY_ADDRESS") or sys.platform == "win32":
        return
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():  # ray_session joins the one running (tests do that)
        return
    root, chosen_by = ray_temp_root()
    session = f"session_{datetime.now():%Y-%m-%d_%H-%M-%S_%f}_{os.getpid()}"  # as Ray names it; the pid of the process that starts Ray
    longest = len(os.path.join(root, "ray", session, *_LONGEST_SOCKET).encode())
    if longest > SOCKET_PATH_LIMIT:
        allowed = SOCKET_PATH_LIMIT - (longest - len(root.encode()))
        shorter = "a shorter RAY_TMPDIR" if chosen_by == "$RAY_TMPDIR" else "RAY_TMPDIR=/tmp (for Ray's files only) or a shorter TMPDIR"
        raise UserError(f"Ray's temp folder '{root}' ({chosen_by}) is {len(root.encode())} bytes long: Ray's socket paths inside it would "
                        f"exceed the {SOCKET_PATH_LIMIT} bytes a Unix socket path may have (a folder of at most {allowed} bytes fits); "
                        f"set {shorter} and run the command again")


def own_ray_logs() -> str:
    """The log folder of the Ray this command started last on this machine (Ray points ``session_latest`` at a new
    session's folder before it starts its processes), or Ray's temp folder when it made none."""
    folder = os.path.join(ray_temp_root()[0], "ray")
    latest = os.path.join(folder, "session_latest")
    return os.path.join(os.path.realpath(latest), "logs") if os.path.isdir(latest) else folder


def check_cluster_answers(address: str | None, timeout_s: float = 5.0) -> None:
    """One line when a cluster named as ``HOST:PORT`` does not answer there as a Ray head does: ``ray.init``
    otherwise retries for minutes (for good where an HTTP server answers: Ray's dashboard on 127.0.0.1:8265,
    the address ``ray job submit`` takes), printing only Ray's own "Failed to connect to GCS" lines.
    A head's GCS is a gRPC server: it answers an HTTP/2 client preface with a SETTINGS frame (behind TLS,
    ``RAY_USE_TLS``, it waits for a handshake instead, so there only the port is checked). ``auto``, ``local`` and
    ``ray://`` are left to Ray (it finds the first from a file on this node, starts a Ray for the second, and the third
    is Ray Client's)."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address or address in ("auto", "local"):  # local: Ray's own word for a new Ray on this machine
        return
    give = "give the head node's address as `ray start --head` printed it (HOST:6379), or --address auto on a node of the cluster"
    if address.lower().startswith(("http://", "https://")):
        raise UserError(f"--address {address}: an HTTP address (the dashboard's, which `ray job submit` takes), not a Ray head's GCS; {give}")
    if "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():  # ray.init would end in a traceback (ValueError: Invalid address format)
        raise UserError(f"--address {address}: a Ray head's address is HOST:PORT (the port its GCS listens on, 6379 unless `ray start --head "
                        f"--port` chose another); {give}")
    import socket

    try:
        connection = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(f"--address {address}: no Ray cluster answers there ({reason}); {give}") from None
    with connection:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return
        try:
            connection.sendall(_HTTP2_PREFACE)
            reply = connection.recv(64)
        except TimeoutError:
            raise UserError(f"--address {address}: what answers there said nothing in {timeout_s:g} s, as a Ray head's GCS would have; "
                            f"{give}") from None
        except OSError as exc:
            reply = f"({exc.strerror or type(exc).__name__})".encode()
    if len(reply) >= 4 and reply[3] == _HTTP2_SETTINGS:
        return
    if reply.startswith((b"HTTP/", b"<")):  # a status line; Python's http.server answers an HTTP/2 request with an HTML page alone
        first = reply.splitlines()[0][:40].decode("ascii", "replace")
        raise UserError(f"--address {address}: an HTTP server answers there ({first!r}), not a Ray head's GCS (the dashboard's port, 8265, "
                        f"is the one `ray job submit` takes); {give}")
    raise UserError(f"--address {address}: what answers there is not a Ray head's GCS (it answered {reply[:24]!r}); {give}")


#: An HTTP/2 client's connection preface and an empty SETTINGS frame: a gRPC server answers with its own SETTINGS.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
_HTTP2_SETTINGS = 0x04  # the frame type, the fourth byte of a frame's header


def token_for_own_ray() -> None:
    """Give the Ray this command starts itself a token of its own when Ray could not save one.

    Ray (2.59 on) turns token authentication on for a Ray that ``ray.init`` starts and, when it finds
    no token, writes a new one to ``~/.ray/auth_token``; with a HOME it cannot write (read-only, missing,
    a service account's ``/nonexistent``) ``ray.init`` crashed with a PermissionError. Then the token goes
    into ``RAY_AUTH_TOKEN`` (Ray's documented setting, read before that file) for this process and the Ray
    processes it starts; it is set once per process, as Ray's token loader keeps the first it reads.
    Nothing changes where the file can be written, or where ``RAY_AUTH_MODE``, ``RAY_AUTH_TOKEN`` or
    ``RAY_AUTH_TOKEN_PATH`` says what to do.
    """
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or os.environ.get("RAY_AUTH_TOKEN") or "RAY_AUTH_TOKEN_PATH" in os.environ:
        return
    from cxr_tune import storage  # here: every Ray worker imports this module (its setup hook), and storage brings pandas

    home = os.path.expanduser("~")
    if home != "~":  # (no HOME and no password entry: Ray cannot name the file either)
        token_file = os.path.join(home, ".ray", "auth_token")
        if os.access(token_file, os.R_OK):
            return
        try:
            storage.check_writable(os.path.dirname(token_file), "Ray's token folder")
            return
        except UserError:
            pass
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # 256 bits, as Ray's own generator makes them


def pin_cluster_address() -> None:
    """Worker-process setup hook: this worker's cluster is the one Ray helpers should talk to."""
    import ray

    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
                log: TextIO | None = None, verbose: bool = False) -> Iterator[None]:
    """Ray for the duration of a ``with`` block; reuses an already-initialized Ray (tests do that).

    ``log``: an open file that receives Ray's workers' output instead of the console (see
    :func:`cxr_tune.console.route_worker_output`; both with ``verbose``); default: the file of the
    :func:`cxr_tune.console.library_output_to` block this one runs in, if any.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    if log is None:
        from cxr_tune.console import active_log

        log, verbose = active_log()
    address = address or os.environ.get("RAY_ADDRESS") or None  # a cluster the user named, here or in the environment
    check_own_ray(address)
    check_cluster_answers(address)
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    workers_env = {k: os.environ[k] for k in _QUIET_ENV}
    # Inside trials Ray Data only iterates materialized blocks; its one warning there is that the
    # (deliberately) disabled progress bars are disabled, once per worker process.
    workers_env["RAY_DATA_LOG_LEVEL"] = "ERROR"
    workers_env.update({k: os.environ[k] for k in _STORAGE_ENV if k in os.environ})
    if log is not None and not (verbose and sys.stdout.isatty()):
        os.environ["RAY_COLOR_PREFIX"] = "0"  # no colour codes in a file or a pipe
    if not address:
        # One process less per trial: Train's preemption watcher waits for a cluster to drain a
        # node, which a Ray started by this command on this machine never does.
        workers_env["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    runtime_env = {"env_vars": workers_env, "worker_process_setup_hook": "cxr_tune.ray_session.pin_cluster_address"}
    quiet = {"logging_level": logging.WARNING, "runtime_env": runtime_env}
    sigterm_before = signal.getsignal(signal.SIGTERM)
    if address:
        try:
            ray.init(address=address, **quiet)
        except ConnectionError as exc:  # something answered check_cluster_answers, but not a Ray head that took us; or auto found none
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            where = ("start one with `ray start --head`, or give the head node's address (HOST:6379)" if address == "auto" else
                     "give the head node's address as `ray start --head` printed it (HOST:6379), or --address auto on a node of the cluster")
            raise UserError(f"--address {address}: no Ray cluster answered there ({reason}); {where}") from None
    else:
        # "local": a Ray of this command's own. Left unset, Ray joins the cluster a `ray start` last
        # recorded in its temp folder: someone else's on a shared machine, or a dead one it waits on for minutes.
        token_for_own_ray()
        try:
            ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=True, dashboard_host="127.0.0.1", **quiet)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - its raylet or GCS did not come up (a loaded machine), or Ray refused: its reason is in its logs
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
            # Only Ray's startup timeout (ray/_private/node.py: "The current node timed out during startup") is a loaded machine's sign.
            overloaded = " (machine overloaded?)" if "timed out during startup" in reason else ""
            raise RunFailure(f"Ray's local node did not start{overloaded}: {reason}; its logs: {own_ray_logs()}") from None
    _keep_sigterm(sigterm_before)
    undo = lambda: None  # noqa: E731
    if log is not None:
        from cxr_tune.console import route_worker_output

        undo = route_worker_output(log, verbose=verbose)
    try:
        yield
    finally:
        ray.shutdown()
        _keep_sigterm(sigterm_before)
        undo()


def _keep_sigterm(handler: object) -> None:
    """Put the command's own SIGTERM handler (:func:`cxr_tune.errors.run_cli`'s) back in force. ``ray.init()`` installs
    Ray's; ``ray.shutdown()`` sets the process's SIGTERM to the default below Python, which still names the handler
    (a SIGTERM during the export and report after a search's final fit then killed it with no word and no clean-up)."""
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)


FREE_CPU_TIMEOUT_S = 600.0  # how long a command waits for a CPU of a cluster that other work holds


def cluster_held() -> tuple[float, float]:
    """(CPUs, GPUs) the connected Ray cluster holds: what a stage's line in ``compute.jsonl`` charges it."""
    import ray

    cluster = ray.cluster_resources()
    return cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)


def wait_for_free_cpu(needed: float, purpose: str, *, timeout_s: float = FREE_CPU_TIMEOUT_S, quiet_s: float = 5.0, poll_s: float = 0.2) -> None:
    """Return once the cluster has ``needed`` CPUs free to ``purpose``; say so when that takes a while.

    Ray's tasks wait silently (Ray Data adds only a warning that it "will hang") while other work
    holds every CPU of the cluster: another search on it, or, for a few seconds, the trial
    processes of one that just ended. An autoscaling cluster frees one by adding a node, so the
    wait is shown after ``quiet_s`` and only after ``timeout_s`` ends with a one-line error.
    """
    import ray

    started = time.monotonic()
    said = False
    next_sweep = quiet_s  # asking the State API for idle groups costs more than a poll: once per quiet_s
    while ray.available_resources().get("CPU", 0.0) + 1e-9 < needed:
        total = ray.cluster_resources().get("CPU", 0.0)
        waited = time.monotonic() - started
        if waited >= next_sweep:
            next_sweep = waited + quiet_s
            if freed := remove_idle_placement_groups():
                print(f"Freed {freed:g} CPU(s) that a trial ended while it started had left reserved.", flush=True)
        if waited >= timeout_s:
            raise UserError(f"no CPU of the Ray cluster came free within {timeout_s:g} s to {purpose}: other work holds all {total:g} "
                            "(`ray status` shows what); end it or add a node, then run the command again")
        if waited >= quiet_s and not said:
            print(f"Waiting for a free CPU to {purpose}: other work holds all {total:g} CPU(s) of the Ray cluster "
                  f"(another search or job on it?); giving up after {timeout_s / 60:g} min ...", flush=True)
            said = True
        time.sleep(poll_s)
    if said:
        print(f"A CPU is free: going on to {purpose}.", flush=True)


IDLE_PLACEMENT_GROUP_AGE_S = 20.0  # a Train run fills its placement group with workers well within this


def remove_idle_placement_groups(min_age_s: float | None = None) -> float:
    """Remove this command's placement groups that no live actor uses and that are older than
    ``min_age_s``; returns the CPUs they held (0 when the State API cannot be asked).

    Why: when a time budget (or the end of the search) stops a trial just as it starts, Tune can
    return while the trial's process still creates its Train run; the run's placement group then
    outlives it (Train's own cleaner watches the run only after it registered the group), reserved
    until this command's process exits. A final fit in the same process would wait for those CPUs.
    Only this job's groups are touched, never another user's.
    """
    import ray

    min_age_s = IDLE_PLACEMENT_GROUP_AGE_S if min_age_s is None else min_age_s
    try:
        from ray.util.placement_group import PlacementGroup, remove_placement_group
        from ray.util.state import list_actors, list_placement_groups

        context = ray.get_runtime_context()
        job = context.get_job_id()
        # This command's own Ray, by address: without one the State API looks for Ray's processes on the machine, and
        # with another user's Ray also running it finds several and refuses ("Found multiple active Ray instances").
        ours = {"address": context.gcs_address, "detail": True, "raise_on_missing_output": False}
        groups = list_placement_groups(filters=[("creator_job_id", "=", job), ("state", "=", "CREATED")], **ours)
        in_use = {a.placement_group_id for a in list_actors(filters=[("state", "!=", "DEAD")], **ours)}
    except Exception:  # noqa: BLE001 - no State API (no dashboard): nothing is removed, the wait goes on
        return 0.0
    freed = 0.0
    now_ns = time.time_ns()
    for group in groups:
        created_ns = int((group.stats or {}).get("creation_request_received_ns") or now_ns)
        if group.placement_group_id in in_use or now_ns - created_ns < min_age_s * 1e9:
            continue
        remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group.placement_group_id))))
        freed += sum(bundle["unit_resources"].get("CPU", 0.0) for bundle in group.bundles)
    return freed
