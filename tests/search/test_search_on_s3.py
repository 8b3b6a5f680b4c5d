"""``--select-on carved`` end to end, with everything on object storage.

One small search for the module (the smoke space, 2 trials, 2 epochs) with an external site
folder, run as a cluster would run it: data, site, image cache and experiment all in ``s3://``
(a local S3 server; Ray's workers read and write there too). The external set is scored every
epoch and no choice reads its labels: the export is repeated with the external labels scrambled
everywhere a choice could read them (the trial table's ``ext_*`` columns, the external roles'
labels) and every choice (trial, epoch, members, threshold) comes out the same. Then export and
predict work from the bucket.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_tune import storage
from tests.conftest import call_cli, read_trials, run_cli, synthetic_site
from tests.selection_oracle import checkpoint_scores, expected_best_epoch, expected_winner, exported_scores

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return synthetic_site(tmp_path_factory.mktemp("site") / "site", tmp_path_factory.mktemp("site-draw"), seed=7)


@pytest.fixture(scope="module")
def bucket(s3_server) -> str:
    import uuid

    from tests.conftest import S3_BUCKET

    return f"s3://{S3_BUCKET}/carved-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def remote(ray_session, synthetic_root, site, bucket) -> dict[str, str]:
    """The search, with data, site, cache and experiment on s3; returns their URIs and the console."""
    data, external, cache, runs = (storage.join(bucket, part) for part in ("data", "site", "cache", "runs"))
    storage.copy(str(synthetic_root), data)
    storage.copy(str(site), external)
    done = call_cli("cxr_tune.search", "--space", "smoke", "--data", data, "--val-data", external, "--select-on", "carved",
                   "--trials", "2", "--max-epochs", "2", "--concurrency", "2", "--cache-dir", cache, "--storage", runs, "--name", "carved")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return {"experiment": storage.join(runs, "carved"), "cache": cache, "stdout": done.stdout}


@pytest.fixture(scope="module")
def search(remote, tmp_path_factory) -> tuple[Path, str]:
    """A local copy of the experiment the search wrote to s3 (for reading its files), and the console."""
    local = tmp_path_factory.mktemp("downloaded") / "carved"
    storage.copy(remote["experiment"], str(local))
    return local, remote["stdout"]


def test_carved_validation_decides_and_the_external_set_is_only_scored(search):
    experiment, stdout = search
    info = json.loads((experiment / "experiment.json").read_text())
    meta = json.loads((experiment / "best" / "model.json").read_text())
    table = read_trials(experiment)
    assert info["deciding_set"] == meta["deciding_set"] == "carved"
    assert table["ext_auc"].notna().all() and np.allclose(table["objective"], table["val_objective"])
    winner = table.set_index("trial_id").loc[expected_winner(table, "val")]
    history = pd.read_json(experiment / winner.name / "result.json", lines=True)
    assert meta["trial_id"] == winner.name and meta["epoch"] == expected_best_epoch(history, "val") == int(winner["best_epoch"])
    assert meta["threshold"] == pytest.approx(winner["val_threshold"], abs=1e-12)
    stored = checkpoint_scores(experiment, winner.name, int(winner["best_epoch"]))
    exported = exported_scores(experiment)
    assert np.abs(exported - stored.loc[exported.index]).max() < 1e-4  # the kept checkpoint is the carved-best epoch's
    assert meta["external"]["selection_set"] is False and "chose nothing" in meta["external"]["note"]
    assert "external validation (chose nothing)" in stdout and "external validation (not used to select)" in stdout
    assert "external validation (SELECTION SET" not in stdout
    # Why each trial ended, logged on s3 too (before: no log there, and the trial table guessed ASHA from the rungs).
    events = {e["trial_id"]: e["event"] for e in map(json.loads, (experiment / "trial_events.jsonl").read_text().splitlines())}
    assert events == dict(zip(table["trial_id"], table["stop_reason"])), events


def test_the_export_reads_no_external_label_for_any_choice(remote, tmp_path, monkeypatch):
    from cxr_tune.experiment import Experiment
    from cxr_tune.export import export_trial

    experiment = remote["experiment"]  # on s3
    honest = export_trial(experiment, out=str(tmp_path / "honest"), ensemble=2)
    trials, splits = Experiment.trials, Experiment.splits.func

    def scrambled_trials(self, *, ranked=True):
        """Every external number reflected: its order over trials reversed (a tie-break that read one would flip)."""
        table = trials(self, ranked=ranked)
        for column in [c for c in table if c.startswith("ext_") and pd.api.types.is_numeric_dtype(table[c])]:
            table[column] = table[column].max() + table[column].min() - table[column]
        return table

    def flipped_splits(self):
        roles = splits(self).copy()
        external = roles["role"] == "external"
        roles.loc[external, "label"] = 1 - roles.loc[external, "label"]
        return roles

    monkeypatch.setattr(Experiment, "trials", scrambled_trials)
    monkeypatch.setattr(Experiment, "splits", property(flipped_splits))
    blind = export_trial(experiment, out=str(tmp_path / "blind"), ensemble=2)
    assert [m["trial_id"] for m in blind["members"]] == [m["trial_id"] for m in honest["members"]]
    assert [m["epoch"] for m in blind["members"]] == [m["epoch"] for m in honest["members"]]
    assert blind["threshold"] == honest["threshold"] and blind["validation"]["auc"] == honest["validation"]["auc"]
    assert blind["external"]["auc"] == pytest.approx(1 - honest["external"]["auc"])  # the flip did reach the external scoring


def test_the_transfer_benchmark_reports_what_carved_selection_ships(remote, search, tmp_path):
    from cxr_tune.bench.transfer import run

    table = read_trials(search[0])
    written = run(remote["experiment"], tmp_path).read_text()
    for rule in ("carved only", "carved + adapt", "carved + mixture threshold", "carved + adapt + EM prior shift", "external (selection set"):
        assert rule in written
    details = json.loads((tmp_path / "transfer_carved.json").read_text())
    by_rule = {row["rule"].split(" (")[0]: row for row in details["rules"]}
    carved = table.set_index("trial_id").loc[expected_winner(table, "val")]
    assert by_rule["carved only"]["trial"] == carved.name and by_rule["carved only"]["threshold"] == pytest.approx(carved["val_threshold"])
    assert by_rule["external"]["trial"] == expected_winner(table, "ext")


def test_the_study_the_cache_and_every_export_live_in_the_bucket(remote, search, bucket, synthetic_root, tmp_path):
    """What a cluster user gets: the image cache and the study on s3, a trial exported to s3, and
    predict reading the model straight from the bucket."""
    import sqlite3

    experiment, local = remote["experiment"], search[0]
    table = read_trials(local)
    assert len(table) == 2 and set(table["status"]) == {"TERMINATED"}
    assert storage.listdir(storage.join(remote["cache"], "images")), "the image cache is on s3"
    with sqlite3.connect(local / "study.db") as db:  # the study went up too
        states = dict(db.execute("select t.trial_id, t.state from trials t"))
    assert len(states) == 2 and set(states.values()) <= {"COMPLETE", "PRUNED"}

    trial = str(table["trial_id"].iloc[-1])
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
