"""The GPU device check runs anywhere torch does (here on the CPU, at a tiny size) and needs no Ray.

The lent GPU machine has PyTorch, onnxruntime, scikit-learn, pandas and pyarrow, but not Ray, Optuna
or platformdirs (its first run, 2026-12-04, failed to collect the CUDA tests on platformdirs):
what it runs must import without them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT, call_cli

DEVICE_LACKS = ("ray", "optuna", "platformdirs")
BLOCK = "".join(f"sys.modules[{name!r}] = None; " for name in DEVICE_LACKS)  # importing them fails, as on the device machine


def test_what_the_device_machine_runs_imports_with_its_packages():
    code = f"import sys; {BLOCK}import cxr_tune.bench.gpu, cxr_tune.bench.__main__, tests.train.test_cuda; print('imported')"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "imported", done.stderr[-2000:]


def test_the_device_check_writes_its_tables_without_ray(tmp_path):
    args = ["gpu", "--device", "cpu", "--sizes", "32", "--precision", "fp32", "bf16", "--packed", "2", "--packed-size", "32", "--packed-precision", "auto", "fp32",
            "--images", "32", "--epochs", "1", "--seconds", "0.3", "--compile", "default", "reduce-overhead", "--out", str(tmp_path)]
    code = (f"import sys; {BLOCK}\n"
            "import torch; compile_ = torch.compile  # a machine that cannot compile one mode:\n"
            "def refuse(model, mode=None):\n"
            "    if mode == 'reduce-overhead': raise RuntimeError('no CUDA graphs here\\nsecond line')\n"
            "    return compile_(model, mode=mode)\n"
            "torch.compile = refuse\n"
            f"sys.argv = ['cxr_tune/bench/__main__.py', *{args!r}]  # as python -m sets it\n"
            "from cxr_tune.bench.__main__ import main; main()")
    # The compiled rows' plumbing only: compiling the network takes 25-60 s of this CPU, the benchmark's to spend, not the suite's.
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TORCH_COMPILE_DISABLE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert record["machine"]["ray"] == "not installed" and record["device"] == "cpu"
    assert "commit" in record["provenance"] and record["provenance"]["versions"]["torch"]  # the code that measured it
    assert record["command"] == "python -m cxr_tune.bench " + shlex.join(args)
    steps = {(s["precision"], s["layout"]) for s in record["steps"]}
    assert steps == {(p, layout) for p in ("fp32", "bf16") for layout in ("contiguous", "channels_last")}
    assert all(s["step_img_s"] > 0 and s["bare_loop_img_s"] > 0 for s in record["steps"])
    compiled = {(c["precision"], c["mode"]): c for c in record["compiled"]}
    assert set(compiled) == {(p, mode) for p in ("fp32", "bf16") for mode in ("default", "reduce-overhead")}
    assert all(compiled[p, "default"]["step_img_s"] > 0 and compiled[p, "default"]["eager_step_img_s"] > 0 for p in ("fp32", "bf16"))
    # A mode that fails is a row with its error, and the check goes on (the packed trials below ran).
    assert compiled["fp32", "reduce-overhead"]["error"] == "RuntimeError: no CUDA graphs here"
    assert [p["processes"] for p in record["packed"]] == [2, 2] and all(p["trials_per_hour"] > 0 for p in record["packed"])
    auto = record["auto_precision"].split(" ")[0].rstrip(",")  # "bf16 autocast, ..." or "fp32, ..."
    assert [p["precision"] for p in record["packed"]] == [auto, "fp32"]
    text = (tmp_path / "gpu.md").read_text()
    assert "| 32 | bf16 | channels_last |" in text and "trials per hour" in text and "no GPU (device cpu)" in text
    assert f"CPUs ({record['machine']['cpu']}), torch" in text
    assert f"| {auto} | 2 |" in text and "| fp32 | 2 |" in text
    assert "| 32 | bf16 | channels_last | default |" in text and "compiled ÷ eager" in text
    assert "| reduce-overhead |" in text and "failed: RuntimeError: no CUDA graphs here |" in text
    assert f"Command: `{record['command']}`" in text


def test_the_device_check_times_a_torchvision_network_and_says_which(tmp_path):
    pytest.importorskip("torchvision")
    from cxr_tune.bench.gpu import run

    run("cpu", [32], ["fp32"], [], 32, images=8, epochs=1, seconds=0.1, trial_epochs=12, out=tmp_path, arch="resnet18")
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert record["arch"] == "resnet18" and record["torchvision"] and "depth" not in record["model"]
    assert [s["layout"] for s in record["steps"]] == ["contiguous", "channels_last"] and all(s["step_img_s"] > 0 for s in record["steps"])
    text = (tmp_path / "gpu.md").read_text()
    assert "Model: torchvision resnet18 with a one-channel stem" in text and f"torchvision {record['torchvision']}." in text


@pytest.mark.parametrize("device", ["nonsense", "cuda:x"])
def test_a_device_torch_does_not_know_is_one_line(tmp_path, device):
    """Before: torch's RuntimeError ("Expected one of cpu, cuda, ... device type") as a traceback."""
    done = call_cli("cxr_tune.bench", "gpu", "--device", device, "--out", str(tmp_path))
    assert done.returncode == 2 and f"error: --device {device!r} is not a torch device; pass cuda, cuda:N or cpu" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


@pytest.mark.parametrize("device", ["meta", "xla"])
def test_a_device_torch_knows_but_cannot_train_on_here_is_one_line(tmp_path, device):
    """Before: mps and xla ended in "PyTorch is not linked with support for ... devices", meta in "META device type not an
    accelerator", each as a traceback."""
    done = call_cli("cxr_tune.bench", "gpu", "--device", device, "--out", str(tmp_path))
    assert done.returncode == 2 and done.stderr.startswith(f"error: --device {device!r}: torch cannot train on it here ("), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())


def _dies_in_its_warm_up(*args):  # a packed trial process killed before it says it is ready (as the OOM killer does)
    os._exit(3)


def test_a_packed_trial_process_that_fails_or_dies_is_one_line_not_a_hang(monkeypatch):
    """Before: the parent waited on a Barrier with no timeout, so a process that failed in its warm-up (a CUDA OOM) hung
    the check for good; one that failed after it left a bare queue.Empty traceback after seconds * 10 + 600 s."""
    from cxr_tune.bench import gpu
    from cxr_tune.errors import RunFailure

    started = time.monotonic()
    with pytest.raises(RunFailure, match=r"^packed trials, 2 process\(es\) at 32 px in fp32: a trial process failed: HParamsError: "):
        gpu.packed_rate(2, 32, "fp32", "cpu", 0.1, arch="no-such-net")  # fails in each process, before its warm-up ends
    monkeypatch.setattr(gpu, "_trial_process", _dies_in_its_warm_up)
    with pytest.raises(RunFailure, match=r"^packed trials, 2 process\(es\) at 32 px in fp32: a trial process died \(exit code 3\) before it reported$"):
        gpu.packed_rate(2, 32, "fp32", "cpu", 0.1)
    assert time.monotonic() - started < 120


def test_a_check_stopped_midway_keeps_what_it_measured_marked_partial(tmp_path, monkeypatch):
    """Before: gpu.md and gpu.json were written once every measurement was done: a lease ending midway lost them all."""
    from cxr_tune.bench import gpu

    calls = []

    def step_rate(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second row's measurement: Ctrl-C, or a lease's end
        return {"step_img_s": 100.0, "first_epoch_s": 1.0, "peak_mib": None}

    monkeypatch.setattr(gpu, "step_rate", step_rate)
    monkeypatch.setattr(gpu, "bare_loop_rate", lambda *args, **kwargs: 200.0)
    with pytest.raises(KeyboardInterrupt):
        gpu.run("cpu", [32], ["fp32"], [2], 32, images=8, epochs=1, seconds=0.1, trial_epochs=12, out=tmp_path)
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert record["partial"] == "stopped after 1 of 3 measurements" and [s["layout"] for s in record["steps"]] == ["contiguous"]
    assert record["packed"] == []
    text = (tmp_path / "gpu.md").read_text()
    assert "**Partial: stopped after 1 of 3 measurements**" in text and "| 32 | fp32 | contiguous | 100 | 200 | 0.50 | 1.00 | n/a |" in text
