"""The real CLI, end to end: smoke search → trial table, report, plots, best/ → predict → export."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import onnx
import pandas as pd
import pytest

from tests.conftest import run_cli


@pytest.fixture(scope="module")
def experiment(synthetic_root, tmp_path_factory) -> Path:
    storage = tmp_path_factory.mktemp("experiments")
    done = run_cli("cxr_tune.search", "--space", "smoke", "--data", str(synthetic_root), "--storage", str(storage), "--name", "e2e", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SYNTHETIC" in done.stdout and "Selected trial" in done.stdout
    return storage / "e2e"


def test_experiment_holds_table_report_plots_study_and_export(experiment):
    table = pd.read_csv(experiment / "trials.csv")
    assert len(table) == 4 and table["trial_id"].is_unique
    assert set(table["stop_reason"]) <= {"completed", "ASHA stopped"}
    assert {"depth", "lr", "objective", "val_auc", "val_sensitivity", "val_specificity", "epochs", "run_seconds"} <= set(table.columns)
    assert pd.read_parquet(experiment / "trials.parquet")["trial_id"].tolist() == table["trial_id"].tolist()
    report = (experiment / "report.md").read_text()
    assert "SYNTHETIC DATA" in report
    for plot in ("progress", "importances", "pareto", "roc", "confusion", "learning_curves"):
        png = experiment / "plots" / f"{plot}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" or f"_{plot}" in report
    with sqlite3.connect(experiment / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == 4
    meta = json.loads((experiment / "best" / "model.json").read_text())
    assert meta["data"]["synthetic"] and 0 < meta["threshold"] < 1
    assert "test" in meta and len(meta["test"]["ci95"]["auc"]) == 2  # the synthetic set has a test split


def test_export_is_onnx_and_loads_without_pickle(experiment):
    files = {p.name for p in (experiment / "best").iterdir()}
    assert "model.onnx" in files and not {f for f in files if f.endswith((".pt", ".pkl", ".pth", ".ckpt"))}
    onnx.checker.check_model(onnx.load(str(experiment / "best" / "model.onnx")))


def test_predict_reproduces_the_exported_validation_metrics(experiment, tmp_path):
    meta = json.loads((experiment / "best" / "model.json").read_text())
    splits = pd.read_csv(experiment / "splits.csv")
    val = splits[splits["role"] == "val"].drop_duplicates("content_hash")
    for row in val.itertuples():  # the validation images, laid out as a Kermany folder
        target = tmp_path / "val" / ("PNEUMONIA" if row.label else "NORMAL") / Path(row.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(row.path)
    (tmp_path / "val" / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 broken")
    done = run_cli("cxr_tune.predict", "--model", str(experiment / "best"), str(tmp_path / "val"), "--csv", str(tmp_path / "out.csv"))
    assert done.returncode == 0, done.stderr
    expected = meta["validation"]
    line = next(ln for ln in done.stdout.splitlines() if ln.strip().startswith("sensitivity"))
    assert f"sensitivity {expected['sensitivity']:.4f}" in line and f"specificity {expected['specificity']:.4f}" in line
    assert f"balanced accuracy {expected['balanced_accuracy']:.4f}" in line and f"AUC {expected['auc']:.4f}" in line
    assert "broken.jpeg" in done.stdout and "Skipped 1 unreadable" in done.stdout
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["path", "probability", "prediction"] and len(out) == len(val)
    assert set(out["prediction"]) <= {0, 1}


def test_any_trial_can_be_re_exported_and_predict_refuses_pickles(experiment):
    table = pd.read_csv(experiment / "trials.csv")
    other = table.sort_values("objective")["trial_id"].iloc[0]
    done = run_cli("cxr_tune.export", str(experiment), "--trial", other)
    assert done.returncode == 0, done.stderr
    assert json.loads((experiment / "exports" / other / "model.json").read_text())["trial_id"] == other
    checkpoint = next((experiment / "train").rglob("state.pt"))
    refused = run_cli("cxr_tune.predict", "--model", str(checkpoint), str(checkpoint))
    assert refused.returncode == 2 and "would need unpickling" in refused.stderr


def test_an_ensemble_of_the_best_trials_exports_and_predicts(experiment, tmp_path):
    done = run_cli("cxr_tune.export", str(experiment), "--ensemble", "2", "--out", str(tmp_path / "ensemble"))
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "ensemble" / "model.json").read_text())
    assert len(meta["members"]) == 2 and "mean of 2 models" in meta["output"]["meaning"]
    val = pd.read_csv(tmp_path / "ensemble" / "val_predictions.csv")
    assert ((val["probability"] >= meta["threshold"]).astype(int) == val["prediction"]).all()
