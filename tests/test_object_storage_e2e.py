"""Everything on object storage, end to end, through the CLIs: data, image cache and experiment in
``s3://`` buckets (a local S3 server), then export and predict from there.

Ray's workers read and write s3 too (the cache, checkpoints); they reach the server through the
``AWS_*`` variables the driver forwards to them (cxr_tune.ray_session).
"""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from cxr_tune import storage
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


def test_search_export_and_predict_with_everything_on_s3(s3_dir, synthetic_root, tmp_path):
    data, cache, runs = (storage.join(s3_dir, part) for part in ("data", "cache", "runs"))
    storage.copy(str(synthetic_root), data)
    experiment = storage.join(runs, "s3e2e")

    search = run_cli("cxr_tune.search", "--space", "smoke", "--trials", "2", "--max-epochs", "2", "--concurrency", "2",
                     "--data", data, "--cache-dir", cache, "--storage", runs, "--name", "s3e2e", timeout=600)
    assert search.returncode == 0, search.stdout[-3000:] + search.stderr[-3000:]
    table = storage.read_csv(storage.join(experiment, "trials.csv"))
    assert len(table) == 2 and set(table["status"]) == {"TERMINATED"}
    assert storage.listdir(storage.join(cache, "images")), "the image cache is on s3"
    storage.copy(storage.join(experiment, "study.db"), str(tmp_path / "study.db"))  # the study went up too
    with sqlite3.connect(tmp_path / "study.db") as db:
        assert db.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0] == 2

    trial = str(table["trial_id"].iloc[-1])
    exported = storage.join(s3_dir, "exports", trial)
    export = run_cli("cxr_tune.export", experiment, "--trial", trial, "--out", exported, timeout=300)
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    assert {"model.onnx", "model.json"} <= set(storage.listdir(exported))

    images = synthetic_root / "test"  # a local folder of NORMAL/ and PNEUMONIA/ images
    predict = run_cli("cxr_tune.predict", "--model", storage.join(experiment, "best"), "--quiet", "--csv", str(tmp_path / "scores.csv"), str(images), timeout=300)
    assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
    assert "Labelled images:" in predict.stdout
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == sum(1 for p in images.rglob("*") if p.is_file() and not p.name.startswith(".")) and scores["probability"].between(0, 1).all()
