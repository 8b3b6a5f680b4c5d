"""A search with everything on object storage, as a cluster runs it.

One small search for the module (the smoke space, 1 trial of 2 epochs: what this module checks is where each file
goes, not how trials compare; ``--select-on carved`` with an external set is tests/search/test_search_e2e.py's) with its
data, image cache and experiment all in ``s3://`` (a local S3 server; Ray's workers read and write there too). Then
a trial exports to the bucket and predict reads the model from there (the search's own export of best/ is left
out: the same code writes to the bucket).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from cxr_tune import storage
from tests.conftest import call_cli, read_trials

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    import uuid

    from tests.conftest import S3_BUCKET

    return f"s3://{S3_BUCKET}/search-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def remote(ray_session, synthetic_root, bucket) -> dict[str, str]:
    """The search, with data, cache and experiment on s3; returns their URIs and the console."""
    data, cache, runs = (storage.join(bucket, part) for part in ("data", "cache", "runs"))
    storage.copy(str(synthetic_root), data)
    done = call_cli("cxr_tune.search", "--space", "smoke", "--data", data, "--trials", "1", "--max-epochs", "2",
                    "--cache-dir", cache, "--storage", runs, "--name", "remote", "--no-export")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"experiment": storage.join(runs, "remote"), "cache": cache, "stdout": done.stdout}


@pytest.fixture(scope="module")
def local(remote, tmp_path_factory) -> Path:
    """A local copy of the experiment the search wrote to s3 (for reading its files)."""
    copy = tmp_path_factory.mktemp("downloaded") / "remote"
    storage.copy(remote["experiment"], str(copy))
    return copy


def test_the_table_the_study_the_trial_log_and_the_cache_live_in_the_bucket(remote, local):
    table = read_trials(local)
    assert len(table) == 1 and set(table["status"]) == {"TERMINATED"} and int(table["epochs"].iloc[0]) >= 1
    assert storage.listdir(storage.join(remote["cache"], "images")), "the image cache is on s3"
    with sqlite3.connect(local / "study.db") as db:  # the study went up too
        states = dict(db.execute("select t.trial_id, t.state from trials t"))
    assert len(states) == 1 and set(states.values()) <= {"COMPLETE", "PRUNED"}
    # Why each trial ended, logged on s3 too (before: no log there).
    events = {e["trial_id"]: e["event"] for e in map(json.loads, (local / "trial_events.jsonl").read_text().splitlines())}
    assert events == dict(zip(table["trial_id"], table["stop_reason"])), events
    assert "## Where the time went" in (local / "report.md").read_text()  # the report went up as well


def test_a_trial_exports_to_the_bucket_and_predict_reads_the_model_from_it(remote, local, bucket, synthetic_root, tmp_path):
    experiment = remote["experiment"]
    trial = str(read_trials(local)["trial_id"].iloc[0])
    exported = storage.join(bucket, "exports", trial)
    export = call_cli("cxr_tune.export", experiment, "--trial", trial, "--out", exported)
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    assert {"model.onnx", "model.json", "MODEL_CARD.md"} <= set(storage.listdir(exported))

    images = synthetic_root / "test"  # a local folder of NORMAL/ and PNEUMONIA/ images
    predict = call_cli("cxr_tune.predict", "--model", exported, "--quiet", "--csv", str(tmp_path / "scores.csv"), str(images))
    assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
    assert "Labelled images:" in predict.stdout
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == sum(1 for p in images.rglob("*") if p.is_file() and not p.name.startswith(".")) and scores["probability"].between(0, 1).all()
