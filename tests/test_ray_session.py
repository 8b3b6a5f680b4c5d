"""Ray for one command: waiting for a CPU that other work on the cluster holds."""

from __future__ import annotations

import threading

import pytest

from cxr_tune.errors import UserError
from cxr_tune.ray_session import wait_for_free_cpu

pytestmark = pytest.mark.slow  # uses the session's Ray


def test_a_command_waits_for_a_cpu_other_work_holds_says_so_and_gives_up_with_one_line(ray_session, capsys):
    from ray.util.placement_group import placement_group, remove_placement_group

    cpus = ray_session.cluster_resources()["CPU"]
    everything = placement_group([{"CPU": cpus}])  # as another search's trials would hold them
    assert everything.wait(timeout_seconds=120), "the session's CPUs never came free for the test"
    try:
        with pytest.raises(UserError) as refused:
            wait_for_free_cpu(0.05, "read the image cache", timeout_s=1.0, quiet_s=0.3, poll_s=0.05)
        assert str(refused.value).startswith("no CPU of the Ray cluster came free within 1 s to read the image cache")
        assert f"other work holds all {cpus:g}" in str(refused.value)
        released = threading.Timer(1.0, remove_placement_group, args=(everything,))
        released.start()
        wait_for_free_cpu(0.05, "read the image cache", timeout_s=120, quiet_s=0.3, poll_s=0.05)  # returns once freed
        released.join()
    finally:
        remove_placement_group(everything)
    printed = capsys.readouterr().out
    assert "Waiting for a free CPU to read the image cache" in printed and "A CPU is free: going on to read the image cache." in printed


def test_a_short_wait_is_silent(ray_session, capsys):
    # CPUs that the session's last user is still giving back come free well within quiet_s.
    wait_for_free_cpu(0.05, "read the image cache", timeout_s=300, quiet_s=60)
    assert capsys.readouterr().out == ""
