"""The GPU device check runs anywhere torch does (here on the CPU, at a tiny size) and needs no Ray."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

from tests.conftest import ROOT


def test_the_device_check_writes_its_tables_without_ray(tmp_path):
    args = ["gpu", "--device", "cpu", "--sizes", "32", "--precision", "fp32", "bf16", "--packed", "1", "2", "--packed-size", "32",
            "--images", "32", "--epochs", "1", "--seconds", "0.3", "--out", str(tmp_path)]
    code = ("import sys; sys.modules['ray'] = None  # as on the device machine: importing Ray would fail\n"
            f"sys.argv = ['cxr_tune/bench/__main__.py', *{args!r}]  # as python -m sets it\n"
            "from cxr_tune.bench.__main__ import main; main()")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "gpu.json").read_text())
    assert record["machine"]["ray"] == "not installed" and record["device"] == "cpu"
    assert record["command"] == "python -m cxr_tune.bench " + shlex.join(args)
    steps = {(s["precision"], s["layout"]) for s in record["steps"]}
    assert steps == {(p, layout) for p in ("fp32", "bf16") for layout in ("contiguous", "channels_last")}
    assert all(s["step_img_s"] > 0 and s["bare_loop_img_s"] > 0 for s in record["steps"])
    assert [p["processes"] for p in record["packed"]] == [1, 2] and all(p["trials_per_hour"] > 0 for p in record["packed"])
    text = (tmp_path / "gpu.md").read_text()
    assert "| 32 | bf16 | channels_last |" in text and "trials per hour" in text and "no GPU (device cpu)" in text
    assert f"Command: `{record['command']}`" in text
