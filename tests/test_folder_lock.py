"""One command at a time in an experiment folder: a second one is refused with one line, before it touches anything."""

from __future__ import annotations

import fcntl
import json
import os

import pytest

from cxr_tune import folder_lock
from cxr_tune.errors import UserError
from tests.conftest import call_cli


def held_by_another_process(folder) -> object:
    """The lock as another command holds it (a second open file description: flock refuses it to this one too)."""
    handle = open(folder / folder_lock.LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115
    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    handle.write("process 4242")
    handle.flush()
    return handle


def test_a_folder_another_command_holds_is_refused_and_free_again_once_it_ends(tmp_path):
    other = held_by_another_process(tmp_path)
    with pytest.raises(UserError, match=rf"another command \(process 4242\) is running in the experiment '{tmp_path}'; wait for it"):
        with folder_lock.holding():
            folder_lock.hold(str(tmp_path))
    assert folder_lock.held_elsewhere(str(tmp_path)) == "process 4242"
    other.close()  # the other command ended
    assert folder_lock.held_elsewhere(str(tmp_path)) is None
    with folder_lock.holding():
        folder_lock.hold(str(tmp_path))
        folder_lock.hold(str(tmp_path))  # held once by this command, however often it asks
        assert (tmp_path / folder_lock.LOCK_FILE).read_text() == f"process {os.getpid()}"
    held_by_another_process(tmp_path).close()  # let go at the end of the block


def test_a_file_system_without_locks_runs_unlocked_rather_than_refusing_every_command(tmp_path, monkeypatch):
    """NFS without lockd: flock fails with ENOLCK, which is no other command holding the folder."""
    import errno

    def no_locks(handle, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with folder_lock.holding():
        folder_lock.hold(str(tmp_path))  # before: "another command is running", for ever
    assert folder_lock.held_elsewhere(str(tmp_path)) is None  # nor is a new search under its name told that one runs it


@pytest.mark.parametrize("command", ["resume", "report-only", "export"])
def test_a_second_command_in_a_running_experiment_is_refused_before_it_reads_it(command, tmp_path):
    """Before: a --resume typed while the search ran restored Tune's state, trained the same trial again, and both
    commands rewrote each other's table, report and best/."""
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "experiment.json").write_text(json.dumps({"options": {}}))  # no command gets as far as reading it
    other = held_by_another_process(experiment)
    try:
        args = {"resume": ["cxr_tune.search", "--name", "exp", "--storage", str(tmp_path), "--resume"],
                "report-only": ["cxr_tune.search", "--name", "exp", "--storage", str(tmp_path), "--report-only"],
                "export": ["cxr_tune.export", str(experiment)]}[command]
        done = call_cli(*args)
    finally:
        other.close()
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"another command (process 4242) is running in the experiment '{experiment}'" in done.stderr


def test_a_new_search_under_the_name_of_a_running_one_is_not_told_to_resume_it(tmp_path):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "experiment.json").write_text("{}")
    other = held_by_another_process(experiment)
    try:
        done = call_cli("cxr_tune.search", "--space", "smoke", "--name", "exp", "--storage", str(tmp_path))
    finally:
        other.close()
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: experiment '{experiment}' already exists and another command (process 4242) is running it now; choose another --name")


def test_a_search_started_under_the_same_name_at_the_same_moment_is_refused_before_it_writes_a_file(tmp_path, monkeypatch, capsys):
    """Two searches with one --name started together: the one refused used to write its experiment.json, space.yaml and
    splits.csv over the running one's first (the lock came after), and --resume then ran the refused command's options."""
    from cxr_tune.search.__main__ import main
    from tests.conftest import folder_with_bad_files, lines_before_ray

    argv = ["--space", "smoke", "--data", str(folder_with_bad_files(tmp_path / "data")), "--storage", str(tmp_path / "runs"), "--name", "exp",
            "--cache-dir", str(tmp_path / "cache"), "--seed", "2"]
    experiment = tmp_path / "runs" / "exp"
    experiment.mkdir(parents=True)  # the other search made the folder and holds it, its files not yet written
    other = held_by_another_process(experiment)
    try:
        with pytest.raises(UserError) as refused:
            main(argv)
        (experiment / "experiment.json").write_text('{"options": "the running search\'s"}')  # which it writes now
    finally:
        other.close()
    assert str(refused.value) == f"experiment '{experiment}' already exists and another command (process 4242) is running it now; choose another --name"
    assert sorted(path.name for path in experiment.iterdir()) == [folder_lock.LOCK_FILE, "experiment.json"]
    assert (experiment / "experiment.json").read_text() == '{"options": "the running search\'s"}'

    # And one that wrote its experiment and ended between this command's first look and its lock: told to resume it, not overwritten.
    (experiment / "experiment.json").unlink()
    from cxr_tune import storage
    from cxr_tune.search import runner

    def made_and_written_meanwhile(path: str) -> None:
        storage_makedirs(path)
        (experiment / "experiment.json").write_text('{"options": "the other search\'s"}')

    storage_makedirs = storage.makedirs
    monkeypatch.setattr(runner.storage, "makedirs", made_and_written_meanwhile)
    with pytest.raises(UserError, match=r"already exists; continue it with: python -m cxr_tune.search --name exp .* --resume"):
        lines_before_ray(main, argv, monkeypatch, capsys)
    assert (experiment / "experiment.json").read_text() == '{"options": "the other search\'s"}'
    assert sorted(path.name for path in experiment.iterdir()) == [folder_lock.LOCK_FILE, "experiment.json"]


def test_a_train_run_another_command_is_training_is_refused_before_ray_starts(tmp_path, synthetic_root):
    """Before: the resume command typed while the run went on restored a checkpoint the first run then deleted,
    and ended in a Ray traceback calling it damaged; and, with other data, it rewrote the running run's record first."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"data": "the running run\'s"}')
    other = held_by_another_process(run)
    try:
        done = call_cli("cxr_tune.train", "--data", str(synthetic_root), "--set", "epochs=1", "--name", "run", "--storage", str(tmp_path))
    finally:
        other.close()
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"another command (process 4242) is running in the train run folder '{run}'" in done.stderr
    assert (run / "run.json").read_text() == '{"data": "the running run\'s"}'

