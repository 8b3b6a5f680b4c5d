"""Ray for one command: waiting for a CPU that other work on the cluster holds, and taking back
what an ended trial left reserved."""

from __future__ import annotations

import threading

import pytest

from cxr_tune import ray_session as session
from cxr_tune.errors import UserError
from cxr_tune.ray_session import wait_for_free_cpu
from tests.conftest import cpu_holders

pytestmark = pytest.mark.slow  # uses the session's Ray


def _reserve_every_cpu(ray):
    """A placement group over all the session's CPUs, as Train reserves them for a trial's workers."""
    from ray.util.placement_group import placement_group

    cpus = ray.cluster_resources()["CPU"]
    group = placement_group([{"CPU": cpus}])
    if not group.wait(timeout_seconds=120):
        pytest.fail(f"the session's CPUs never came free for the test: {cpu_holders(ray)}")
    return cpus, group


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


def test_cpus_an_ended_trial_left_reserved_are_taken_back(ray_session, capsys, monkeypatch):
    """A placement group of this command that no actor uses (Train created it for a trial the
    search's end stopped as it started) holds CPUs until the process exits; the wait takes them back."""
    monkeypatch.setattr(session, "IDLE_PLACEMENT_GROUP_AGE_S", 0.5)
    cpus, group = _reserve_every_cpu(ray_session)
    wait_for_free_cpu(0.05, "read the image cache", timeout_s=60, quiet_s=0.3, poll_s=0.05)
    assert f"Freed {cpus:g} CPU(s) that a trial ended while it started had left reserved." in capsys.readouterr().out
    from ray.util.placement_group import placement_group_table

    assert placement_group_table(group)["state"] == "REMOVED"


def test_a_short_wait_is_silent(ray_session, capsys):
    # CPUs that the session's last user is still giving back come free well within quiet_s.
    wait_for_free_cpu(0.05, "read the image cache", timeout_s=300, quiet_s=60)
    assert capsys.readouterr().out == ""


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
