"""Reading an experiment folder: a copied or moved one reads its own files, not the original's."""

from __future__ import annotations

import shutil

import pytest

from cxr_tune.errors import UserError
from cxr_tune.experiment import Experiment
from tests.conftest import ROOT, call_cli


def test_a_copied_experiment_opens_its_own_study(tmp_path):
    copy = tmp_path / "moved"
    shutil.copytree(ROOT / "results" / "real" / "external", copy)  # recorded as run from another checkout (/work/run)
    experiment = Experiment(str(copy))
    assert experiment.options.experiment_dir != str(copy)
    assert experiment.study_path == str(copy / "study.db")
    from cxr_tune.search.finish import dashboard_command

    assert dashboard_command(experiment).startswith(f"optuna-dashboard sqlite:///{copy / 'study.db'}")


def test_the_study_of_a_folder_without_study_db_is_a_user_error_naming_it_and_no_study_db_is_made(tmp_path):
    """From Python, Experiment(folder).study() raised optuna's bare KeyError 'Record does not exist.' and left an empty
    study.db behind, which later readers took for the search's study."""
    copy = tmp_path / "copied"
    shutil.copytree(ROOT / "results" / "real" / "external", copy, ignore=shutil.ignore_patterns("study.db"))
    with pytest.raises(UserError, match=rf"^'{copy / 'study.db'}' does not exist: this experiment has no Optuna study"):
        Experiment(str(copy)).study()
    assert not (copy / "study.db").exists()


def test_an_experiment_whose_space_a_later_rule_refuses_is_still_read(tmp_path):
    copy = tmp_path / "carved"
    shutil.copytree(ROOT / "results" / "real" / "carved", copy)
    text = (copy / "space.yaml").read_text()
    (copy / "space.yaml").write_text(text.replace("\nfixed:\n", "\nfixed:\n  epochs: 12\n", 1))  # refused in a new space file since 2026-12-06
    space = Experiment(str(copy)).space()
    assert space.fixed["epochs"] == 12 and space.path == str(copy / "space.yaml")


def _cut_mid_row(text: str) -> str:
    """``splits.csv`` as a copy stopped halfway leaves it: the last row ends inside its content hash."""
    start = text.index("\n", len(text) // 2) + 1
    return text[: text.index(",", start) + 5]


@pytest.mark.parametrize(("name", "damage", "read"), [
    ("experiment.json", lambda path: path.write_text(path.read_text()[:200]), lambda e: e.options),
    ("experiment.json", lambda path: path.write_text(""), lambda e: e.options),
    ("experiment.json", lambda path: path.write_text("{}"), lambda e: e.options),
    ("experiment.json", lambda path: path.write_text('{"options": {"trials": 4}}'), lambda e: e.options),
    ("splits.csv", lambda path: path.unlink(), lambda e: e.splits),
    ("splits.csv", lambda path: path.write_text(_cut_mid_row(path.read_text())), lambda e: e.splits),
    ("splits.csv", lambda path: path.write_text(_cut_mid_row(path.read_text()).rsplit("\n", 1)[0] + "\n"), lambda e: e.splits),
    ("space.yaml", lambda path: path.unlink(), lambda e: e.space()),
    ("compute.jsonl", lambda path: path.write_text(path.read_text()[:40]), lambda e: e.compute_log()),
    ("finalfit/members.json", lambda path: path.write_text('[{"trial_id": "a'), lambda e: e.final_fit_runs()),
])
def test_a_damaged_or_half_written_experiment_file_is_one_line_naming_it(tmp_path, name, damage, read):
    copy = shutil.copytree(ROOT / "results" / "real" / "carved", tmp_path / "carved")
    (copy / name).parent.mkdir(exist_ok=True)  # finalfit/, which a search without a final fit lacks
    damage(copy / name)
    with pytest.raises(UserError, match="damaged or half-written") as caught:
        read(Experiment(str(copy)))
    assert str(caught.value).startswith(f"'{copy / name}' could not be read (") and "\n" not in str(caught.value)


def test_export_of_a_half_written_experiment_is_one_line(tmp_path):
    copy = shutil.copytree(ROOT / "results" / "real" / "carved", tmp_path / "carved")
    (copy / "experiment.json").write_text("{}")
    done = call_cli("cxr_tune.export", str(copy), "--out", str(tmp_path / "best"))
    assert done.returncode == 2 and done.stderr.startswith(f"error: '{copy / 'experiment.json'}' could not be read"), done.stderr


def test_a_broken_space_file_is_named_as_the_experiments_own(tmp_path):
    copy = shutil.copytree(ROOT / "results" / "real" / "carved", tmp_path / "carved")
    (copy / "space.yaml").write_text("params: [1, 2\n")
    with pytest.raises(UserError) as caught:
        Experiment(str(copy)).space()
    assert str(caught.value).startswith(f"{copy / 'space.yaml'}: YAML syntax error"), caught.value  # not the temporary copy it read


def _compute_lines(folder) -> list[dict]:
    import json

    return [json.loads(line) for line in (folder / "compute.jsonl").read_text().splitlines()]


def test_a_stage_killed_with_kill_9_still_leaves_its_time(tmp_path):
    import subprocess
    import sys

    (tmp_path / "experiment.json").write_text("{}")
    (tmp_path / "compute.jsonl").write_text('{"stage": "search", "seconds": 60.0, "cpus": 2, "gpus": 0, "ended_at": "x"}\n')
    # Killed once its record says 0.3 s or more (a fixed 0.6 s sleep saw fewer on a machine at load 28: the record's
    # thread had not come round), or after 30 s with none: then the assertions below fail.
    script = ("import json, os, signal, time\nfrom cxr_tune.experiment import Experiment\n"
              f"log = {str(tmp_path / 'compute.jsonl')!r}\n"
              f"with Experiment({str(tmp_path)!r}).compute_logged('final fit', lambda: (2.0, 0.0), every=0.05):\n"
              "    started = time.monotonic()\n"
              "    last = lambda: json.loads(open(log).read().splitlines()[-1])\n"
              "    while time.monotonic() < started + 30 and not (last()['stage'] == 'final fit' and last()['seconds'] >= 0.3):\n"
              "        time.sleep(0.02)\n"
              "    print(time.monotonic() - started, flush=True)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == -9, done.stderr
    earlier, killed = _compute_lines(tmp_path)
    assert earlier["seconds"] == 60.0 and killed["stage"] == "final fit" and killed["cpus"] == 2.0
    assert "ended_at" not in killed and "last_seen_at" in killed and 0.3 <= killed["seconds"] <= float(done.stdout) + 0.5
    experiment = Experiment(str(tmp_path))
    assert experiment.stage_minutes()["final fit"] == pytest.approx(killed["seconds"] / 60)


def test_a_stage_that_ends_or_fails_records_its_end_notes_and_resources_at_the_end(tmp_path):
    (tmp_path / "experiment.json").write_text("{}")
    experiment, held = Experiment(str(tmp_path)), iter([(2.0, 0.0), (8.0, 1.0), (4.0, 0.0), (4.0, 0.0)])
    with experiment.compute_logged("search", lambda: next(held)) as notes:
        notes["ended_by"] = "job budget"
    with pytest.raises(KeyboardInterrupt), experiment.compute_logged("search (resumed)", lambda: next(held)):
        raise KeyboardInterrupt
    ended, interrupted = _compute_lines(tmp_path)
    assert ended["ended_by"] == "job budget" and (ended["cpus"], ended["gpus"]) == (8.0, 1.0) and "ended_at" in ended
    assert interrupted["stage"] == "search (resumed)" and "ended_at" in interrupted


def test_an_object_store_gone_mid_stage_is_one_error_at_the_end_not_a_thread_traceback(tmp_path, monkeypatch):
    """The store went away mid-search: the record's heartbeat thread died with "Exception in thread compute.jsonl:
    Traceback ...", then the end's write failed with the same error. Now the heartbeat keeps going (the store may
    answer again: the end's line then records the whole run) and the end's write says it, once."""
    import threading

    from cxr_tune import storage
    from cxr_tune.storage import StoreError

    (tmp_path / "experiment.json").write_text("{}")
    write, failed, uncaught = storage.write_text_atomic, threading.Event(), []
    down = {"now": False}

    def flaky(path: str, text: str) -> None:
        if down["now"]:
            failed.set()
            raise StoreError(f"'{path}' cannot be written: no connection to http://127.0.0.1:1")
        write(path, text)

    monkeypatch.setattr(storage, "write_text_atomic", flaky)
    monkeypatch.setattr(threading, "excepthook", lambda args: uncaught.append(args.exc_value))
    experiment = Experiment(str(tmp_path))
    with experiment.compute_logged("search", lambda: (2.0, 0.0), every=0.01):
        down["now"] = True
        assert failed.wait(30)
        down["now"] = False  # it answers again before the end
    assert not uncaught and "ended_at" in _compute_lines(tmp_path)[-1]
    failed.clear()
    with pytest.raises(StoreError, match="compute.jsonl' cannot be written: no connection"), \
            experiment.compute_logged("search (resumed)", lambda: (2.0, 0.0), every=0.01):
        down["now"] = True
        assert failed.wait(30)  # and it is still gone at the end
    assert not uncaught, uncaught


def test_tune_state_counts_as_saved_only_with_the_trials_state_beside_tuner_pkl(tmp_path):
    """Tune writes ``tuner.pkl`` before its first step and the trials' state at it; restoring from
    ``tuner.pkl`` alone logs a traceback from inside Ray and starts afresh (the final fit tried it)."""
    from cxr_tune.experiment import tune_state_saved

    (tmp_path / "tuner.pkl").write_bytes(b"")
    assert not tune_state_saved(str(tmp_path))
    (tmp_path / "experiment_state-2026-12-06_13-00-00.json").write_text("{}")
    assert tune_state_saved(str(tmp_path))


def test_the_test_splits_class_counts_of_an_experiment_from_before_their_record_come_from_splits_csv(tmp_path):
    """report.md gives the test split's size beside the other sets'; experiment.json has recorded it only since 2026-12-07."""
    import json

    import pandas as pd

    (tmp_path / "experiment.json").write_text(json.dumps({"options": {}, "class_counts_val": [1, 1]}))
    rows = [("a", "h1", 0, "test"), ("copy of a", "h1", 0, "test"), ("c", "h2", 1, "test"), ("d", "h3", 1, "test"), ("e", "h4", 0, "val"), ("f", "h5", 1, "val")]
    pd.DataFrame(rows, columns=["path", "content_hash", "label", "role"]).to_csv(tmp_path / "splits.csv", index=False)
    experiment = Experiment(str(tmp_path))
    assert experiment.class_counts("test") == [1, 2] and experiment.class_counts("val") == [1, 1]


@pytest.mark.parametrize(("option", "value"), [("trials", "many"), ("max_epochs", "ten"), ("trials", 0)])
def test_an_edited_count_in_the_options_is_one_line_naming_the_file(tmp_path, monkeypatch, option, value):
    """Before: export read options.trials = "many" without a word, then crashed comparing it with the trials trained
    (TypeError: '>=' not supported between 'int' and 'str'); max_epochs = "ten" crashed working out ASHA's rungs."""
    import json

    import pandas as pd

    from cxr_tune.export import export_trial

    table = pd.DataFrame({"trial_id": ["a"], "epochs": [2], "stop_reason": ["completed"]})  # the committed copy has no Tune state
    monkeypatch.setattr("cxr_tune.search.results.trials_table", lambda *args: table)
    copy = shutil.copytree(ROOT / "results" / "real" / "carved", tmp_path / "carved")
    info = json.loads((copy / "experiment.json").read_text())
    info["options"][option] = value
    (copy / "experiment.json").write_text(json.dumps(info))
    with pytest.raises(UserError) as caught:
        export_trial(str(copy), out=str(tmp_path / "best"))
    assert str(caught.value) == (f"'{copy / 'experiment.json'}' could not be read (options.{option} is {value!r}, not a positive whole "
                                 "number); it is damaged or half-written (a copy or a run cut short)")
