"""A search with everything on object storage, as a cluster runs it.

One small search for the module (the smoke space, 1 trial of 2 epochs: what this module checks is where each file
goes and that each is read back from there, not how trials compare; ``--select-on carved`` is tests/search/test_search_e2e.py's)
with its data, external site, image cache and experiment all in ``s3://`` (a local S3 server; Ray's workers read and write
there too), as README's cluster recipe runs it. The search's end (its export of ``best/`` with the report's Grad-CAM
gallery, drawn from the model and images in the bucket), a trial exported to the bucket, and predict reading the model
from there.
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
def remote(ray_session, synthetic_root, site_root, bucket) -> dict[str, str]:
    """The search, with data, site, cache and experiment on s3; returns their URIs and the console."""
    data, external, cache, runs = (storage.join(bucket, part) for part in ("data", "site", "cache", "runs"))
    storage.copy(str(synthetic_root), data)
    storage.copy(str(site_root), external)
    done = call_cli("cxr_tune.search", "--space", "smoke", "--data", data, "--val-data", external, "--trials", "1", "--max-epochs", "2",
                    "--cache-dir", cache, "--storage", runs, "--name", "remote")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"experiment": storage.join(runs, "remote"), "cache": cache, "stdout": done.stdout}


@pytest.fixture(scope="module")
def local(remote, tmp_path_factory) -> Path:
    """A local copy of the experiment the search wrote to s3 (for reading its files)."""
    copy = tmp_path_factory.mktemp("downloaded") / "remote"
    storage.copy(remote["experiment"], str(copy))
    return copy


def test_the_table_the_study_the_trial_log_the_cache_and_best_live_in_the_bucket(remote, local, site_root):
    table = read_trials(local)
    assert len(table) == 1 and set(table["status"]) == {"TERMINATED"} and int(table["epochs"].iloc[0]) >= 1
    assert storage.listdir(storage.join(remote["cache"], "images")), "the image cache is on s3"
    with sqlite3.connect(local / "study.db") as db:  # the study went up too
        states = dict(db.execute("select t.trial_id, t.state from trials t"))
    assert len(states) == 1 and set(states.values()) <= {"COMPLETE", "PRUNED"}
    # Why each trial ended, logged on s3 too (before: no log there).
    events = {e["trial_id"]: e["event"] for e in map(json.loads, (local / "trial_events.jsonl").read_text().splitlines())}
    assert events == dict(zip(table["trial_id"], table["stop_reason"])), events
    report = (local / "report.md").read_text()  # the report went up as well, with plots drawn from the bucket's model and images
    assert "## Where the time went" in report and "](plots/saliency.png)" in report
    assert (local / "plots" / "saliency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads((local / "best" / "model.json").read_text())
    assert meta["trial_id"] == table["trial_id"].iloc[0] and meta["deciding_set"] == "external"
    assert meta["external"]["n"] == sum(1 for path in site_root.rglob("*") if path.is_file())  # every site image, read from the bucket


def test_a_trial_exports_to_the_bucket_and_predict_reads_best_from_it(remote, local, bucket, synthetic_root, tmp_path):
    experiment = remote["experiment"]
    trial = str(read_trials(local)["trial_id"].iloc[0])
    exported = storage.join(bucket, "exports", trial)
    export = call_cli("cxr_tune.export", experiment, "--trial", trial, "--out", exported)
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    assert {"model.onnx", "model.json", "MODEL_CARD.md"} <= set(storage.listdir(exported))

    images = synthetic_root / "test"  # a local folder of NORMAL/ and PNEUMONIA/ images
    predict = call_cli("cxr_tune.predict", "--model", storage.join(experiment, "best"), "--quiet", "--csv", str(tmp_path / "scores.csv"), str(images))
    assert predict.returncode == 0, predict.stdout[-3000:] + predict.stderr[-3000:]
    assert "Labelled images:" in predict.stdout
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == sum(1 for p in images.rglob("*") if p.is_file() and not p.name.startswith(".")) and scores["probability"].between(0, 1).all()
