"""``python -m cxr_tune.search`` flags: every bad one stops with one line, before Ray starts."""

from __future__ import annotations

import json

import pytest

from cxr_tune.errors import UserError
from cxr_tune.search.__main__ import main
from cxr_tune.search.options import SearchOptions
from cxr_tune.search.runner import plan_search
from cxr_tune.search.space import load_space
from tests.conftest import folder_with_bad_files, lines_before_ray, read_only_cache, run_cli


@pytest.mark.parametrize(("flags", "message"), [
    # out-of-range numbers (--trials 0, --time-budget nan, ...) stop in argparse: tests/test_cliargs.py
    (["--space", "narrow", "--max-epochs", "2"], "less than the space's ASHA grace_period 4"),
    (["--space", "nope"], "no search space named 'nope'"),
    (["--name", "a/b"], "must be a plain folder name"),
    (["--name", ""], "--name is empty"),
    (["--name", "exp#2"], "--name 'exp#2': '#' cannot be in a folder name (a URI reads them as syntax)"),
    (["--data", "/no/such/folder"], "does not exist"),
])
def test_bad_flags_are_user_errors(tmp_path, flags, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        main(["--space", "smoke", "--storage", str(tmp_path), "--synthetic-n", "60", *flags])


@pytest.mark.parametrize(("flags", "message"), [
    (["--resume"], "--resume needs --name"),
    (["--resume", "--name", "never-ran"], "is not a cxr_tune experiment"),
])
def test_resume_needs_an_experiment(tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        main(["--storage", str(tmp_path), *flags])


def test_a_copied_experiment_is_not_resumed_in_place_of_the_original(tmp_path):
    import shutil

    from tests.conftest import ROOT

    shutil.copytree(ROOT / "results" / "real" / "external", tmp_path / "copy")  # run in another checkout's results/real/external
    with pytest.raises(UserError, match=r"'\S+/copy' is a copy of the experiment run in '\S+/external': Ray Tune's saved state names that folder") as refused:
        main(["--storage", str(tmp_path), "--name", "copy", "--resume"])
    assert "--report-only and export cannot read it either" in str(refused.value)  # committed without Tune's state: no command reads it
    (tmp_path / "copy" / "tuner.pkl").write_bytes(b"")
    (tmp_path / "copy" / "experiment_state-2026-12-06_00-00-00.json").write_text("{}")
    with pytest.raises(UserError, match=r"only it can be resumed \(--report-only and export read a copy\)"):
        main(["--storage", str(tmp_path), "--name", "copy", "--resume"])


def test_an_existing_experiment_is_not_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "experiment.json").write_text("{}")
    with pytest.raises(UserError, match=r"already exists; continue it with: python -m cxr_tune.search --name taken --storage \S+ --resume"):
        main(["--space", "smoke", "--storage", str(tmp_path), "--name", "taken", "--synthetic-n", "60"])


def test_a_cache_that_cannot_be_written_stops_a_search_before_its_experiment_is_written_so_the_corrected_command_runs(tmp_path, monkeypatch, capsys):
    """The experiment used to be written first, recording the read-only --cache-dir: the same command with a writable
    one was then refused as an experiment that exists, and --resume could not take another --cache-dir."""
    data, read_only = read_only_cache(tmp_path, monkeypatch)
    argv = ["--space", "smoke", "--storage", str(tmp_path / "results"), "--name", "t1d", "--data", str(data)]
    with pytest.raises(UserError, match=rf"the image cache '{read_only}' cannot be written: no permission to write in '{read_only}', and it holds no \d+ px copy"):
        main([*argv, "--cache-dir", str(read_only)])
    assert not (tmp_path / "results" / "t1d").exists()
    capsys.readouterr()
    assert lines_before_ray(main, [*argv, "--cache-dir", str(tmp_path / "cache")], monkeypatch, capsys)[-1].startswith("Ray and Optuna logs: ")


def test_one_line_exit_status_2_and_no_ray(tmp_path):
    done = run_cli("cxr_tune.search", "--space", str(tmp_path / "missing.yaml"), "--storage", str(tmp_path))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: search space file '{tmp_path / 'missing.yaml'}' does not exist"]
    unknown = run_cli("cxr_tune.search", "--select", "accuracy")
    assert unknown.returncode == 2 and "invalid choice: 'accuracy'" in unknown.stderr


def test_defaults_use_the_machine_well_and_impossible_resources_are_refused():
    space = load_space("smoke")
    cpu = plan_search(SearchOptions(space="smoke", trials=8), space, {"CPU": 2})
    assert cpu.concurrency == 2 and cpu.resources.workers == 1 and not cpu.resources.use_gpu
    assert cpu.concurrency * (cpu.resources.cpus_per_worker + 0.01) <= 2 and cpu.cpus_held <= 2
    # Every trial starts (its driver holds a hundredth of a CPU); a Train run whose workers find no room fails after its start timeout.
    with pytest.raises(UserError, match=r"--concurrency 4 with 1 x 1 CPUs a trial needs 4.04 CPUs, the Ray cluster has 2: the trials that do not fit would fail"):
        plan_search(SearchOptions(space="smoke", trials=8, concurrency=4, cpus_per_worker=1), space, {"CPU": 2})
    with pytest.raises(UserError, match=r"--concurrency 3 with 1 x 1 GPU a trial needs 3 GPUs, the Ray cluster has 1: the trials that do not fit would fail"):
        plan_search(SearchOptions(space="smoke", trials=8, concurrency=3, gpus_per_worker=1), space, {"CPU": 16, "GPU": 1})
    big = plan_search(SearchOptions(space="smoke", trials=20), space, {"CPU": 16})
    assert big.concurrency == 8 and big.resources.cpus_per_worker >= 1.9
    gpu = plan_search(SearchOptions(space="smoke", trials=8), space, {"CPU": 16, "GPU": 4})
    assert gpu.resources.use_gpu and gpu.resources.gpus_per_worker == 0.25 and gpu.concurrency == 8  # small trials share GPUs
    whole = plan_search(SearchOptions(space="smoke", trials=8, gpus_per_worker=1), space, {"CPU": 16, "GPU": 4})
    assert whole.concurrency == 4 and whole.resources.cpus_per_worker >= 3.9
    with pytest.raises(UserError, match="fraction of one GPU or whole GPUs"):
        plan_search(SearchOptions(space="smoke", gpus_per_worker=1.5), space, {"CPU": 16, "GPU": 4})
    with pytest.raises(UserError, match="GPU"):
        plan_search(SearchOptions(space="smoke", gpus_per_worker=1), space, {"CPU": 2})
    with pytest.raises(UserError, match="one trial needs 2 x 4 CPUs"):
        plan_search(SearchOptions(space="smoke", workers_per_trial=2, cpus_per_worker=4), space, {"CPU": 2})
    # It read "one trial needs 1 x 2 CPUs but the Ray cluster has 2", which looked like a bug: the driver's hundredth was unsaid.
    with pytest.raises(UserError, match=r"^one trial needs 1 x 2 CPUs plus 0.01 for its Tune driver = 2.01 CPUs, the Ray cluster has 2; "
                                        r"at most 1.99 CPUs per worker with 1 worker\(s\); lower --workers-per-trial or --cpus-per-worker$"):
        plan_search(SearchOptions(space="smoke", trials=8, concurrency=4, cpus_per_worker=2), space, {"CPU": 2})


def test_a_cluster_no_worker_has_joined_yet_is_refused_in_one_line(monkeypatch):
    """A head started with --num-cpus=0 (cluster.yaml's) before its workers join offers no CPU, so Ray lists none. Before:
    the search planned "1 worker(s) x 0.99 CPU per trial" from a CPU it made up, then waited 10 minutes for a free CPU
    to build the image cache ("other work holds all 0 CPU(s)") and gave up."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    space = load_space("smoke")
    for cluster in ({"GPU": 0}, {}):
        with pytest.raises(UserError, match=r"^the Ray cluster at 10.0.0.10:6379 has no CPU yet: no worker node has joined; "
                                            r"wait until `ray status` lists them$"):
            plan_search(SearchOptions(space="smoke", address="10.0.0.10:6379"), space, cluster)
    with pytest.raises(UserError, match=r"^the Ray cluster has no CPU yet"):
        plan_search(SearchOptions(space="smoke", address="auto"), space, {"GPU": 0})


def test_cpus_a_local_ray_cannot_give_are_refused_before_it_starts(tmp_path, monkeypatch):
    """Before: --concurrency 4 --cpus-per-worker 2 on a 2-CPU machine was refused only once Ray had started (32 s)."""
    import cxr_tune.ray_session
    from cxr_tune.search import runner

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.setattr(runner, "own_ray_cpus", lambda address: 2.0)  # a machine of 2 CPUs, whatever this one has
    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", no_ray)
    argv = ["--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp", "--cache-dir", str(tmp_path / "cache")]
    with pytest.raises(UserError, match=r"^one trial needs 1 x 2 CPUs plus 0.01 for its Tune driver = 2.01 CPUs, this machine's Ray will have 2;"):
        main([*argv, "--concurrency", "4", "--cpus-per-worker", "2"])
    with pytest.raises(UserError, match=r"^--concurrency 4 with 1 x 0.5 CPUs a trial needs 2.04 CPUs, this machine's Ray will have 2: "):
        main([*argv, "--concurrency", "4", "--cpus-per-worker", "0.5"])
    assert not (tmp_path / "runs" / "exp").exists()


def test_weights_must_name_a_torchvision_architecture_of_the_space_and_fit_it(tmp_path):
    """--weights ARCH=PATH is checked before Ray starts: the space searches that architecture, the file exists and fits it
    (a UserError is the CLI's one ``error:`` line and exit status 2)."""
    import torch
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    (tmp_path / "page.html").write_text("<html>a download that failed</html>")
    for flags, message in ((["--space", "gpu", "--weights", f"resnet18={tmp_path / 'missing.pth'}"], "does not exist"),
                           (["--space", "gpu", "--weights", f"resnet18={tmp_path / 'page.html'}"], "cannot be read as a PyTorch file of tensors"),
                           (["--space", "smoke", "--weights", f"resnet18={tmp_path / 'resnet18.pth'}"], "torchvision architectures (none)"),
                           (["--space", "gpu", "--weights", str(tmp_path / "resnet18.pth")], "must be ARCH=PATH"),
                           (["--space", "gpu", "--weights", f"densenet121={tmp_path / 'resnet18.pth'}"], "fills")):
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            main([*flags, "--storage", str(tmp_path)])


def test_the_data_summary_says_which_files_were_skipped_and_where_the_list_is(tmp_path, monkeypatch, capsys):
    root = folder_with_bad_files(tmp_path / "data")
    argv = ["--space", "smoke", "--data", str(root), "--storage", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    lines = [line for line in lines_before_ray(main, argv, monkeypatch, capsys) if line.startswith("Skipped ")]
    assert len(lines) == 1 and lines[0].startswith(f"Skipped 4 file(s) that cannot be used ({root / 'train' / 'NORMAL' / 'IM-0100-0001.jpeg'}: truncated")
    assert lines[0].endswith(f"; and 1 more); python -m cxr_tune.data inspect {root} lists them all.")


def test_gpus_a_local_ray_cannot_give_are_refused_before_the_data_is_read_in_train_s_line(tmp_path, monkeypatch):
    """Before: --gpus-per-worker 1 on a machine without a GPU was refused only after the data scan and Ray's start (20-30 s),
    in a line of its own; train refuses --use-gpu there at once."""
    import sys

    import torch

    import cxr_tune.ray_session

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray started")

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if "ray" in sys.modules:  # the suite's shared Ray, when an earlier test started it: this command would start its own
        monkeypatch.setattr(sys.modules["ray"], "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)  # as on this machine; a GPU machine's test too
    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", no_ray)
    argv = ["--space", "smoke", "--data", str(tmp_path / "not-read"), "--storage", str(tmp_path / "runs"), "--name", "exp"]
    with pytest.raises(UserError, match=r"^1 worker\(s\) x 1 GPU but the Ray cluster has 0 GPU\(s\)$"):
        main([*argv, "--gpus-per-worker", "1"])
    with pytest.raises(UserError, match=r"^2 worker\(s\) x 1 GPU but the Ray cluster has 0 GPU\(s\)$"):
        main([*argv, "--gpus-per-worker", "1", "--workers-per-trial", "2"])
    assert not (tmp_path / "runs" / "exp").exists()
    # a running cluster's GPUs are Ray's to count, in the same line
    with pytest.raises(UserError, match=r"^1 worker\(s\) x 0.5 GPU but the Ray cluster has 0 GPU\(s\)$"):
        plan_search(SearchOptions(space="smoke", gpus_per_worker=0.5), load_space("smoke"), {"CPU": 2})


def test_a_plan_the_cluster_cannot_hold_leaves_no_experiment_so_the_corrected_command_runs(tmp_path, monkeypatch, capsys):
    """Before: refused (--concurrency 2 at 1.5 CPUs a trial on 2 CPUs) after the experiment was written, the corrected
    command was refused as "already exists", and --resume refused --concurrency: no way on under that name."""
    import contextlib

    import ray

    import cxr_tune.ray_session

    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", lambda *args, **kwargs: contextlib.nullcontext())
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})  # a 2-CPU cluster, without starting one
    argv = ["--space", "smoke", "--data", str(folder_with_bad_files(tmp_path / "data")), "--storage", str(tmp_path / "runs"), "--name", "exp",
            "--cache-dir", str(tmp_path / "cache"), "--concurrency", "2", "--cpus-per-worker", "1.5"]
    with pytest.raises(UserError, match=r"^--concurrency 2 with 1 x 1.5 CPUs a trial needs .* lower --concurrency or --cpus-per-worker"):
        main(argv)
    assert not (tmp_path / "runs" / "exp").exists()  # nothing trained, nothing kept: the same --name is free
    capsys.readouterr()
    assert lines_before_ray(main, argv[:-4], monkeypatch, capsys)[-1].startswith("Ray and Optuna logs: ")  # the corrected command starts


def test_a_cluster_that_cannot_be_joined_leaves_no_experiment_so_the_same_command_runs_once_it_is_up(tmp_path, monkeypatch, capsys):
    """Before: ``--address auto`` with no cluster running on the node (or a head that refused us) was one line, after the
    experiment was written; the same command, once the cluster was up, was refused as "already exists"."""
    import ray

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    argv = ["--space", "smoke", "--data", str(folder_with_bad_files(tmp_path / "data")), "--storage", str(tmp_path / "runs"), "--name", "exp",
            "--cache-dir", str(tmp_path / "cache"), "--address", "auto"]
    with pytest.raises(UserError, match=r"^--address auto: no Ray cluster answered there \(Could not find any running Ray instance\. .*\); "
                                        r"start one with `ray start --head`, or give the head node's address \(HOST:6379\)$"):
        main(argv)
    assert not (tmp_path / "runs" / "exp").exists()  # nothing trained, nothing kept: the same --name is free
    capsys.readouterr()
    assert lines_before_ray(main, argv, monkeypatch, capsys)[-1].startswith("Ray and Optuna logs: ")  # the same command starts


def test_experiment_json_records_the_code_s_commit_library_versions_and_the_folder_the_command_ran_in(tmp_path, monkeypatch, capsys):
    """It named the code "cxr_tune 0.1.0" only, a version no commit ever changed; and the command as typed
    (``--data ../data``) without the folder it was typed in, which the report and the model card print; and a folder
    with a space unquoted, a command that did not run again. It is the command main was given (here not sys.argv, pytest's)."""
    from cxr_tune.provenance import provenance

    folder_with_bad_files(tmp_path / "my data")
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    argv = ["--space", "smoke", "--data", "../my data", "--storage", "../runs", "--name", "exp", "--cache-dir", "../cache"]
    lines_before_ray(main, argv, monkeypatch, capsys)
    info = json.loads((tmp_path / "runs" / "exp" / "experiment.json").read_text())
    assert info["provenance"] == provenance()
    assert info["command"] == "python -m cxr_tune.search --space smoke --data '../my data' --storage ../runs --name exp --cache-dir ../cache"
    assert info["command_cwd"] == str(tmp_path / "here")


def test_a_search_whose_every_trial_failed_ends_with_status_1_not_the_bad_input_status_2(tmp_path, monkeypatch, capsys):
    """Every trial of a search that ran failed (an out-of-memory config): the command ended with exit status 2, the status
    of a bad flag or file, for what is a runtime failure. It says why in one line and ends with 1."""
    from cxr_tune.errors import run_cli
    from cxr_tune.search import finish, runner
    from cxr_tune.search.finish import NothingToSelect

    def every_trial_failed(experiment_dir, **kwargs):
        raise NothingToSelect(f"no trial of {experiment_dir} trained an epoch, so there is nothing to select or export")

    monkeypatch.setattr(runner, "run_search", lambda options, **kwargs: (options.experiment_dir, "complete"))
    monkeypatch.setattr(finish, "finish_experiment", every_trial_failed)
    argv = ["--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp", "--cache-dir", str(tmp_path / "cache"), "--no-final-fit"]
    with pytest.raises(SystemExit) as ended:
        run_cli(main, argv)
    assert ended.value.code == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: no trial of {tmp_path / 'runs' / 'exp'} trained an epoch")


def test_selects_help_defines_each_criterion():
    """--select's choices are formulas a newcomer has to look up otherwise; --help says what each one scores."""
    from cxr_tune.search.__main__ import build_parser
    from cxr_tune.selection import CRITERIA

    text = " ".join(build_parser().format_help().split())
    for definition in ["balanced_accuracy: (sensitivity + specificity) / 2", "youden: sensitivity + specificity - 1",
                       "gmean: sqrt(sensitivity x specificity)", "min_sens_spec: the smaller of sensitivity and specificity"]:
        assert definition in text
    assert all(f"{name}: " in text for name in CRITERIA), "every choice of --select is defined"


def test_a_space_made_for_gpus_on_a_cluster_without_one_says_its_trials_run_on_the_cpu():
    """Before: `search --space gpu` on a machine without a GPU trained DenseNet-121 at up to 224 px on the CPU without a word."""
    from cxr_tune.search.runner import no_gpu_note

    gpu, smoke = load_space("gpu"), load_space("smoke")
    assert no_gpu_note(SearchOptions(space="gpu"), gpu, {"CPU": 2}) == (
        "Note: the space 'gpu' is made for GPUs (resnet18, densenet121 among its networks), but this cluster has no GPU: "
        "the space's trials run on the CPU")
    assert no_gpu_note(SearchOptions(space="gpu"), gpu, {"CPU": 16, "GPU": 1}) is None
    assert no_gpu_note(SearchOptions(space="gpu", gpus_per_worker=0.0), gpu, {"CPU": 2}) is None  # asked for by the user
    assert no_gpu_note(SearchOptions(space="smoke"), smoke, {"CPU": 2}) is None  # the project's CNN: made for the CPU too


@pytest.mark.parametrize("stop", ["in the search", "before Tune took over Ctrl-C"])
def test_a_stopped_search_says_how_to_continue_it_on_stderr_wherever_the_stop_landed(stop, tmp_path, monkeypatch, capsys):
    """Before: the resume line went to stderr when the stop landed before Tune took over Ctrl-C, to stdout once trials ran;
    a pipeline reading the two streams apart found it in either. Now it is on stderr, and stdout holds no next step."""
    from cxr_tune.errors import run_cli
    from cxr_tune.search import finish, runner

    experiment = tmp_path / "runs" / "exp"

    def stopped_search(options, **kwargs):
        experiment.mkdir(parents=True)
        (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        if stop == "before Tune took over Ctrl-C":
            raise KeyboardInterrupt
        return str(experiment), "interrupted"

    monkeypatch.setattr(runner, "run_search", stopped_search)
    monkeypatch.setattr(finish, "finish_experiment", lambda *args, **kwargs: {})
    with pytest.raises(SystemExit) as ended:
        run_cli(main, ["--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp", "--no-final-fit"])
    out, err = capsys.readouterr()
    assert ended.value.code == 130
    assert f"The search was interrupted; continue it with:\n  python -m cxr_tune.search --name exp --storage {tmp_path / 'runs'} --resume" in err
    assert "continue it with" not in out


def test_a_search_stopped_before_any_trial_trained_says_so_not_that_its_trials_failed(tmp_path, monkeypatch, capsys):
    """Before: "Nothing to select yet: ... every trial and its error: trials.csv", though no trial had failed (they were
    pending), and the command's last line did not say that the stop came before any epoch."""
    import pandas as pd

    from cxr_tune.errors import run_cli
    from cxr_tune.experiment import Experiment
    from cxr_tune.search import runner

    experiment = tmp_path / "runs" / "exp"

    def stopped_search(options, **kwargs):
        experiment.mkdir(parents=True)
        (experiment / "experiment.json").write_text(json.dumps({"options": options.to_json()}))
        return str(experiment), "interrupted"

    monkeypatch.setattr(runner, "run_search", stopped_search)
    monkeypatch.setattr(Experiment, "trials", lambda self, ranked=True: pd.DataFrame(
        {"trial_id": ["a1", "b2"], "status": ["PENDING", "RUNNING"], "stop_reason": ["unfinished"] * 2, "epochs": [0, 0], "error": ["", ""]}))
    with pytest.raises(SystemExit) as ended:
        run_cli(main, ["--space", "smoke", "--storage", str(tmp_path / "runs"), "--name", "exp", "--no-final-fit"])
    err = capsys.readouterr().err
    assert ended.value.code == 130
    assert f"no trial of {experiment} trained an epoch, so there is nothing to select or export; every trial: {experiment / 'trials.csv'}" in err
    assert "error" not in err, err
    assert ("The search was interrupted before any trial trained an epoch; continue it with:\n"
            f"  python -m cxr_tune.search --name exp --storage {tmp_path / 'runs'} --resume") in err
