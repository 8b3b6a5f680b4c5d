"""``python -m cxr_tune.train``'s run folder, checked without Ray: what a folder already holds decides what a command may
add to it, and what a finished run leaves there to read."""

from __future__ import annotations

import json

import pytest

from cxr_tune.errors import UserError


@pytest.fixture
def no_ray(monkeypatch):
    import cxr_tune.ray_session

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", lambda *a, **k: pytest.fail("Ray started"))


def files_in(folder) -> dict[str, bytes]:
    """Each file in ``folder`` and its bytes, but the lock every command holds in a run folder."""
    from cxr_tune.folder_lock import LOCK_FILE

    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


def test_a_single_run_under_the_name_of_a_cross_validation_is_refused_in_one_line_before_ray_starts(tmp_path, no_ray):
    """Before: it trained and wrote metrics.json and checkpoints beside the folds, and rewrote run.json's keys."""
    from cxr_tune.train.__main__ import main

    run = tmp_path / "cv3"
    (run / "folds").mkdir(parents=True)
    (run / "folds" / "plan.json").write_text(json.dumps({"k": 3, "seed": 0, "hparams": {}, "images": "400 images, sha256 0123456789ab"}))
    (run / "cv.md").write_text("# 3-fold cross-validation by patient group\n")
    (run / "run.json").write_text(json.dumps({"precision_flags": {"precision": "auto", "memory_format": "auto"}}))
    before = files_in(run)
    with pytest.raises(UserError, match=rf"^'{run}' holds a cross-validation \(--cv 3\), not a single run; give the run another --name, "
                                        r"or --cv 3 to resume that one$"):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--name", "cv3"])
    assert files_in(run) == before


def test_cross_validation_under_the_name_of_a_single_run_is_refused_in_one_line_before_ray_starts(tmp_path, no_ray):
    """Before: Tune started the folds beside the single run's checkpoints."""
    from cxr_tune.train.__main__ import main
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    run = tmp_path / "one"
    (run / "checkpoint_000").mkdir(parents=True)
    save_state(str(run / "checkpoint_000"), {"hparams": HParams().to_dict(), "epoch": 2}, {})
    (run / "run.json").write_text(json.dumps({"data": "400 images, sha256 0123456789ab", "deciding_set": "carved"}))
    before = files_in(run)
    said = rf"^'{run}' holds a single train run, not a cross-validation; give --cv 2 another --name, or leave out --cv to resume that run$"
    with pytest.raises(UserError, match=said):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--name", "one", "--cv", "2"])
    assert files_in(run) == before
    (run / "checkpoint_000" / "state.pt").unlink()  # stopped before its first checkpoint: its run.json names its data all the same
    with pytest.raises(UserError, match=said):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--name", "one", "--cv", "2"])


@pytest.mark.parametrize(("checkpoint", "flags"), [(False, ["--cv", "2"]), (True, ["--precision", "fp32"])])
def test_a_half_written_run_json_is_one_line_naming_it_before_ray_starts(tmp_path, no_ray, checkpoint, flags):
    """Before: a raw JSONDecodeError traceback (a copy of the run folder stopped halfway)."""
    from cxr_tune.train.__main__ import main
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    run = tmp_path / "run"
    run.mkdir()
    if checkpoint:
        (run / "checkpoint_000").mkdir()
        save_state(str(run / "checkpoint_000"), {"hparams": HParams().to_dict(), "epoch": 1}, {})
    (run / "run.json").write_text(json.dumps({"data": "400 images, sha256 0123456789ab", "deciding_set": "carved"})[:30])
    with pytest.raises(UserError, match=rf"^'{run / 'run.json'}' could not be read \(.+\); it is damaged or half-written \(a copy or a run cut short\)$"):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--name", "run", *flags])


def fold_rows(k: int) -> list[dict]:
    """What a --cv run's folds return once each trained all its epochs."""
    from cxr_tune.train.crossval import REPORTED

    return [{"fold": fold, "val_images": 40, "best_epoch": 1, "diverged": False, **{f"{when}_{m}": 0.5 + fold / 100 for when in ("best", "last") for m in REPORTED}}
            for fold in range(1, k + 1)]


def test_cross_validation_s_command_line_and_resume_hint_can_be_pasted_back_with_a_name_that_needs_quoting(tmp_path, monkeypatch, capsys):
    """Before: ``--name "cv x"`` gave ``Command: `python -m cxr_tune.train ... --name cv x``` in cv.md, which failed when pasted
    (unrecognized arguments: x), and a resume hint ``--name cv x`` likewise."""
    import shlex
    import sys
    from types import SimpleNamespace

    import pandas as pd

    import cxr_tune.train.crossval
    from cxr_tune.train.__main__ import build_parser, run_cv
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams
    from cxr_tune.train.trainer import Resources, RunOptions

    argv = ["--storage", str(tmp_path / "my runs"), "--set", "epochs=2", "--cv", "2", "--name", "cv x"]
    monkeypatch.setattr(sys, "argv", ["/somewhere/cxr_tune/train/__main__.py", *argv])
    args, split = build_parser().parse_args(argv), SimpleNamespace(source=SimpleNamespace(description="SYNTHETIC"))
    finished = tmp_path / "my runs" / "cv x" / "folds" / "train" / "fold1" / "checkpoint_000"  # what fold 1 left
    finished.mkdir(parents=True)
    save_state(str(finished), {"hparams": HParams(epochs=2).to_dict(), "epoch": 1}, {})

    monkeypatch.setattr(cxr_tune.train.crossval, "cross_validate", lambda *a, **k: pd.DataFrame(fold_rows(1)))  # Ctrl-C after fold 1
    with pytest.raises(KeyboardInterrupt):
        run_cv(args, HParams(epochs=2), split, Resources(1, 1.0, 0.0), str(tmp_path / "my runs"), "cv x", RunOptions())
    assert "the same command with --name 'cv x' keeps the finished folds" in capsys.readouterr().out

    monkeypatch.setattr(cxr_tune.train.crossval, "cross_validate", lambda *a, **k: pd.DataFrame(fold_rows(2)))
    assert run_cv(args, HParams(epochs=2), split, Resources(1, 1.0, 0.0), str(tmp_path / "my runs"), "cv x", RunOptions()) == 0
    command = next(line for line in (tmp_path / "my runs" / "cv x" / "cv.md").read_text().splitlines() if line.startswith("Command: "))
    assert shlex.split(command.removeprefix("Command: `").removesuffix("`  ")) == ["python", "-m", "cxr_tune.train", *argv]


def _run_faked(monkeypatch, tmp_path, fit, trained: bool, trainer=None):
    """``train``'s run of one configuration with Ray Train faked: ``fit`` stands for Train's (it raises what the test needs),
    and the run folder ``my run`` holds a checkpoint when ``trained``. Returns (the CLI module, its parsed args, the run folder)."""
    import contextlib
    from types import SimpleNamespace

    import cxr_tune.data.cache
    import cxr_tune.train.__main__ as cli
    import cxr_tune.train.progress
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    monkeypatch.setattr(cli, "datasets_by_size", lambda split, sizes: {size: None for size in sizes})
    monkeypatch.setattr(cxr_tune.data.cache, "find_cache", lambda *a: None)
    monkeypatch.setattr(cli, "make_trainer", lambda *a, **k: trainer)
    monkeypatch.setattr(cli, "fit", fit)
    monkeypatch.setattr(cxr_tune.train.progress, "epoch_lines", lambda *a: contextlib.nullcontext(lambda label, epochs: []))  # its queue is a Ray actor
    run = tmp_path / "my run"
    run.mkdir()
    if trained:
        (run / "checkpoint_000").mkdir()
        save_state(str(run / "checkpoint_000"), {"hparams": HParams(epochs=2).to_dict(), "epoch": 0}, {})
    return cli, cli.build_parser().parse_args(["--storage", str(tmp_path), "--name", "my run"]), run


def _split(tmp_path):
    """The split a faked ``train`` run reads (no images: the data and the trainer are faked too)."""
    from types import SimpleNamespace

    return SimpleNamespace(deciding_set=lambda select_on: "carved", class_counts=lambda: (1, 1), cache_dir=str(tmp_path), source=SimpleNamespace(manifest=None))


@pytest.mark.parametrize("trained", [True, False])
def test_a_stopped_run_s_resume_hint_can_be_pasted_back_with_a_name_that_needs_quoting(trained, tmp_path, monkeypatch, capsys):
    """Before: Ctrl-C on ``--name "my run"`` said ``the same command with --name my run resumes the run``; and a run stopped
    before its first checkpoint was said to have checkpoints to resume from, in a folder holding only run.json and train.log.
    (Ray Train faked.)"""
    from cxr_tune.train.hparams import HParams
    from cxr_tune.train.trainer import Resources

    def stopped(trainer):
        raise KeyboardInterrupt

    cli, args, run = _run_faked(monkeypatch, tmp_path, stopped, trained)
    split = _split(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        cli.train(args, HParams(epochs=2), split, str(tmp_path), "my run", Resources(1, 1.0, 0.0), None)
    said = capsys.readouterr().out.splitlines()[-1]
    if trained:
        assert said == f"Stopped; its checkpoints are in {run}: the same command with --name 'my run' resumes the run from the last one"
    else:
        assert said == (f"Stopped before its first checkpoint: nothing trained yet, and {run} holds none; the same command with "
                        "--name 'my run' starts the run again from its first epoch")


@pytest.mark.parametrize("trained", [True, False])
def test_a_stopped_cross_validation_says_whether_its_folds_have_checkpoints_to_resume_from(trained, tmp_path, monkeypatch, capsys):
    """Before: Ctrl-C before any fold saved a checkpoint said "Stopped with 0 of 2 folds done; their checkpoints are in ...",
    in a folder holding none (the same command then starts the folds from their first epoch). (The folds faked.)"""
    import pandas as pd

    import cxr_tune.train.__main__ as cli
    import cxr_tune.train.crossval
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams
    from cxr_tune.train.trainer import Resources

    run = tmp_path / "my cv"
    fold = run / "folds" / "train" / "fold1"
    fold.mkdir(parents=True)
    if trained:
        (fold / "checkpoint_000").mkdir()
        save_state(str(fold / "checkpoint_000"), {"hparams": HParams(epochs=2).to_dict(), "epoch": 0}, {})
    monkeypatch.setattr(cxr_tune.train.crossval, "cross_validate", lambda *a, **k: pd.DataFrame())  # Ctrl-C: no fold finished
    args = cli.build_parser().parse_args(["--storage", str(tmp_path), "--name", "my cv", "--cv", "2"])
    with pytest.raises(KeyboardInterrupt):
        cli.run_cv(args, HParams(epochs=2), _split(tmp_path), Resources(1, 1.0, 0.0), str(tmp_path), "my cv", None)
    said = capsys.readouterr().out.splitlines()[-1]
    if trained:
        assert said == (f"Stopped with 0 of 2 folds done; their checkpoints are in {run}: the same command with --name 'my cv' keeps the "
                        "finished folds and resumes the others from their last checkpoints")
    else:
        assert said == (f"Stopped before its first checkpoint: nothing trained yet, and {run} holds none; the same command with "
                        "--name 'my cv' starts its folds again from their first epoch")


@pytest.mark.parametrize("trained", [True, False])
def test_a_run_whose_training_fails_in_every_attempt_ends_in_one_line_naming_the_cause_the_log_and_the_resume(trained, tmp_path, monkeypatch,
                                                                                                             capsys):
    """Before: status 1 and a 36-line traceback (runpy ... ray.train.WorkerGroupError: Training failed due to worker errors: [Rank 0
    Error Snippet] ...), the cause on its last line, no word of train.log nor of the checkpoints a resume starts from. (Ray Train faked.)"""
    from types import SimpleNamespace

    from ray.train import WorkerGroupError

    from cxr_tune.train.hparams import HParams
    from cxr_tune.train.trainer import Resources

    def failed(trainer):
        raise WorkerGroupError("[Rank 0 Error Snippet]:\nTraceback (most recent call last): ...", {0: ValueError("lr=10 blew up\nmore")})

    trainer = SimpleNamespace(run_config=SimpleNamespace(failure_config=SimpleNamespace(max_failures=2)))
    cli, args, run = _run_faked(monkeypatch, tmp_path, failed, trained, trainer)
    split = _split(tmp_path)
    assert cli.train(args, HParams(epochs=2), split, str(tmp_path), "my run", Resources(1, 1.0, 0.0), None) == 1
    said = capsys.readouterr().err.splitlines()
    failed_line = f"error: training failed: ValueError: lr=10 blew up (attempts: 3; full traceback: {run / 'train.log'})"
    if trained:
        assert said == [failed_line + f"; its checkpoints are in {run}: the same command with --name 'my run' resumes the run from the last one"]
    else:
        assert said == [failed_line]


def test_a_finished_run_s_closing_lines_say_how_to_get_an_exportable_model_of_its_configuration(tmp_path, capsys):
    """Before: they ended with the checkpoint and metrics.json, which export and predict do not take, and said nothing more."""
    import contextlib
    from types import SimpleNamespace

    from cxr_tune.train.__main__ import report
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    run = tmp_path / "run"
    (run / "checkpoint_000").mkdir(parents=True)
    rows = [{"epoch": e, "train_loss": 0.7 - e / 10, "val_loss": 0.6, "val_auc": 0.7 + e / 100, "val_threshold": 0.5, "val_sensitivity": 0.8,
             "val_specificity": 0.6, "val_balanced_accuracy": 0.7, "val_objective": 0.7 + e / 100, "epoch_seconds": 1.5} for e in (1, 2)]
    save_state(str(run / "checkpoint_000"), {"hparams": HParams(epochs=2).to_dict(), "epoch": 1, "history": rows}, {})
    result = SimpleNamespace(error=None, best_checkpoints=[], checkpoint=SimpleNamespace(as_directory=lambda: contextlib.nullcontext(str(run / "checkpoint_000"))))
    split = SimpleNamespace(source=SimpleNamespace(description="SYNTHETIC", synthetic=True))
    assert report(result, HParams(epochs=2), split, str(run), "carved") == 0
    assert capsys.readouterr().out.splitlines()[-1] == (
        "Export:     export takes a search's experiment, not a train run; for an exportable model of that configuration, run python -m "
        "cxr_tune.search --space FILE.yaml with a space file whose search: holds trials: 1, max_epochs: 2 and grace_period: 1, and whose fixed: holds its other "
        "hyperparameters")


def test_a_finished_run_s_epoch_table_is_written_beside_its_metrics_and_named_on_the_console(tmp_path, capsys):
    """Before: the table of every epoch went to the console only; metrics.json holds the best epoch, and the rest was in the
    checkpoint's state.pt, a torch file. Then the table left out the external set's sensitivity and specificity, which each
    epoch's line on the console shows when that set selects."""
    import contextlib
    from types import SimpleNamespace

    import pandas as pd

    from cxr_tune.train.__main__ import LOSSES_NOTE, report
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    run = tmp_path / "run"
    (run / "checkpoint_000").mkdir(parents=True)
    rows = [{"epoch": e, "train_loss": 0.7 - e / 10, "val_loss": 0.6, "val_auc": 0.7 + e / 100, "val_threshold": 0.5, "val_sensitivity": 0.8,
             "val_specificity": 0.6, "val_balanced_accuracy": 0.7, "val_objective": 0.7 + e / 100, "val_n": 40, "epoch_seconds": 1.5,
             "ext_loss": 0.5, "ext_auc": 0.65, "ext_threshold": 0.4, "ext_sensitivity": 0.7, "ext_specificity": 0.5,
             "ext_balanced_accuracy": 0.6} for e in (1, 2, 3)]
    save_state(str(run / "checkpoint_000"), {"hparams": HParams(epochs=3).to_dict(), "epoch": 2, "history": rows}, {})
    result = SimpleNamespace(error=None, best_checkpoints=[], checkpoint=SimpleNamespace(as_directory=lambda: contextlib.nullcontext(str(run / "checkpoint_000"))))
    split = SimpleNamespace(source=SimpleNamespace(description="SYNTHETIC", synthetic=True))
    assert report(result, HParams(epochs=3), split, str(run), "carved") == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"Metrics:    {run / 'metrics.json'} (best epoch), {run / 'epochs.csv'} (every epoch)" in lines
    table = pd.read_csv(run / "epochs.csv")
    assert list(table.columns) == lines[0].split()  # the columns printed, one row per epoch
    # Before: train_loss sat beside val_loss with no word that they differ (on Kermany, pos_weight ~0.35, it sat well below).
    assert lines[len(rows) + 1] == LOSSES_NOTE and lines[len(rows) + 1].startswith("train_loss: the loss training minimizes")
    assert list(table.columns) == ["epoch", "train_loss", "val_loss", "val_auc", "val_threshold", "val_sensitivity", "val_specificity",
                                   "val_balanced_accuracy", "epoch_seconds", "ext_loss", "ext_auc", "ext_threshold", "ext_balanced_accuracy",
                                   "ext_sensitivity", "ext_specificity"]  # the earlier columns where they were
    assert table.to_dict("records") == [{k: v for k, v in row.items() if k in table.columns} for row in rows]


def test_the_space_file_the_export_advice_describes_loads_for_a_one_epoch_run(tmp_path):
    """Before: for a 1-epoch run the advice said "trials: 1 and max_epochs: 1", and the search refused that space file
    ("search.grace_period: 2 is more than max_epochs 1"): a recipe the program printed that did not work."""
    import re

    import yaml

    from cxr_tune.experiment import export_one_configuration
    from cxr_tune.search.space import load_space

    advice = export_one_configuration(1)
    held = re.search(r"search: holds (.*?), and whose fixed:", advice).group(1)
    search = {key: int(value) for key, value in re.findall(r"(\w+): (\d+)", held)}
    assert search["trials"] == 1 and search["max_epochs"] == 1
    space = tmp_path / "one.yaml"
    space.write_text(yaml.safe_dump({"search": search, "fixed": {"image_size": 16, "depth": 2, "filters": 4}}))
    loaded = load_space(str(space))
    assert loaded.settings.trials == 1 and loaded.settings.max_epochs == 1 and loaded.fixed["depth"] == 2
