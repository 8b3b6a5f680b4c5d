"""Ray for one command: a Ray of its own that could not start here is one line before any work;
waiting for a CPU that other work on the cluster holds, and taking back what an ended trial left reserved."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from cxr_tune import ray_session as session
from cxr_tune.errors import UserError
from cxr_tune.ray_session import wait_for_free_cpu
from tests.conftest import ROOT, call_cli, cpu_holders, kermany_folder

slow = pytest.mark.slow  # uses the session's Ray


@pytest.fixture
def no_ray_here(monkeypatch):
    """This process as a command's own: no Ray running in it (the suite's shared one aside), none named, and a
    ``ray.init`` that records its calls instead of starting one."""
    import ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append({**kwargs, "env": dict(os.environ)}))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_TMPDIR", raising=False)
    return calls


def _tmpdir_of_length(length: int, monkeypatch) -> str:
    """A TMPDIR of ``length`` bytes (the check only measures it: it need not exist)."""
    folder = "/" + "t" * (length - 1)
    monkeypatch.setenv("TMPDIR", folder)
    return folder


def test_a_temp_folder_too_long_for_rays_sockets_stops_a_search_with_one_line_before_its_experiment_is_written(tmp_path, monkeypatch, no_ray_here):
    """Ray puts its sockets under TMPDIR/ray/session_<date>_<pid>/sockets/; past 107 bytes its dashboard failed a minute
    later with a 70-line traceback whose reason was only in a Ray log file, and the search's folder was left behind."""
    tmpdir = _tmpdir_of_length(60, monkeypatch)
    done = call_cli("cxr_tune.search", "--space", "smoke", "--storage", str(tmp_path / "results"), "--name", "s1", "--synthetic-n", "40",
                    "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: Ray's temp folder '{tmpdir}' ($TMPDIR) is {len(tmpdir)} bytes long: Ray's socket paths inside it would exceed the 107 "
        f"bytes a Unix socket path may have (a folder of at most {107 - 70 - (len(str(os.getpid())) - 5)} bytes fits); "
        "set RAY_TMPDIR=/tmp (for Ray's files only) or a shorter TMPDIR and run the command again"]
    assert not (tmp_path / "results" / "s1").exists() and not (tmp_path / "cache").exists()  # nothing drawn, nothing written
    assert no_ray_here == []


def test_a_too_long_ray_tmpdir_stops_a_cache_build_before_ray_starts(tmp_path, monkeypatch, no_ray_here):
    data = kermany_folder(tmp_path / "chest_xray", {"train": {"NORMAL": [f"IM-000{i}-0001.jpeg" for i in range(4)],
                                                              "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(4)]}})
    monkeypatch.setattr("cxr_tune.data.cache.prepare_cache", lambda *args: pytest.fail("the build went on to Ray"))
    ray_tmpdir = str(tmp_path / ("r" * 60))
    monkeypatch.setenv("RAY_TMPDIR", ray_tmpdir)
    done = call_cli("cxr_tune.data", "prepare", str(data), "--image-size", "16", "--cache-dir", str(tmp_path / "cache"))
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: Ray's temp folder '{ray_tmpdir}' ($RAY_TMPDIR) is {len(ray_tmpdir)} bytes long")
    assert done.stderr.count("\n") == 1
    assert "set a shorter RAY_TMPDIR and run the command again" in done.stderr
    assert no_ray_here == []


def test_the_longest_temp_folder_the_check_lets_through_is_the_longest_rays_own_check_accepts(monkeypatch, no_ray_here):
    """The check's arithmetic against Ray's own socket check, on the socket path Ray would make for this process."""
    from datetime import datetime

    from ray._private.utils import validate_socket_filepath

    allowed = 107 - 70 - (len(str(os.getpid())) - 5)
    for length, fits in ((allowed, True), (allowed + 1, False)):
        folder = _tmpdir_of_length(length, monkeypatch)
        socket = os.path.join(folder, "ray", f"session_{datetime.now():%Y-%m-%d_%H-%M-%S_%f}_{os.getpid()}", "sockets", "dash_MetricsHead")
        if fits:
            validate_socket_filepath(socket)
            session.check_own_ray(None)
        else:
            with pytest.raises(OSError):
                validate_socket_filepath(socket)
            with pytest.raises(UserError, match=f"is {length} bytes long"):
                session.check_own_ray(None)
    session.check_own_ray("10.0.0.5:6379")  # a cluster's Ray keeps its own temp folder


@pytest.mark.parametrize("environment", [{"RAY_TMPDIR": "/r", "TMPDIR": "/t"}, {"TMPDIR": "/t"}, {}])
def test_the_temp_folder_the_check_measures_is_the_one_ray_picks(monkeypatch, environment):
    from ray._common.utils import get_default_system_temp_dir

    for name in ("RAY_TMPDIR", "TMPDIR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert session.ray_temp_root()[0] == get_default_system_temp_dir()


def _reserve_every_cpu(ray):
    """A placement group over all the session's CPUs, as Train reserves them for a trial's workers."""
    from ray.util.placement_group import placement_group

    cpus = ray.cluster_resources()["CPU"]
    group = placement_group([{"CPU": cpus}])
    if not group.wait(timeout_seconds=120):
        pytest.fail(f"the session's CPUs never came free for the test: {cpu_holders(ray)}")
    return cpus, group


@pytest.fixture
def token_mode(monkeypatch):
    """Ray's default for a Ray that ``ray.init`` starts: token authentication (the suite turns it off), no token given."""
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(name, "")  # recorded, so that a token the test's session sets is taken away again
        monkeypatch.delenv(name)


@pytest.mark.parametrize("home", ["read-only", "missing"])
def test_a_home_ray_cannot_write_its_token_in_gives_the_commands_own_ray_a_token_through_the_environment(tmp_path, monkeypatch, no_ray_here,
                                                                                                          token_mode, home):
    """Ray 2.60 writes a new token to ~/.ray/auth_token as ray.init starts a local Ray: with a read-only HOME, or a
    missing one where it cannot be made (a service account's /nonexistent), every command crashed there with a
    PermissionError traceback. Ray's RAY_AUTH_TOKEN gives it the token instead."""
    monkeypatch.setenv("HOME", str(tmp_path / "home" if home == "read-only" else tmp_path / "nonexistent"))
    (tmp_path / "home").mkdir()
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # a read-only mount (root passes any chmod)
    with session.ray_session():
        pass
    [started] = no_ray_here
    assert re.fullmatch("[0-9a-f]{64}", started["env"].get("RAY_AUTH_TOKEN", ""))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"] and not (tmp_path / "home" / ".ray").exists()


def test_where_ray_can_keep_its_token_file_or_is_told_what_to_do_it_is_left_to_ray(tmp_path, monkeypatch, no_ray_here, token_mode):
    monkeypatch.setenv("HOME", str(tmp_path))
    with session.ray_session():  # a HOME that can be written: Ray writes ~/.ray/auth_token, as it always did
        pass
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    for name, value in (("RAY_AUTH_MODE", "disabled"), ("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))):
        with monkeypatch.context() as told:
            told.setenv(name, value)
            with session.ray_session():
                pass
    assert [started["env"].get("RAY_AUTH_TOKEN") for started in no_ray_here] == [None, None, None]


@slow
def test_a_command_waits_for_a_cpu_other_work_holds_says_so_and_gives_up_with_one_line(ray_session, capsys, monkeypatch):
    from ray.util.placement_group import remove_placement_group

    monkeypatch.setattr(session, "IDLE_PLACEMENT_GROUP_AGE_S", 0.1)  # an idle group would be taken back at once
    cpus, group = _reserve_every_cpu(ray_session)

    @ray_session.remote(num_cpus=cpus)
    class Trial:  # the group is in use: never taken back
        def ready(self) -> bool:
            return True

    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    trial = Trial.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote()
    assert ray_session.get(trial.ready.remote(), timeout=120)
    try:
        with pytest.raises(UserError) as refused:
            wait_for_free_cpu(0.05, "read the image cache", timeout_s=1.5, quiet_s=0.3, poll_s=0.05)
        assert str(refused.value).startswith("no CPU of the Ray cluster came free within 1.5 s to read the image cache")
        assert f"other work holds all {cpus:g}" in str(refused.value)

        monkeypatch.setattr(session, "IDLE_PLACEMENT_GROUP_AGE_S", 600.0)  # the trial's own end frees them below

        def end_trial() -> None:
            ray_session.kill(trial)
            remove_placement_group(group)

        ended = threading.Timer(1.0, end_trial)
        ended.start()
        wait_for_free_cpu(0.05, "read the image cache", timeout_s=120, quiet_s=0.3, poll_s=0.05)  # returns once freed
        ended.join()
    finally:
        ray_session.kill(trial)
        remove_placement_group(group)
    printed = capsys.readouterr().out
    assert "Waiting for a free CPU to read the image cache" in printed and "A CPU is free: going on to read the image cache." in printed
    assert "Freed" not in printed


@slow
def test_cpus_an_ended_trial_left_reserved_are_taken_back(ray_session, capsys, monkeypatch):
    """A placement group of this command that no actor uses (Train created it for a trial the
    search's end stopped as it started) holds CPUs until the process exits; the wait takes them back."""
    monkeypatch.setattr(session, "IDLE_PLACEMENT_GROUP_AGE_S", 0.5)
    cpus, group = _reserve_every_cpu(ray_session)
    wait_for_free_cpu(0.05, "read the image cache", timeout_s=60, quiet_s=0.3, poll_s=0.05)
    assert f"Freed {cpus:g} CPU(s) that a trial ended while it started had left reserved." in capsys.readouterr().out
    from ray.util.placement_group import placement_group_table

    assert placement_group_table(group)["state"] == "REMOVED"


@slow
def test_idle_groups_are_looked_up_in_this_commands_own_ray(ray_session, monkeypatch):
    """Without an address the State API looks for Ray's processes on the machine: with another Ray also running there
    (another user's, a killed command's) it found several, refused, and the CPUs a trial left reserved stayed so."""
    import ray
    import ray.util.state

    asked: list[str | None] = []
    for name in ("list_placement_groups", "list_actors"):
        real = getattr(ray.util.state, name)
        monkeypatch.setattr(ray.util.state, name, lambda *args, real=real, **kwargs: asked.append(kwargs.get("address")) or real(*args, **kwargs))
    _reserve_every_cpu(ray_session)
    assert session.remove_idle_placement_groups(min_age_s=0.0) > 0
    assert asked == [ray.get_runtime_context().gcs_address] * 2


@slow
def test_a_short_wait_is_silent(ray_session, capsys):
    # CPUs that the session's last user is still giving back come free well within quiet_s.
    wait_for_free_cpu(0.05, "read the image cache", timeout_s=300, quiet_s=60)
    assert capsys.readouterr().out == ""


STOPPED_AFTER_RAY = """
import os, signal, sys, time
from cxr_tune.errors import run_cli
from cxr_tune.ray_session import ray_session

def main(argv):
    with ray_session(argv[0]):
        pass
    print("Ray ended", flush=True)
    os.kill(os.getpid(), signal.SIGTERM)  # a scheduler's stop while a search exports and reports after its final fit
    time.sleep(5)
    print("went on")
    return 0

run_cli(main, sys.argv[1:])
"""


@slow
def test_sigterm_after_a_commands_ray_session_ended_still_stops_it_as_ctrl_c_does(ray_session):
    """ray.shutdown() sets the process's SIGTERM back to the default behind Python's back (Python still names the command's
    handler): a SIGTERM during a search's export and report, after its Ray session, killed it at once, with no "terminated"
    line, no --report-only command, and its temporary report folder left behind. Here the command joins the session's Ray."""
    done = subprocess.run([sys.executable, "-c", STOPPED_AFTER_RAY, ray_session.get_runtime_context().gcs_address], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout, done.stderr.splitlines()[-1:]) == (128 + signal.SIGTERM, "Ray ended\n", ["terminated"]), done.stderr


@slow
@pytest.mark.parametrize("environment, joined", [(None, "local"), ("10.0.0.5:6379", "10.0.0.5:6379")])
def test_without_address_a_command_starts_its_own_ray_unless_ray_address_names_one(monkeypatch, environment, joined):
    """Ray's default (no address) joins the cluster a `ray start` last recorded on the machine, even
    someone else's or a dead one it then waits on for minutes: a command without ``--address`` asks
    for a Ray of its own ("local"), or joins the one ``RAY_ADDRESS`` names."""
    import ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    if environment:
        monkeypatch.setenv("RAY_ADDRESS", environment)
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with session.ray_session():
        pass
    assert [call["address"] for call in calls] == [joined]


@pytest.mark.parametrize(("raised", "line"), [
    (Exception("The current node timed out during startup. This could happen because some of the raylet failed to startup "
               "or the GCS has become overloaded."),
     "Ray's local node did not start (machine overloaded?): The current node timed out during startup. This could happen because "
     "some of the raylet failed to startup or the GCS has become overloaded"),
    # Before: every failure was "(machine overloaded?)", a bad argument or a version mismatch too.
    (ValueError("When connecting to an existing cluster, num_cpus and num_gpus must not be provided.\nSecond line"),
     "Ray's local node did not start: When connecting to an existing cluster, num_cpus and num_gpus must not be provided"),
])
def test_a_ray_of_the_commands_own_that_does_not_start_is_one_line_naming_its_logs_and_status_1(tmp_path, monkeypatch, no_ray_here, capsys,
                                                                                              raised, line):
    """On a loaded machine Ray's raylet or GCS may not come up in time; data prepare, train and search ended in a
    30-line traceback through ray.init. Ray made its session folder (and ``session_latest``) before it gave up. Only Ray's
    startup timeout is put down to a loaded machine; any other failure is Ray's own first line."""
    import ray

    from cxr_tune.errors import run_cli

    session_dir = tmp_path / "ray" / "session_2026-12-07_21-51-09_322717_14102"
    (session_dir / "logs").mkdir(parents=True)
    (tmp_path / "ray" / "session_latest").symlink_to(session_dir)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.setattr(session, "check_own_ray", lambda address: None)  # tmp_path may be too long for real sockets

    def failed(**kwargs):
        raise raised

    monkeypatch.setattr(ray, "init", failed)

    def command(argv):
        with session.ray_session():
            pytest.fail("the command went on without Ray")

    with pytest.raises(SystemExit) as ended:
        run_cli(command, [])
    assert ended.value.code == 1  # it failed at run time, as a search whose every trial failed: not a bad flag or file (2)
    assert capsys.readouterr().err.splitlines() == [f"error: {line}; its logs: {session_dir / 'logs'}"]


def test_an_address_where_something_other_than_ray_answers_is_one_line(monkeypatch):
    """Before: the port answered the check (an HTTP server, say), ray.init retried for 20 s and the command ended in a
    traceback from inside Ray: ConnectionError: Failed to connect to Ray cluster at ..."""
    import ray

    def refused(**kwargs):
        raise ConnectionError("Failed to connect to Ray cluster at 10.255.255.1:6379 after 15 retries.\nSecond line of Ray's")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refused)
    monkeypatch.setattr(session, "check_cluster_answers", lambda address: None)  # the port answers
    with pytest.raises(UserError, match=r"^--address 10.255.255.1:6379: no Ray cluster answered there \(Failed to connect to Ray cluster at "
                                        r"10.255.255.1:6379 after 15 retries.\); give the head node's address .*$"):
        with session.ray_session("10.255.255.1:6379"):
            pass


def test_a_cluster_address_where_nothing_answers_is_one_line_before_any_work(tmp_path, monkeypatch):
    """Before: ray.init retried for minutes, printing only Ray's "Failed to connect to GCS" lines, and the run folder was made."""
    import socket

    from cxr_tune.train.__main__ import main

    with _answering(_GRPC_SETTINGS) as gcs:
        session.check_cluster_answers(gcs)  # something answers as a Ray head's GCS does: Ray's own checks go on
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening: refused
            for address in ("auto", "ray://head:10001", None):
                session.check_cluster_answers(address)  # left to Ray
            monkeypatch.setenv("RAY_ADDRESS", dead)
            with pytest.raises(UserError, match=rf"^--address {dead}: no Ray cluster answers there \(Connection refused\)"):
                session.check_cluster_answers(None)
            monkeypatch.delenv("RAY_ADDRESS")
            with pytest.raises(UserError, match=rf"^--address {dead}: no Ray cluster answers there"):
                main(["--synthetic-n", "60", "--storage", str(tmp_path), "--name", "run", "--address", dead])
    assert not (tmp_path / "run").exists()


#: The first frame a gRPC server (a Ray head's GCS, Ray 2.60) sends after a client's HTTP/2 preface: SETTINGS.
_GRPC_SETTINGS = b"\x00\x00\x18\x04\x00\x00\x00\x00\x00\x00\x04\x00@\x00\x00"


@contextmanager
def _answering(reply: bytes | None) -> Iterator[str]:
    """``HOST:PORT`` of a listener on 127.0.0.1 that reads what a client sends and answers ``reply`` (``None``: never answers)."""
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()

        def serve() -> None:
            connection, _ = listening.accept()
            with connection:
                connection.recv(64)
                if reply is not None:
                    connection.sendall(reply)
                connection.recv(64)  # until the client closes

        if reply is not None:
            threading.Thread(target=serve, daemon=True).start()
        yield f"127.0.0.1:{listening.getsockname()[1]}"


def test_an_address_where_an_http_server_answers_is_one_line_before_any_work(tmp_path, monkeypatch):
    """Before: the Ray dashboard's port (``ray job submit``'s ``127.0.0.1:8265``, or any HTTP server) passed the check, and
    ``ray.init`` retried for good, printing Ray's "Failed to connect to GCS" lines (10 minutes seen); an ``http://`` address
    ended in a traceback from inside Ray (``ValueError: Invalid Ray address``) and left the run folder."""
    from http.server import HTTPServer, SimpleHTTPRequestHandler

    from cxr_tune.train.__main__ import main

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        http = f"127.0.0.1:{server.server_address[1]}"
        with pytest.raises(UserError, match=rf"^--address {http}: an HTTP server answers there \('<!DOCTYPE HTML>'\), not a Ray "
                                            r"head's GCS \(the dashboard's port, 8265, is the one `ray job submit` takes\); give .*HOST:6379"):
            session.check_cluster_answers(http)
        with _answering(b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\r\n") as dashboard:  # as Ray's dashboard answers
            with pytest.raises(UserError, match=rf"^--address {dashboard}: an HTTP server answers there \('HTTP/1.0 400 Bad Request'\)"):
                session.check_cluster_answers(dashboard)
        with _answering(b"\x15\x03\x01\x00\x02\x02\x32") as other:  # not HTTP, not gRPC (a TLS alert)
            with pytest.raises(UserError, match=rf"^--address {other}: what answers there is not a Ray head's GCS \(it answered "):
                session.check_cluster_answers(other)
        with pytest.raises(UserError, match=rf"^--address {http}: an HTTP server answers there"):
            main(["--synthetic-n", "60", "--storage", str(tmp_path), "--name", "run", "--address", http])
        for scheme in ("http", "https"):
            with pytest.raises(UserError, match=rf"^--address {scheme}://{http}: an HTTP address \(the dashboard's, which `ray job submit` "
                                                r"takes\), not a Ray head's GCS; give .*HOST:6379"):
                main(["--synthetic-n", "60", "--storage", str(tmp_path), "--name", "run", "--address", f"{scheme}://{http}"])
    finally:
        server.shutdown()
        server.server_close()
    assert not (tmp_path / "run").exists()


def test_an_address_that_takes_the_connection_and_says_nothing_is_one_line(monkeypatch):
    with _answering(None) as silent:
        with pytest.raises(UserError, match=rf"^--address {silent}: what answers there said nothing in 0.3 s, as a Ray head's GCS "
                                            r"would have; give .*HOST:6379"):
            session.check_cluster_answers(silent, timeout_s=0.3)
        monkeypatch.setenv("RAY_USE_TLS", "1")  # a GCS behind TLS waits for the client's TLS handshake: only the port is checked
        session.check_cluster_answers(silent, timeout_s=0.3)


@pytest.mark.parametrize("address", ["headnode", "10.0.0.5:", "headnode:gcs"])
def test_an_address_without_a_port_is_one_line_before_any_work(address, tmp_path):
    """Before: passed to ray.init after the data scan, which ended in a traceback (ValueError: Invalid address format).
    Ray's own ``local`` (a new local Ray) is an address too, and left to Ray."""
    from cxr_tune.train.__main__ import main

    session.check_cluster_answers("local")

    with pytest.raises(UserError, match=rf"^--address {address}: a Ray head's address is HOST:PORT \(the port its GCS listens on, 6379 "
                                        r"unless `ray start --head --port` chose another\); give .*HOST:6379"):
        main(["--synthetic-n", "60", "--storage", str(tmp_path), "--name", "run", "--address", address])
    assert not (tmp_path / "run").exists()
