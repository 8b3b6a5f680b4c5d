"""The real CLI, end to end: smoke search → trial table, report, plots, best/ → predict → export; and what its console shows.

The search has an external site folder and ``--select-on carved``: carved validation decides, the external set is
scored every epoch and no choice reads its labels (the export is repeated with the external labels scrambled
everywhere a choice could read them, and every choice comes out the same)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest

from cxr_tune.selection import CRITERIA, MIN_BOOTSTRAP_CLASS, choose_threshold
from tests.conftest import call_cli, read_trials, run_cli
from tests.selection_oracle import checkpoint_scores, expected_best_epoch, expected_winner, exported_scores

pytestmark = pytest.mark.slow
# Two trials, both at once (each trial starts seven processes, about 16 CPU-seconds, before its first tiny epoch, so a
# third, a second wave alone, cost a whole Train run's start-up): two are what every check here needs, a ranking, an
# ensemble of two different models and one smaller than asked. Both are TPE's random draws (its 2 start-up trials);
# tests/search/test_resume.py's search, one at a time, reaches TPE's own.
TRIALS = 2

LIBRARY_NOISE = (
    "(raylet)", "PreemptionWatcher", "PlacementGroupCleaner", "TrainController", "core_worker", "Configuration for experiment",
    "View detailed results", "ExperimentalWarning", "A new study created", "optuna_warn", "Traceback", "pid=",
)


@pytest.fixture(scope="module")
def run(synthetic_root, site_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One smoke search for the whole module, its output piped as in a log: (experiment folder, the finished process)."""
    storage = tmp_path_factory.mktemp("experiments")
    done = run_cli("cxr_tune.search", "--space", "smoke", "--data", str(synthetic_root), "--val-data", str(site_root), "--select-on", "carved",
                   "--storage", str(storage), "--name", "e2e", "--trials", str(TRIALS), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "SYNTHETIC" in done.stdout and "Selected trial" in done.stdout
    return storage / "e2e", done


@pytest.fixture(scope="module")
def search(run) -> tuple[Path, str]:
    """(experiment folder, what the search printed on stdout)."""
    return run[0], run[1].stdout


@pytest.fixture(scope="module")
def experiment(search) -> Path:
    return search[0]


@pytest.fixture(scope="module")
def val_folder(experiment, tmp_path_factory) -> Path:
    """The experiment's carved validation images, laid out as a Kermany folder (symlinks)."""
    folder = tmp_path_factory.mktemp("val") / "val"
    splits = pd.read_csv(experiment / "splits.csv")
    for row in splits[splits["role"] == "val"].drop_duplicates("content_hash").itertuples():
        target = folder / ("PNEUMONIA" if row.label else "NORMAL") / Path(row.path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(row.path)
    return folder


def test_experiment_holds_table_report_plots_study_and_export(experiment):
    table = read_trials(experiment)
    assert len(table) == TRIALS and table["trial_id"].is_unique
    assert set(table["stop_reason"]) <= {"completed", "ASHA stopped"}
    assert {"depth", "lr", "objective", "val_auc", "val_sensitivity", "val_specificity", "epochs", "run_seconds"} <= set(table.columns)
    assert pd.read_parquet(experiment / "trials.parquet")["trial_id"].tolist() == table["trial_id"].tolist()
    report = (experiment / "report.md").read_text()
    assert "SYNTHETIC DATA" in report
    assert "## Where the time went" in report and "of which training" in report and "of which scoring" in report  # from every epoch's record
    for plot in ("progress", "importances", "pareto", "roc", "confusion", "learning_curves"):
        png = experiment / "plots" / f"{plot}.png"
        assert (png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n") or (plot == "importances" and "_Parameter importances are not shown: they would come from the" in report)
    with sqlite3.connect(experiment / "study.db") as db:
        assert db.execute("select count(*) from trials").fetchone()[0] == TRIALS
    meta = json.loads((experiment / "best" / "model.json").read_text())
    assert meta["data"]["synthetic"] and 0 < meta["threshold"] < 1
    assert "test" in meta and len(meta["test"]["ci95"]["auc"]) == 2  # the synthetic set has a test split


def test_export_is_onnx_and_loads_without_pickle(experiment):
    files = {p.name for p in (experiment / "best").iterdir()}
    assert "model.onnx" in files and not {f for f in files if f.endswith((".pt", ".pkl", ".pth", ".ckpt"))}
    onnx.checker.check_model(onnx.load(str(experiment / "best" / "model.onnx")))


def test_predict_reproduces_the_exported_validation_metrics(experiment, val_folder, tmp_path):
    meta = json.loads((experiment / "best" / "model.json").read_text())
    val = list(val_folder.rglob("*.jpeg"))
    (tmp_path / "NORMAL").mkdir()
    (tmp_path / "NORMAL" / "broken.jpeg").write_bytes(b"\xff\xd8 broken")
    done = call_cli("cxr_tune.predict", "--model", str(experiment / "best"), str(val_folder), str(tmp_path / "NORMAL"), "--csv", str(tmp_path / "out.csv"))
    assert done.returncode == 0, done.stderr
    expected = meta["validation"]
    lines = done.stdout.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip().startswith("sensitivity"))
    line = lines[at] + lines[at + 1]  # the rates, then accuracy and AUC, each with its interval
    assert f"sensitivity {expected['sensitivity']:.4f} [" in line and f"specificity {expected['specificity']:.4f} [" in line
    assert f"balanced accuracy {expected['balanced_accuracy']:.4f} [" in line and f"AUC {expected['auc']:.4f} [" in line
    assert "broken.jpeg" in done.stdout and "Skipped 1 unreadable" in done.stdout
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["path", "label", "probability", "prediction", "threshold", "check", "content_hash"] and len(out) == len(val)
    assert out["check"].isna().all()  # the SYNTHETIC images are gray, varied and larger than the input: nothing to check
    assert set(out["prediction"]) <= {0, 1}


def test_any_trial_can_be_re_exported_and_predict_refuses_pickles(experiment):
    table = read_trials(experiment)
    other = table.sort_values("objective")["trial_id"].iloc[0]
    done = call_cli("cxr_tune.export", str(experiment), "--trial", other)
    assert done.returncode == 0, done.stderr
    assert json.loads((experiment / "exports" / other / "model.json").read_text())["trial_id"] == other
    checkpoint = next((experiment / "train").rglob("state.pt"))
    refused = call_cli("cxr_tune.predict", "--model", str(checkpoint), str(checkpoint))
    assert refused.returncode == 2 and "would need unpickling" in refused.stderr


def test_best_holds_the_trial_the_rule_selects_at_its_best_epoch(search):
    """The README's rule, applied to the trial table by hand, names the trial in best/; best/ holds
    that trial's weights of the epoch the table calls its best (its scores are the ones that
    checkpoint stored), at the threshold the trial reported; the console says the same."""
    experiment, stdout = search
    table = read_trials(experiment)
    meta = json.loads((experiment / "best" / "model.json").read_text())
    winner = table.set_index("trial_id").loc[expected_winner(table, "val")]
    history = pd.read_json(experiment / winner.name / "result.json", lines=True)
    assert meta["trial_id"] == winner.name and int(winner["rank"]) == 1
    assert int(winner["best_epoch"]) == expected_best_epoch(history, "val")  # the README's rule on the trial's own epochs
    assert meta["epoch"] == int(winner["best_epoch"]) and [m["trial_id"] for m in meta["members"]] == [meta["trial_id"]]
    stored = checkpoint_scores(experiment, winner.name, int(winner["best_epoch"]))
    exported = exported_scores(experiment)
    assert np.abs(exported - stored.loc[exported.index]).max() < 1e-4
    info = json.loads((experiment / "experiment.json").read_text())
    assert info["deciding_set"] == meta["deciding_set"] == "carved"
    assert table["ext_auc"].notna().all() and np.allclose(table["objective"], table["val_objective"])  # scored, not deciding
    assert meta["external"]["selection_set"] is False and "chose nothing" in meta["external"]["note"]
    assert "external validation (chose nothing)" in stdout and "external validation (not used to select)" in stdout
    assert "external validation (SELECTION SET" not in stdout
    assert meta["threshold"] == pytest.approx(winner["val_threshold"], abs=1e-12)  # the threshold the trial reported
    assert sorted(table["rank"].dropna().astype(int)) == list(range(1, (table["epochs"] > 0).sum() + 1))
    assert f"Selected trial {winner.name} (best epoch {int(winner['best_epoch'])} of {int(winner['epochs'])}" in stdout


def test_an_ensemble_predicts_the_mean_of_its_members(experiment, val_folder, tmp_path):
    """The ensemble's ONNX output is the average of its members' own exports, and its threshold is
    the best for those averaged scores (not one member's)."""
    from cxr_tune.export import export_trial
    from cxr_tune.predict import collect, predict
    from cxr_tune.serving import load_model

    done = call_cli("cxr_tune.export", str(experiment), "--ensemble", "2", "--out", str(tmp_path / "ensemble"))
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "ensemble" / "model.json").read_text())
    members = [m["trial_id"] for m in meta["members"]]
    assert "mean of 2 models" in meta["output"]["meaning"] and meta["trial_id"] == members[0]
    table = read_trials(experiment)
    assert members == table.sort_values("rank")["trial_id"].head(2).tolist()  # the smoke space has one image size

    files = collect([str(val_folder)])
    ensemble, _ = predict(load_model(tmp_path / "ensemble"), files)
    alone = []
    for trial in members:
        export_trial(str(experiment), trial, str(tmp_path / trial))
        alone.append(predict(load_model(tmp_path / trial), files)[0])
    assert all(frame["path"].tolist() == ensemble["path"].tolist() for frame in alone)
    mean = np.mean([frame["probability"].to_numpy() for frame in alone], axis=0)
    assert np.abs(ensemble["probability"].to_numpy() - mean).max() < 1e-4
    assert not np.allclose(alone[0]["probability"], alone[1]["probability"], atol=1e-4)  # two different models

    threshold, labels = meta["threshold"], ensemble["label"].astype(int).to_numpy()
    clear = np.abs(mean - threshold) > 1e-4  # an image on the threshold may fall either way
    assert (ensemble["prediction"].to_numpy() == (mean >= threshold))[clear].all()
    hp = meta["hparams"]

    def balance(t: float) -> float:
        predicted = mean >= t
        return float(CRITERIA[hp["criterion"]](predicted[labels == 1].mean(), 1 - predicted[labels == 0].mean()))

    best = balance(choose_threshold(labels, mean, hp["criterion"], hp["min_sensitivity"], hp["threshold_tolerance"]))
    assert balance(threshold) >= best - hp["threshold_tolerance"] - 0.5 / min(np.bincount(labels))  # one image of slack


def test_the_export_and_report_show_what_a_clinician_checks(experiment):
    """best/ and report.md carry calibration, operating points, subgroups (the synthetic names are
    Kermany's), the model card and a Grad-CAM gallery; carved validation decided, so its numbers
    are labelled selection-set numbers everywhere."""
    best = experiment / "best"
    meta = json.loads((best / "model.json").read_text())
    assert meta["validation"]["selection_set"] and meta["calibration"] == {"method": "none"}
    assert list(meta["operating_points"]) == ["balanced", "sens90", "sens95", "sens98", "spec90", "spec95"]
    assert meta["operating_points"]["balanced"]["threshold"] == meta["threshold"]
    for key in ("validation", "test"):
        measured = meta[key]
        # a set with fewer than 10 images of a class gets no calibration interval, as it gets no AUC one, and says why
        few = min(measured["class_counts"]) < MIN_BOOTSTRAP_CLASS
        brier = measured["calibration"]["ci95"]["brier"]
        assert 0 <= measured["calibration"]["ece"] <= 1
        assert (brier is None and "fewer than" in measured["calibration"]["ci95_withheld"]["brier"]) if few else len(brier) == 2
        assert sum(measured["calibration"]["reliability"]["count"]) == measured["n"]
        assert set(measured["operating_points"]) == set(meta["operating_points"])
        groups = measured["subgroups"]
        assert groups["bacterial"]["n"] + groups["viral"]["n"] == measured["class_counts"][1] and groups["normal2_im"]["n"] == 0
    for rate, floor in (("sensitivity", 0.9), ("specificity", 0.9)):  # the floors hold on the set that chose them
        assert meta["validation"]["operating_points"][f"{rate[:4]}90"][rate] >= floor
    card = (best / "MODEL_CARD.md").read_text()
    assert "carved validation (selection set)" in card and "**SYNTHETIC DATA.**" in card and meta["search"]["command"] in card
    assert (best / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    report = (experiment / "report.md").read_text()
    for section in ("## Calibration", "## Operating points", "## Subgroups", "## Where the model looks (Grad-CAM)"):
        assert section in report, section
    assert "carved validation (selection set)" in report and "Carved validation numbers are selection-set numbers" in report
    for plot in ("reliability", "operating_points", "saliency"):
        assert f"](plots/{plot}.png)" in report, plot
        assert (experiment / "plots" / f"{plot}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_calibrated_export_decides_as_the_plain_one_and_predict_reproduces_it(experiment, val_folder, tmp_path):
    done = call_cli("cxr_tune.export", str(experiment), "--calibrate", "platt", "--out", str(tmp_path / "calibrated"))
    assert done.returncode == 0, done.stderr
    assert "platt-calibrated" in done.stdout and "model card:" in done.stdout
    plain, calibrated = (json.loads((folder / "model.json").read_text()) for folder in (experiment / "best", tmp_path / "calibrated"))
    assert calibrated["calibration"]["method"] == "platt" and calibrated["calibration"]["fitted_on"] == "carved"
    assert calibrated["trial_id"] == plain["trial_id"] and calibrated["validation"]["auc"] == pytest.approx(plain["validation"]["auc"], abs=1e-6)
    before, after = (pd.read_csv(folder / "val_predictions.csv") for folder in (experiment / "best", tmp_path / "calibrated"))
    clear = (before["probability"] - plain["threshold"]).abs() > 1e-4  # an image on the threshold may fall either way
    assert (before["prediction"] == after["prediction"])[clear].all()
    assert calibrated["validation"]["loss"] <= plain["validation"]["loss"] + 1e-9  # fitted on this set: its log loss cannot get worse

    scored = call_cli("cxr_tune.predict", "--model", str(tmp_path / "calibrated"), str(val_folder), "--operating-point", "sens95", "--quiet")
    assert scored.returncode == 0, scored.stderr
    sens95 = calibrated["validation"]["operating_points"]["sens95"]
    line = next(ln for ln in scored.stdout.splitlines() if ln.strip().startswith("sensitivity"))
    assert f"sensitivity {sens95['sensitivity']:.4f}" in line and f"specificity {sens95['specificity']:.4f}" in line
    assert f"ECE {calibrated['validation']['calibration']['ece']:.4f}" in scored.stdout


def test_the_printed_dashboard_command_opens_this_searchs_study_with_pruned_trials_and_best_epoch_values(search):
    """What a user gets from the printed ``Optuna:`` line: this search's trials, ASHA-stopped ones as
    PRUNED with their per-epoch values, finished ones valued at the epoch selection judges them by."""
    from importlib.util import find_spec

    from tests.search.test_dashboard import listed_trials

    experiment, stdout = search
    line = next(ln for ln in stdout.splitlines() if ln.startswith("Optuna:"))
    words = line.split()[1:]
    assert words[0] == "optuna-dashboard"
    assert ("pip install 'cxr_tune[dashboard]'" in line) == (find_spec("optuna_dashboard") is None)  # names the extra that installs it, where it is missing
    listed = {t["user_attrs"][0]["value"] if t.get("user_attrs") else t["number"]: t for t in listed_trials(words[1], experiment.name)}
    table = read_trials(experiment).set_index("trial_id")
    assert set(listed) == set(table.index)
    for trial_id, trial in listed.items():
        row = table.loc[trial_id]
        steps = [v["step"] for v in trial["intermediate_values"]]
        assert steps == list(range(1, int(row["epochs"]) + 1))  # one value per epoch, at our own epoch count
        assert trial["state"] == ("Complete" if row["stop_reason"] == "completed" else "Pruned")
        assert trial["values"][0] == pytest.approx(row["objective"])  # the best epoch's objective, not the last one's
    # Whether ASHA stops one of two tiny trials depends on which reports first (a run where none was stopped is
    # possible): the state is checked per trial above; tests/search/test_searcher.py records an ASHA stop as PRUNED every time.


def test_why_each_trial_ended_is_logged_as_the_table_says(experiment):
    """Before: the trial table guessed ASHA from the rungs."""
    table = read_trials(experiment)
    events = {e["trial_id"]: e["event"] for e in map(json.loads, (experiment / "trial_events.jsonl").read_text().splitlines())}
    assert events == dict(zip(table["trial_id"], table["stop_reason"])), events


def test_the_export_reads_no_external_label_for_any_choice(experiment, tmp_path, monkeypatch):
    from cxr_tune.experiment import Experiment
    from cxr_tune.export import export_trial

    honest = export_trial(str(experiment), out=str(tmp_path / "honest"), ensemble=2)
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
    blind = export_trial(str(experiment), out=str(tmp_path / "blind"), ensemble=2)
    assert [m["trial_id"] for m in blind["members"]] == [m["trial_id"] for m in honest["members"]]
    assert [m["epoch"] for m in blind["members"]] == [m["epoch"] for m in honest["members"]]
    assert blind["threshold"] == honest["threshold"] and blind["validation"]["auc"] == honest["validation"]["auc"]
    assert blind["external"]["auc"] == pytest.approx(1 - honest["external"]["auc"])  # the flip did reach the external scoring


def test_the_transfer_benchmark_reports_what_carved_selection_ships(experiment, tmp_path):
    from cxr_tune.bench.transfer import run

    table = read_trials(experiment)
    written = run(str(experiment), tmp_path).read_text()
    for rule in ("carved only", "carved + adapt", "carved + mixture threshold", "carved + adapt + EM prior shift", "external (selection set"):
        assert rule in written
    details = json.loads((tmp_path / f"transfer_{experiment.name}.json").read_text())
    by_rule = {row["rule"].split(" (")[0]: row for row in details["rules"]}
    carved = table.set_index("trial_id").loc[expected_winner(table, "val")]
    assert by_rule["carved only"]["trial"] == carved.name and by_rule["carved only"]["threshold"] == pytest.approx(carved["val_threshold"])
    assert by_rule["external"]["trial"] == expected_winner(table, "ext")


# The console: the product's own lines only; Ray's and Optuna's go to search.log.


def test_the_console_has_no_library_lines_and_no_escape_codes_when_piped(run):
    _, done = run
    console = done.stdout + done.stderr
    assert not [line for line in console.splitlines() if any(noise in line for noise in LIBRARY_NOISE)], console
    assert "\x1b[" not in console and "\r" not in console
    assert "trial" in done.stdout and "Search finished" in done.stdout and "trials done" in done.stdout


def test_the_log_file_is_named_at_the_start_and_holds_the_library_output(run):
    experiment, done = run
    log = experiment / "search.log"
    lines = done.stdout.splitlines()
    named = next(i for i, line in enumerate(lines) if line.startswith(f"Ray and Optuna logs: {log}"))
    assert named < next(i for i, line in enumerate(lines) if " trial " in line)  # named before any trial runs
    text = log.read_text()
    assert "A new study created" in text  # Optuna's own line went to the file


def test_re_exporting_best_rewrites_the_report_and_says_when_an_ensemble_is_smaller_than_asked(experiment):
    """Last in the module: it replaces best/ with the average of all its trials."""
    done = call_cli("cxr_tune.export", str(experiment), "--ensemble", "5")
    assert done.returncode == 0, done.stderr
    assert "Note: --ensemble 5 asked for 5 trials" in done.stdout and f"so the model averages {TRIALS}" in done.stdout
    assert "(rewritten for this model)" in done.stdout
    table = read_trials(experiment)
    if (table["stop_reason"] != "completed").any():  # ASHA stopped some: the note names them
        assert "members did not run their whole schedule" in done.stdout
    members = [m["trial_id"] for m in json.loads((experiment / "best" / "model.json").read_text())["members"]]
    assert len(members) == TRIALS and "the average of trials " + ", ".join(f"`{m}`" for m in members) in (experiment / "report.md").read_text()


def test_a_re_export_of_best_stopped_while_its_report_is_rewritten_says_the_report_may_describe_the_model_before(experiment, monkeypatch):
    """Before: the export's summary (which reads as done) came before the report was rewritten; Ctrl-C then left best/ new and
    report.md (and some plots) describing the model before, with only "interrupted" said."""
    import cxr_tune.search.report
    from cxr_tune.errors import UserError

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cxr_tune.search.report, "write_report", stopped)
    done = call_cli("cxr_tune.export", str(experiment))
    assert done.returncode == 130 and done.stderr == "interrupted\n", done.stderr
    assert done.stdout.splitlines()[-1] == (f"Report:      not rewritten (stopped): {experiment / 'report.md'} and its plots/ may still describe "
                                            "the model best/ held before; run this export again to rewrite them")
    assert "Exported trial" in done.stdout  # what best/ now holds
    def failed(*args, **kwargs):
        raise UserError("a report problem")

    monkeypatch.setattr(cxr_tune.search.report, "write_report", failed)
    done = call_cli("cxr_tune.export", str(experiment))  # a report that fails: the export's summary is still said, then the error
    assert done.returncode == 2 and done.stderr == "error: a report problem\n", done.stderr
    assert "Exported trial" in done.stdout and done.stdout.splitlines()[-1].startswith("Report:      not rewritten (failed): ")
