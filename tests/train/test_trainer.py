"""The trainer of one configuration: a one-CPU-worker run's driver and Train controller never load torch."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

# Builds a one-worker trainer as a trial's driver does, and writes what Ray hands Train's controller
# (the backend) and the worker (the loop) as Ray pickles them. (Several workers need the Torch
# backend's process group for DDP, and it brings torch along: the cluster tests train such runs.)
BUILD = """
import sys
import ray.cloudpickle as pickle
from cxr_tune.train.hparams import HParams
from cxr_tune.train.trainer import Resources, make_trainer
trainer = make_trainer(HParams.from_config({"depth": 2, "filters_0": 4, "filters_1": 4}), {}, (10, 10),
                       resources=Resources(workers=1), storage_path=sys.argv[1], name="run", deciding="carved")
open(f"{sys.argv[1]}/shipped.pkl", "wb").write(pickle.dumps((trainer.backend_config, trainer.train_loop_per_worker)))
print("torch" in sys.modules)
"""

# Loads them in a fresh process, as the controller does.
LOAD = """
import sys
import ray.cloudpickle as pickle
pickle.loads(open(f"{sys.argv[1]}/shipped.pkl", "rb").read())
print("torch" in sys.modules)
"""


def run(code: str, folder) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code, str(folder)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.splitlines()


def test_a_one_cpu_worker_run_is_built_and_shipped_without_torch(tmp_path):
    # Importing torch cost each of the trial's driver and Train's controller about 2.7 CPU-s per trial.
    assert run(BUILD, tmp_path) == ["False"]
    assert run(LOAD, tmp_path) == ["False"]
