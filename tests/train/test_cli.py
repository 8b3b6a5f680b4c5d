"""``python -m cxr_tune.train``: a run a person watches epoch by epoch, with Ray's own output kept out of the way, and
Ctrl-C that says how to go on."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cpus_come_free, folder_with_bad_files, lines_before_ray, read_only_cache

pytestmark = pytest.mark.slow  # starts a Train run


def ctrl_c(command: list[str], after: str, signum: int = signal.SIGINT) -> tuple[str, int]:
    """Run ``command`` and press Ctrl-C (or send ``signum``) once a console line holds ``after``; its whole output and exit status."""
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        seen = []
        for line in process.stdout:
            seen.append(line)
            if after in line:
                break
        process.send_signal(signum)
        return "".join(seen) + process.communicate(timeout=120)[0], process.returncode
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def train_command(ray_session, synthetic_root, tmp_path, *extra: str) -> list[str]:
    """``train`` on the SYNTHETIC set, joined to the session's Ray (--address), as on a cluster: Ctrl-C ends the command, not
    the Ray it ran on. 500 tiny epochs: far more than a test waits for."""
    return [sys.executable, "-m", "cxr_tune.train", "--data", str(synthetic_root), "--storage", str(tmp_path), "--name", "run",
            "--address", ray_session.get_runtime_context().gcs_address, *extra,
            *[arg for setting in ("epochs=500", "image_size=32", "depth=2", "filters=4") for arg in ("--set", setting)]]


def test_a_run_shows_its_epochs_keeps_rays_output_in_its_log_and_stops_on_ctrl_c_saying_how_to_resume(ray_session, synthetic_root, tmp_path):
    output, status = ctrl_c(train_command(ray_session, synthetic_root, tmp_path), after=" epoch 2/500: ")
    lines = output.splitlines()
    log = tmp_path / "run" / "train.log"
    assert f"Ray logs: {log} (--verbose shows them here too)" in lines and log.is_file(), output[-3000:]
    epochs = [line for line in lines if re.match(r"\[\d\d:\d\d\] run epoch [12]/500: carved validation \(selection set\) AUC \d\.\d{4}, "
                                                 r"sens \d\.\d{3}, spec \d\.\d{3}, (about \d+ min|under a minute) left$", line)]
    assert len(epochs) == 2, output[-3000:]  # each epoch shown as it ended
    assert status == 130, output[-3000:]  # before: Ray Train's own handler, status 1 and no word
    assert f"Stopped; its checkpoints are in {tmp_path / 'run'}: the same command with --name run resumes the run from the last one" in lines
    assert "interrupted" in lines and "Traceback" not in output, output[-3000:]
    cpus_come_free(ray_session, 60)  # the run's actors end with the command that owned them; the next test starts on free CPUs


def test_sigterm_stops_cross_validation_s_folds_as_ctrl_c_does_and_says_how_to_resume_them(ray_session, synthetic_root, tmp_path):
    # Before: the folds ran in threads, and Ctrl-C hung the command in 2 of 3 tries (its threads waited on a Ray that was gone).
    # SIGTERM (kill, a scheduler's stop) met Ray's own handlers: status 1 after a native stack dump, no word on how to resume.
    # One fold at a time (each asks for 1.5 of the 2 CPUs): the stop is the same with one fold running as with two, and the second
    # fold's Train run, about 17 CPU-seconds of start-up, is not paid (folds side by side are tests/train/test_loop.py's).
    output, status = ctrl_c(train_command(ray_session, synthetic_root, tmp_path, "--cv", "2", "--cpus-per-worker", "1.5"), after=" epoch 1/500: ",
                            signum=signal.SIGTERM)
    lines = output.splitlines()
    assert status == 143 and "terminated" in lines and "Traceback" not in output, output[-3000:]
    assert (f"Stopped with 0 of 2 folds done; their checkpoints are in {tmp_path / 'run'}: the same command with --name run keeps the finished "
            "folds and resumes the others from their last checkpoints") in lines, output[-3000:]
    assert list((tmp_path / "run" / "folds" / "train" / "fold1").glob("checkpoint_*")), output[-3000:]  # what a resume starts from
    assert json.loads((tmp_path / "run" / "run.json").read_text())["precision_flags"] == {"precision": "auto", "memory_format": "auto"}
    cpus_come_free(ray_session, 60)  # the run's actors end with the command that owned them; the next test starts on free CPUs


def test_a_run_name_ray_train_cannot_carry_is_refused_in_one_line_before_ray_starts(tmp_path, monkeypatch):
    """Before: ``--name résumé`` started Ray and the run, and ended in Ray Train's ControllerError ("'ascii' codec can't
    encode character"), a traceback from its metrics, which tag each run with its name."""
    import cxr_tune.ray_session
    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import main

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(UserError, match=r"--name 'résumé': Ray Train cannot name a run with non-ASCII characters; give an ASCII name"):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--name", "résumé"])
    assert not (tmp_path / "résumé").exists()


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_run_name_is_refused_as_search_refuses_it(name, tmp_path, monkeypatch):
    """Before: ``--name ''`` silently gave the run a ``train-<timestamp>`` folder, while ``search --name ''`` was refused."""
    import cxr_tune.ray_session
    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import main

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(UserError, match=r"^--name is empty: give a folder name, or leave --name out for a timestamped one$"):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path / "runs"), "--name", name])
    assert not (tmp_path / "runs").exists()


def test_use_gpu_with_no_gpu_per_worker_is_refused_in_one_line_before_the_data_is_read(tmp_path):
    """Before: ``--use-gpu --gpus-per-worker 0`` trained on the CPU, status 0, without a word."""
    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import main

    with pytest.raises(UserError, match=r"^--use-gpu with --gpus-per-worker 0 would train on the CPU; give --gpus-per-worker above 0, or leave out --use-gpu$"):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--use-gpu", "--gpus-per-worker", "0"])


@pytest.mark.parametrize(("flags", "said"), [(["--workers", "3"], "3 worker(s) x 1 CPU(s) but the Ray cluster has 2 CPU(s)"),
                                             (["--cpus-per-worker", "1e9"], "1 worker(s) x 1e+09 CPU(s) but the Ray cluster has 2 CPU(s)"),
                                             (["--use-gpu"], "1 worker(s) x 1 GPU but the Ray cluster has 0 GPU(s)")])
def test_a_run_the_cluster_cannot_hold_leaves_no_run_folder_and_a_resumed_one_keeps_its_own(flags, said, tmp_path, monkeypatch):
    """Before: refused once Ray had started, the command left ``runs/<name>/`` (run.json, train.log, a lock) behind,
    although a refused command leaves nothing. A run folder that was there before (a resume) is not the command's to remove."""
    import contextlib

    import ray

    import cxr_tune.ray_session
    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import main

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})  # a 2-CPU cluster without a GPU, without starting one
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)  # a GPU here that the cluster lacks: refused once Ray runs
    argv = ["--data", str(folder_with_bad_files(tmp_path / "data")), "--storage", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--set", "image_size=32", *flags]
    with pytest.raises(UserError, match=re.escape(said)):
        main([*argv, "--name", "new"])
    assert not (tmp_path / "runs" / "new").exists()
    (tmp_path / "runs" / "old").mkdir()
    (tmp_path / "runs" / "old" / "notes.txt").write_text("kept")
    with pytest.raises(UserError, match=re.escape(said)):
        main([*argv, "--name", "old"])
    assert (tmp_path / "runs" / "old" / "notes.txt").read_text() == "kept"


def test_a_run_resumed_under_its_name_with_other_settings_is_refused_before_ray_starts(synthetic_root, tmp_path):
    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import main
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    checkpoint = tmp_path / "run" / "checkpoint_000"
    checkpoint.mkdir(parents=True)
    save_state(str(checkpoint), {"hparams": HParams(image_size=32, depth=2, filters=4, lr=10.0).to_dict(), "epoch": 1}, {})
    with pytest.raises(UserError, match=r"'\S+/run' holds a run with other settings \(lr=10.0 there, 0.001 here\); give the same settings"):
        main(["--data", str(synthetic_root), "--storage", str(tmp_path), "--name", "run",
              *[arg for setting in ("image_size=32", "depth=2", "filters=4", "lr=0.001") for arg in ("--set", setting)]])


@pytest.mark.parametrize(("flags", "said"), [(["--precision", "fp32"], "--precision auto there, fp32 here"),
                                             (["--memory-format", "contiguous"], "--memory-format auto there, contiguous here")])
def test_a_run_resumed_under_its_name_with_another_precision_or_memory_format_is_refused_before_ray_starts(tmp_path, flags, said):
    """Before: it resumed, trained its later epochs in fp32 after bf16 ones, and metrics.json said fp32 for a best epoch trained in bf16."""
    import json

    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import RUN_FILE, main
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    checkpoint = tmp_path / "run" / "checkpoint_000"
    checkpoint.mkdir(parents=True)
    save_state(str(checkpoint), {"hparams": HParams().to_dict(), "epoch": 1}, {})
    (tmp_path / "run" / RUN_FILE).write_text(json.dumps({"precision_flags": {"precision": "auto", "memory_format": "auto"}}))
    with pytest.raises(UserError, match=rf"'\S+/run' holds a run with other settings \({said}\); give the same settings"):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--name", "run", *flags])


@pytest.mark.parametrize(("flags", "said"), [(["--precision", "fp32"], "--precision auto there, fp32 here"),
                                             (["--memory-format", "contiguous"], "--memory-format auto there, contiguous here")])
def test_cross_validation_resumed_under_its_name_with_another_precision_or_memory_format_is_refused_before_ray_starts(
        synthetic_root, tmp_path, monkeypatch, flags, said):
    """Before: --cv checked only its plan (k, seed, hyperparameters, images), after Ray started, so the resumed folds
    trained in fp32 beside finished bf16 ones, all in one cv.md."""
    import json

    import cxr_tune.ray_session
    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import RUN_FILE, main
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", no_ray)
    settings = [arg for setting in ("image_size=32", "depth=2", "filters=4") for arg in ("--set", setting)]
    checkpoint = tmp_path / "run" / "folds" / "train" / "fold1" / "checkpoint_000"
    checkpoint.mkdir(parents=True)
    save_state(str(checkpoint), {"hparams": HParams(image_size=32, depth=2, filters=4).to_dict(), "epoch": 1}, {})
    (tmp_path / "run" / RUN_FILE).write_text(json.dumps({"precision_flags": {"precision": "auto", "memory_format": "auto"}}))
    with pytest.raises(UserError, match=rf"'\S+/run' holds a run with other settings \({said}\); give the same settings"):
        main(["--data", str(synthetic_root), "--storage", str(tmp_path), "--name", "run", "--cv", "2", *settings, *flags])


def test_a_run_resumed_under_its_name_on_another_split_is_refused_before_ray_starts(synthetic_root, tmp_path):
    """Before: it resumed, scored its later epochs on another carved validation set, and chose its best epoch across the two."""
    import json

    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import RUN_FILE, main
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    settings = [arg for setting in ("image_size=32", "depth=2", "filters=4") for arg in ("--set", setting)]
    checkpoint = tmp_path / "run" / "checkpoint_000"
    checkpoint.mkdir(parents=True)
    save_state(str(checkpoint), {"hparams": HParams(image_size=32, depth=2, filters=4).to_dict(), "epoch": 1}, {})
    (tmp_path / "run" / RUN_FILE).write_text(json.dumps({"data": "1500 images, sha256 0123456789ab", "deciding_set": "carved"}))
    with pytest.raises(UserError, match=r"holds a run on other data or another split \(data: 1500 images, sha256 0123456789ab there, "
                                        r"\d+ images, sha256 [0-9a-f]{12} here\); give the same data"):
        main(["--data", str(synthetic_root), "--storage", str(tmp_path), "--name", "run", "--split-seed", "1", *settings])


def test_a_cache_that_cannot_be_written_stops_a_run_before_its_folder_is_made(tmp_path, monkeypatch):
    """Before: the run folder and its run.json were written and Ray started, and only the cache build then stopped it
    in one line, leaving a half-started run folder behind."""
    import cxr_tune.ray_session
    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import main

    data, read_only = read_only_cache(tmp_path, monkeypatch)
    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(UserError, match=rf"^the image cache '{read_only}' cannot be written: no permission to write in '{read_only}', and it holds no 32 px copy"):
        main(["--data", str(data), "--storage", str(tmp_path / "runs"), "--name", "run", "--cache-dir", str(read_only), "--set", "image_size=32"])
    assert not (tmp_path / "runs" / "run").exists()


def test_workers_sharing_a_gpu_are_refused_in_one_line_before_the_data_is_read(tmp_path):
    """Before: the data scan, Ray's start, then a ValueError traceback from the trainer (NCCL refuses two ranks on one GPU)."""
    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import main

    with pytest.raises(UserError, match=r"^--gpus-per-worker 0.5 with --workers 2: the workers of one DDP run cannot share a GPU; give each a whole one$"):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--workers", "2", "--use-gpu", "--gpus-per-worker", "0.5"])


@pytest.mark.parametrize("flags", [["--workers", "3"], ["--workers", "2", "--cpus-per-worker", "1.5"], ["--workers", "3", "--cv", "2"]])
def test_more_worker_cpus_than_the_cluster_has_are_refused_in_one_line_before_training(flags, tmp_path, monkeypatch):
    """Before: Ray Train waited for workers that could never start, and after minutes a ControllerError traceback."""
    import ray

    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import build_parser, run_resources

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    args = build_parser().parse_args(["--storage", str(tmp_path), *flags])
    with pytest.raises(UserError, match=r"^\d worker\(s\) x [\d.]+ CPU\(s\) but the Ray cluster has 2 CPU\(s\); lower --workers or --cpus-per-worker$"):
        run_resources(args, 0.0)


def test_cross_validation_resumed_on_other_data_is_refused(tmp_path):
    import json

    from cxr_tune.errors import UserError
    from cxr_tune.train.crossval import PLAN_FILE, _check_plan

    plan = {"k": 2, "seed": 0, "hparams": {"lr": 0.001}, "images": "200 images, sha256 0123456789ab"}
    _check_plan(str(tmp_path), plan, resume=False)
    assert json.loads((tmp_path / PLAN_FILE).read_text()) == plan
    _check_plan(str(tmp_path), plan, resume=True)  # the same folds: resumed
    with pytest.raises(UserError, match=r"other settings \(data: 200 images, sha256 0123456789ab there, 120 images, sha256 ba9876543210 here\)"):
        _check_plan(str(tmp_path), {**plan, "images": "120 images, sha256 ba9876543210"}, resume=True)


def test_the_data_summary_says_which_files_were_skipped_and_where_the_list_is(tmp_path, monkeypatch, capsys):
    from cxr_tune.train.__main__ import main

    root = folder_with_bad_files(tmp_path / "data")
    lines = lines_before_ray(main, ["--data", str(root), "--storage", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")], monkeypatch, capsys)
    normal = root / "train" / "NORMAL"
    assert (f"Skipped 4 file(s) that cannot be used ({normal / 'IM-0100-0001.jpeg'}: truncated image (file ends before the image data does); "
            f"{normal / 'IM-0101-0001.jpeg'}: empty file (0 bytes); {normal / 'IM-0102-0001.jpeg'}: not an image Pillow can read; and 1 more); "
            f"python -m cxr_tune.data inspect {root} lists them all.") in lines


def test_a_run_records_its_threads_precision_and_code_beside_its_data_and_its_metrics_in_json_types(tmp_path, capsys):
    """run.json named a run's images, not how it computed nor with which code: a result could not be made again as it was."""
    import contextlib
    import json
    from types import SimpleNamespace

    from cxr_tune.provenance import provenance
    from cxr_tune.train.__main__ import RUN_FILE, add_to_run_record, report
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    run = tmp_path / "run"
    checkpoint = run / "checkpoint_000"
    checkpoint.mkdir(parents=True)
    row = {"epoch": 1, "val_objective": 0.7, "val_auc": 0.8, "val_loss": 0.5, "val_threshold": 0.5, "val_sensitivity": 0.7,
           "val_specificity": 0.7, "val_balanced_accuracy": 0.7, "val_n": 11, "precision": "fp32", "channels_last": True}
    save_state(str(checkpoint), {"hparams": HParams().to_dict(), "epoch": 0, "history": [row]}, {})
    (run / RUN_FILE).write_text(json.dumps({"data": "200 images, sha256 0123456789ab", "deciding_set": "carved"}))
    add_to_run_record(str(run), {"threads": 2, "provenance": provenance()})  # what train records as the run starts
    result = SimpleNamespace(error=None, best_checkpoints=[], checkpoint=SimpleNamespace(as_directory=lambda: contextlib.nullcontext(str(checkpoint))))
    split = SimpleNamespace(source=SimpleNamespace(description="SYNTHETIC", synthetic=True))
    assert report(result, HParams(), split, str(run), "carved") == 0
    record = json.loads((run / RUN_FILE).read_text())
    assert record == {"data": "200 images, sha256 0123456789ab", "deciding_set": "carved", "threads": 2, "provenance": provenance(),
                      "precision": {"precision": "fp32", "channels_last": True}}
    # metrics.json in JSON's own types: before, numpy scalars went through str() ("val_n": "11", "channels_last": "True").
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["val_metrics"]["val_n"] == 11 and metrics["val_metrics"]["val_auc"] == 0.8 and metrics["best_epoch"] == 1
    assert metrics["precision"] == {"precision": "fp32", "channels_last": True}


def test_cross_validation_s_report_says_what_the_folds_computed_in_and_with_which_code(tmp_path):
    """cv.md recorded the command and hyperparameters, not the precision the folds resolved, their threads or the code."""
    from cxr_tune.provenance import describe, provenance
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.crossval import setup_lines

    checkpoint = tmp_path / "run" / "folds" / "train" / "fold1" / "checkpoint_000"
    checkpoint.mkdir(parents=True)
    save_state(str(checkpoint), {"epoch": 0, "run": {"precision": "bf16", "channels_last": True, "precision_reason": "auto"}}, {})
    lines = setup_lines(str(tmp_path / "run"), 2, provenance()).splitlines()
    assert lines == ["", "Computed in: bf16, channels_last; 2 torch thread(s) per worker  ", f"Code: {describe(provenance())}"]


def test_a_run_resumed_with_other_threads_or_on_a_cache_of_another_layout_is_warned_not_refused(tmp_path, capsys):
    """A resume on a cache built with another CPU count (another block layout, so another order of the training images) or with
    other torch threads was taken silently, though its later epochs differ from an uninterrupted run's."""
    import json

    from cxr_tune.train.__main__ import RUN_FILE, warn_if_resumed_elsewhere
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams

    run = tmp_path / "run"
    (run / "checkpoint_000").mkdir(parents=True)
    save_state(str(run / "checkpoint_000"), {"hparams": HParams().to_dict(), "epoch": 2}, {})
    (run / RUN_FILE).write_text(json.dumps({"data": "200 images, sha256 0123456789ab", "deciding_set": "carved", "threads": 2, "cache_files": 4}))
    warn_if_resumed_elsewhere(str(run), {"threads": 2, "cache_files": 4})
    assert capsys.readouterr().err == ""
    warn_if_resumed_elsewhere(str(run), {"threads": 1, "cache_files": 2})
    assert capsys.readouterr().err == ("Warning: resumed on 1 torch thread(s) per worker (2 before) and 2 Parquet file(s) in the image cache "
                                       "(4 before): epochs from here will not be bit-identical to an uninterrupted run\n")
    (run / RUN_FILE).write_text(json.dumps({"data": "200 images, sha256 0123456789ab", "deciding_set": "carved"}))  # from before the record
    warn_if_resumed_elsewhere(str(run), {"threads": 1, "cache_files": 2})
    assert capsys.readouterr().err == ""


def test_a_run_resumed_where_auto_means_another_precision_says_so_and_its_records_name_both(tmp_path, capsys, monkeypatch):
    """--precision auto resolves per machine: a run started on a CPU with native bf16 and resumed (same flags) on one without
    trained its later epochs in fp32 and said nothing, and metrics.json named the last epoch's fp32 for a best epoch whose
    weights trained in bf16 first."""
    import contextlib
    import json
    from types import SimpleNamespace

    import cxr_tune.train.precision
    from cxr_tune.train.__main__ import RUN_FILE, newest_states, note_precision_on_resume, report
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.hparams import HParams
    from cxr_tune.train.precision import resolve

    def epochs(first: int, last: int, bf16_here: bool) -> list[dict]:
        monkeypatch.setattr(cxr_tune.train.precision, "cpu_has_native_bf16", lambda: bf16_here)
        precision = resolve("auto", "cpu", "auto")  # as each epoch of the loop resolves it on this machine
        return [{"epoch": e, "val_objective": 0.5 + e / 100, "val_auc": 0.8, "val_loss": 0.5, "val_threshold": 0.5, "val_sensitivity": 0.7,
                 "val_specificity": 0.7, "val_balanced_accuracy": 0.7, "precision": precision.name, "channels_last": precision.channels_last}
                for e in range(first, last + 1)]

    run = tmp_path / "run"
    (run / "checkpoint_000").mkdir(parents=True)
    history = epochs(1, 3, bf16_here=True)  # started where auto means bf16, stopped after epoch 3
    save_state(str(run / "checkpoint_000"), {"hparams": HParams().to_dict(), "epoch": 2, "history": history}, {})

    note_precision_on_resume(newest_states([str(run)]), "auto", "auto", use_gpu=False, epochs=8)  # resumed on the same machine: nothing to say
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(cxr_tune.train.precision, "cpu_has_native_bf16", lambda: False)  # resumed where auto means fp32
    note_precision_on_resume(newest_states([str(run)]), "auto", "auto", use_gpu=False, epochs=3)  # finished: no epoch trains, nothing to say
    assert capsys.readouterr().err == ""
    note_precision_on_resume(newest_states([str(run)]), "auto", "auto", use_gpu=False, epochs=8)
    assert capsys.readouterr().err == ("Note: the last epochs so far trained in bf16, the next train in fp32, channels_last (auto: this CPU has no "
                                       "native bf16, which would be emulated and slower than fp32); each epoch records its own precision, and "
                                       "a model's records name every precision its epochs trained in\n")

    history += epochs(4, 5, bf16_here=False)
    history[-1]["val_objective"] = 0.1  # the best epoch is 4: its weights trained in bf16 for 3 epochs, then in fp32
    (run / "checkpoint_001").mkdir()
    save_state(str(run / "checkpoint_001"), {"hparams": HParams().to_dict(), "epoch": 4, "history": history}, {})
    note_precision_on_resume(newest_states([str(run)]), "auto", "auto", use_gpu=False, epochs=8)  # resumed again where it last trained: said once only
    assert capsys.readouterr().err == ""
    result = SimpleNamespace(error=None, best_checkpoints=[], checkpoint=SimpleNamespace(as_directory=lambda: contextlib.nullcontext(str(run / "checkpoint_001"))))
    split = SimpleNamespace(source=SimpleNamespace(description="SYNTHETIC", synthetic=True))
    assert report(result, HParams(), split, str(run), "carved") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best_epoch"] == 4 and metrics["precision"] == {"precision": "bf16 (epochs 1-3), fp32 (epoch 4)", "channels_last": True}
    assert json.loads((run / RUN_FILE).read_text())["precision"] == {"precision": "bf16 (epochs 1-3), fp32 (epochs 4-5)", "channels_last": True}


def test_cross_validation_s_report_names_each_fold_s_precisions_when_a_fold_resumed_in_another(tmp_path):
    """cv.md named fold 1's precision for every fold, though a fold resumed where --precision auto means fp32 trained its
    later epochs in fp32."""
    from cxr_tune.provenance import provenance
    from cxr_tune.train.checkpoints import save_state
    from cxr_tune.train.crossval import setup_lines

    for fold, names in (("fold1", ["bf16", "bf16", "bf16"]), ("fold2", ["bf16", "bf16", "fp32"])):
        checkpoint = tmp_path / "run" / "folds" / "train" / fold / "checkpoint_000"
        checkpoint.mkdir(parents=True)
        history = [{"epoch": e, "precision": name, "channels_last": True} for e, name in enumerate(names, start=1)]
        save_state(str(checkpoint), {"epoch": 2, "history": history, "run": {"precision": names[-1], "channels_last": True}}, {})
    lines = setup_lines(str(tmp_path / "run"), 2, provenance()).splitlines()
    assert lines[1] == "Computed in: fold1: bf16, channels_last; fold2: bf16 (epochs 1-2), fp32 (epoch 3), channels_last; 2 torch thread(s) per worker  "


def test_use_gpu_on_a_machine_without_one_is_refused_in_one_line_before_the_data_is_read(tmp_path, monkeypatch):
    """Before: the same line came only after the data scan and Ray's start (20-30 s)."""
    import torch

    from cxr_tune.errors import UserError
    from cxr_tune.train.__main__ import main

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if "ray" in sys.modules:  # the suite's shared Ray, when an earlier test started it: this command would start its own
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # as on this machine; a GPU machine's test too
    with pytest.raises(UserError, match=r"^1 worker\(s\) x 1 GPU but the Ray cluster has 0 GPU\(s\)$"):
        main(["--data", str(tmp_path / "not-read"), "--storage", str(tmp_path), "--use-gpu"])
