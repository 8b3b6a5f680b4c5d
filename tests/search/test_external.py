"""A search with an external validation set (``--val-data``) and a final fit, end to end: the external set decides.

One small search for the module (the smoke space with residual blocks, squeeze-and-excitation and
an EMA of the weights, stopped by Optuna's ASHA rule; 2 trials, 2 epochs; then the final fit of the best configuration with 2
new seeds and a second convolution per block, the space's ``final_fit_changes``) on the session's SYNTHETIC set, validated on a second SYNTHETIC set drawn with another
seed (another "site"), with a sensitivity floor. Every check follows from the rules, whatever the
tiny models learn: the objective is the external one, the selected trial is the external
ranking's first, its export's threshold is the one that trial reported on the external set, the
floor holds there, the final fit averages its runs' last epochs, and ``best/`` holds that average only
where it scores no lower on the external set than the search's own ensemble.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import yaml
from sklearn.metrics import roc_auc_score

from cxr_tune.selection import CRITERIA, choose_threshold
from tests.conftest import call_cli, copy_tree, read_trials, ROOT
from tests.selection_oracle import checkpoint_scores, expected_best_epoch, expected_winner, exported_scores

pytestmark = pytest.mark.slow

FLOOR = 0.9
SEEDS, EPOCHS = 2, 2  # the final fit: new seeds for the best configuration, epochs each
JOB_BUDGET = 600  # minutes: more than the job needs, so it ends nothing; the search records the final fit's estimate


@pytest.fixture(scope="module")
def search(ray_session, synthetic_root, site_root, tmp_path_factory) -> tuple[Path, str]:
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    raw["search"].update({"final_fit_top": 1, "final_fit_seeds": SEEDS, "final_fit_epochs": EPOCHS, "asha_rule": "optuna",
                          "final_fit_changes": {"convs_per_block": 2}})
    raw["fixed"].update({"block": "residual", "se_ratio": 0.25, "ema_decay": 0.9})
    space = tmp_path_factory.mktemp("space") / "external.yaml"
    space.write_text(yaml.safe_dump(raw))
    storage = tmp_path_factory.mktemp("experiments")
    CTRL_C["before"] = signal.getsignal(signal.SIGINT)
    from cxr_tune.search.progress import ProgressPrinter

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ProgressPrinter, "on_trial_result", _slow_over_a_final_fit_runs_first_epoch(ProgressPrinter.on_trial_result))
        done = call_cli("cxr_tune.search", "--space", str(space), "--data", str(synthetic_root), "--val-data", str(site_root),
                       "--min-sensitivity", str(FLOOR), "--trials", "2", "--max-epochs", "2", "--job-budget", str(JOB_BUDGET),
                       "--storage", str(storage), "--name", "ext")
    CTRL_C["after"] = signal.getsignal(signal.SIGINT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return storage / "ext", done.stdout


CTRL_C: dict[str, object] = {}  # the process's Ctrl-C handler before and after the search (with its final fit) ran in it
DRIVER_PAUSE_S = 5.0  # longer than a tiny last epoch plus the end of its Train run


def _slow_over_a_final_fit_runs_first_epoch(on_trial_result):
    """The search's process (Tune's driver) busy for a while over the first epoch of the first final-fit run, as a loaded
    machine can keep it: meanwhile that run trains its last epoch and its Train run ends. Before, Tune's trial then hung
    for good (Ray 2.60's own relay of Train's reports took that last epoch's report after the trial's end was queued,
    and waited on itself), and the search with it."""
    paused: list[str] = []

    def slow(self, iteration, trials, trial, result, **info):
        if self.label == "final-fit run" and not paused and result.get("epoch") == 1:
            paused.append(trial.trial_id)
            time.sleep(DRIVER_PAUSE_S)
        return on_trial_result(self, iteration, trials, trial, result, **info)

    return slow


def test_ctrl_c_goes_to_the_command_again_once_the_search_and_its_final_fit_ended(search):
    """Tune's fit() leaves its own Ctrl-C handler installed: before, Ctrl-C during the export was ignored, and during the
    final fit's start-up it killed Ray's dashboard (a traceback, no report, no resume line)."""
    assert CTRL_C["after"] is CTRL_C["before"]


@pytest.fixture(scope="module")
def experiment(search) -> Path:
    return search[0]


@pytest.fixture(scope="module")
def exported_trial(experiment) -> Path:
    """The selected trial exported alone (best/ holds the final fit): ``exports/<trial>``."""
    table = read_trials(experiment)
    trial = table.sort_values("rank").iloc[0]["trial_id"]
    done = call_cli("cxr_tune.export", str(experiment), "--trial", trial)
    assert done.returncode == 0, done.stderr[-3000:]
    return experiment / "exports" / trial


def read(experiment: Path, folder: Path) -> tuple[pd.DataFrame, dict]:
    return read_trials(experiment), json.loads((folder / "model.json").read_text())


def test_optuna_s_asha_rule_decides_under_tune(search):
    experiment, stdout = search
    assert "ASHA early stopping (Optuna's rule)" in stdout
    table = read_trials(experiment)
    assert len(table) == 2 and set(table["stop_reason"]) <= {"completed", "ASHA stopped"}, table[["trial_id", "epochs", "stop_reason"]]
    assert (table["epochs"] >= 1).all()


def test_the_site_is_the_external_role_and_never_trains(experiment, site_root):
    splits = pd.read_csv(experiment / "splits.csv")
    external = splits[splits["role"] == "external"]
    assert sorted(Path(p).name for p in external["path"]) == sorted(p.name for p in site_root.rglob("*.jpeg"))
    assert not set(external["group_id"]) & set(splits.loc[splits["role"].isin(["train", "val"]), "group_id"])
    info = json.loads((experiment / "experiment.json").read_text())
    assert info["deciding_set"] == "external" and Path(info["external"]) == site_root


def test_every_epoch_is_scored_on_both_sets_and_the_objective_is_the_external_one(experiment):
    from cxr_tune.experiment import Experiment

    _, histories = Experiment(str(experiment)).histories()
    assert len(histories) == 2
    for history in histories.values():
        assert history["val_objective"].notna().all() and history["ext_objective"].notna().all()
        assert np.allclose(history["objective"], history["ext_objective"])  # what ASHA and Optuna read
        assert np.allclose(history["objective_low"], history["ext_objective_low"])
        assert (history["ext_n"] == history["ext_n"].iloc[0]).all() and (history["ext_sensitivity"] >= FLOOR - 1e-12).all()
    table = read_trials(experiment)
    assert np.allclose(table["objective"], table["ext_objective"]) and table["val_objective"].notna().all()


def test_the_selected_trial_is_first_on_the_external_set_at_its_best_epoch(search, exported_trial):
    experiment, stdout = search
    table, meta = read(experiment, exported_trial)
    selected = table.set_index("trial_id").loc[expected_winner(table, "ext")]  # the README's rule on the external columns
    history = pd.read_json(experiment / selected.name / "result.json", lines=True)
    assert meta["trial_id"] == selected.name and int(selected["rank"]) == 1
    assert int(selected["best_epoch"]) == expected_best_epoch(history, "ext")
    assert meta["epoch"] == int(selected["best_epoch"])
    stored = checkpoint_scores(experiment, selected.name, int(selected["best_epoch"]), "ext")
    exported = exported_scores(experiment, "external_predictions.csv", exported_trial)
    assert np.abs(exported - stored.loc[exported.index]).max() < 1e-4  # the export holds that epoch's weights
    assert "tied with it on the external set" in stdout and "external validation (SELECTION SET)" in stdout
    assert meta["deciding_set"] == "external"
    external = meta["external"]
    assert external["selection_set"] is True and Path(external["source"]) == Path(json.loads((experiment / "experiment.json").read_text())["external"])
    assert external["n"] == len(pd.read_csv(exported_trial / "external_predictions.csv"))


def test_the_threshold_is_the_external_one_and_keeps_the_sensitivity_floor(experiment, exported_trial):
    table, meta = read(experiment, exported_trial)
    selected = table.sort_values("rank").iloc[0]
    hp = meta["hparams"]
    assert hp["min_sensitivity"] == FLOOR and f"sensitivity >= {FLOOR:g}" in meta["threshold_rule"]
    assert "external validation set" in meta["threshold_rule"]
    # The exported threshold is the one the selected trial reported on the external set at its best epoch.
    assert meta["threshold"] == pytest.approx(selected["ext_threshold"], abs=1e-12)
    assert meta["external"]["sensitivity"] >= FLOOR  # the floor holds on the deciding set, as exported
    # ... and it is the rule's choice on the exported model's own external scores.
    scores = pd.read_csv(exported_trial / "external_predictions.csv")
    labels, probability = scores["label"].to_numpy(), scores["probability"].to_numpy()
    assert ((probability >= meta["threshold"]) == scores["prediction"]).all()
    assert (probability[labels == 1] >= meta["threshold"]).mean() == pytest.approx(meta["external"]["sensitivity"])

    def balance(t: float) -> float:
        predicted = probability >= t
        return float(CRITERIA[hp["criterion"]](predicted[labels == 1].mean(), 1 - predicted[labels == 0].mean()))

    best = balance(choose_threshold(labels, probability, hp["criterion"], FLOOR, hp["threshold_tolerance"]))
    assert balance(meta["threshold"]) >= best - hp["threshold_tolerance"] - 1e-9


def test_export_val_data_refuses_a_file_shared_with_train_in_one_line(experiment, site_root, synthetic_root, tmp_path):
    from cxr_tune.errors import UserError
    from cxr_tune.export import main

    shared = tmp_path / "site"
    shutil.copytree(site_root, shared)
    original = sorted((synthetic_root / "train" / "NORMAL").iterdir())[0]
    shutil.copyfile(original, shared / "NORMAL" / "copy.jpeg")
    with pytest.raises(UserError) as caught:  # the CLI prints it as one "error: ..." line, status 2
        main([str(experiment), "--val-data", str(shared), "--out", str(tmp_path / "out")])
    message = str(caught.value)
    assert "\n" not in message and "byte-identical to training-folder images" in message
    assert f"{shared / 'NORMAL' / 'copy.jpeg'} = {original}" in message
    assert not (tmp_path / "out").exists()


def test_export_val_data_refuses_another_image_of_a_patient_the_model_trained_on(experiment, site_root, tmp_path):
    """Not byte-identical, same patient: the splits' patient-group rule applies at export too."""
    from PIL import Image

    from cxr_tune.errors import UserError
    from cxr_tune.export import main

    splits = pd.read_csv(experiment / "splits.csv")
    trained = splits[(splits["role"] == "train") & (splits["label"] == 0)].iloc[0]
    shared = tmp_path / "site"
    shutil.copytree(site_root, shared)
    another = shared / "NORMAL" / f"{trained['patient_id']}-9999.jpeg"  # the same patient's name, new pixels
    Image.open(trained["path"]).rotate(3).save(another, quality=80)
    with pytest.raises(UserError) as caught:
        main([str(experiment), "--val-data", str(shared), "--out", str(tmp_path / "out")])
    message = str(caught.value)
    assert "\n" not in message and "belong to patients with training images" in message and str(another) in message
    assert not (tmp_path / "out").exists()


def test_export_val_data_refuses_a_missing_or_small_folder(experiment, site_root, tmp_path):
    from cxr_tune.errors import UserError
    from cxr_tune.export import export_trial

    with pytest.raises(UserError, match="does not exist"):
        export_trial(str(experiment), out=str(tmp_path / "a"), val_data=str(tmp_path / "nowhere"))
    small = tmp_path / "small"
    for cls in ("NORMAL", "PNEUMONIA"):
        (small / cls).mkdir(parents=True)
        for path in sorted((site_root / cls).iterdir())[:5]:
            shutil.copyfile(path, small / cls / path.name)
    with pytest.raises(UserError, match="holds 5 NORMAL and 5 PNEUMONIA readable images.*leave --val-data out"):
        export_trial(str(experiment), out=str(tmp_path / "b"), val_data=str(small))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_the_report_shows_what_transfers_and_the_transfer_benchmark_refuses_an_externally_selected_search(experiment, tmp_path):
    """bench transfer measures what carved-only selection ships; here every best epoch, checkpoint
    and trial was chosen on the external set, so a "carved only" pick would not be carved-only."""
    from cxr_tune.bench.transfer import run
    from cxr_tune.errors import UserError

    report = (experiment / "report.md").read_text()
    assert "## What transfers: carved validation vs the external set" in report and "Spearman" in report and "Tie set" in report
    assert (experiment / "plots" / "transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="--select-on carved"):
        run(str(experiment), tmp_path)
    assert not list(tmp_path.iterdir())


# The final fit: the best configuration again, new seeds, the full schedule; best/ averages the runs' last epochs.


def test_the_best_configuration_is_trained_again_with_new_seeds_for_the_full_schedule(search):
    experiment, stdout = search
    table = read_trials(experiment)
    runs = json.loads((experiment / "finalfit" / "members.json").read_text())
    assert [run["trial_id"] for run in runs] == [table.sort_values("rank").iloc[0]["trial_id"]] * SEEDS
    assert len({run["seed"] for run in runs}) == SEEDS and all(run["epochs"] == EPOCHS for run in runs)
    assert "Final fit: 1 best configuration(s)" in stdout and f"{SEEDS} of {SEEDS} run(s) completed" in stdout
    assert f"{EPOCHS} epochs each, with convs_per_block=2 set in each" in stdout and "with convs_per_block=2 set in each" in (experiment / "report.md").read_text()
    search_line, final_line = [json.loads(line) for line in (experiment / "compute.jsonl").read_text().splitlines()]
    assert (search_line["stage"], final_line["stage"]) == ("search", "final fit")


def test_a_job_budget_the_search_did_not_exhaust_ends_nothing_and_records_the_final_fits_estimate(search):
    experiment, stdout = search
    search_line = json.loads((experiment / "compute.jsonl").read_text().splitlines()[0])
    assert f"Job budget: {JOB_BUDGET} min for this command" in stdout and f"of its {JOB_BUDGET}-min job budget" in stdout
    assert "ended_by" not in search_line and "ended the search" not in stdout
    # SEEDS runs of EPOCHS epochs, each epoch as slow as the leader's in the search: at most one of its whole trials
    # (start-up included) per epoch, even with the runs one after another.
    table = read_trials(experiment)
    estimate = search_line["final_fit_estimate_seconds"]
    assert 0 < estimate <= SEEDS * EPOCHS * table["run_seconds"].max()
    assert f"estimated at {estimate / 60:.1f} min when the search ended" in (experiment / "report.md").read_text()


def final_fit_scores(experiment: Path) -> pd.Series:
    """The final-fit runs' mean stored external scores (their last epochs), by content hash."""
    runs = json.loads((experiment / "finalfit" / "members.json").read_text())
    stored = []
    for run in runs:
        [scores] = list((experiment / "finalfit" / "train" / run["name"]).glob("checkpoint_*/ext_predictions.parquet"))
        stored.append(pd.read_parquet(scores).set_index("content_hash")["score"])
    return pd.concat(stored, axis=1).mean(axis=1)


def external_labels(experiment: Path) -> pd.Series:
    scores = next((experiment / "finalfit" / "train").glob("*/checkpoint_*/ext_predictions.parquet"))
    return pd.read_parquet(scores).set_index("content_hash")["label"]


@pytest.fixture(scope="module")
def final_fit_export(experiment) -> Path:
    """The final fit's runs exported whatever they score (``export --final-fit``)."""
    out = experiment / "exports" / "final-fit"
    done = call_cli("cxr_tune.export", str(experiment), "--final-fit", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "exported by --final-fit" in done.stdout
    return out


def test_the_final_fit_averages_its_runs_last_epochs_at_a_threshold_chosen_on_their_mean(experiment, exported_trial, final_fit_export):
    meta = json.loads((final_fit_export / "model.json").read_text())
    runs = json.loads((experiment / "finalfit" / "members.json").read_text())
    assert [m["trial_id"] for m in meta["members"]] == [run["name"] for run in runs] and meta["final_fit"]["runs"] == runs
    assert meta["final_fit"]["exported"] is True and meta["final_fit"]["forced"] is True
    assert all(m["epoch"] == EPOCHS for m in meta["members"])  # last epochs: none picked on the external set
    assert all(m["hparams"]["block"] == "residual" and m["hparams"]["ema_decay"] == 0.9 for m in meta["members"])
    # The space's final_fit_changes: the runs train a second convolution per block that the search's trials did not.
    assert all(m["hparams"]["convs_per_block"] == 2 for m in meta["members"])
    assert read(experiment, exported_trial)[1]["hparams"]["convs_per_block"] == 1  # the search trial itself
    exported = exported_scores(experiment, "external_predictions.csv", final_fit_export)
    mean = final_fit_scores(experiment).loc[exported.index]
    assert np.abs(exported - mean).max() < 1e-4
    labels = pd.read_csv(final_fit_export / "external_predictions.csv")["label"].to_numpy()
    hp = meta["hparams"]
    assert meta["threshold"] == pytest.approx(choose_threshold(labels, mean.to_numpy(), hp["criterion"], FLOOR, hp["threshold_tolerance"]), abs=1e-9)
    assert "Final fit" in (final_fit_export / "MODEL_CARD.md").read_text() and "## Final fit" in (experiment / "report.md").read_text()


def test_best_is_the_final_fit_only_where_it_scores_no_lower_than_the_search_s_own_ensemble(search):
    experiment, stdout = search
    meta = json.loads((experiment / "best" / "model.json").read_text())
    table = read_trials(experiment)
    selected = table.set_index("trial_id").loc[expected_winner(table, "ext")]  # the smoke space's ensemble: 1 trial
    labels = external_labels(experiment)
    final = final_fit_scores(experiment)
    searched = checkpoint_scores(experiment, selected.name, int(selected["best_epoch"]), "ext")
    final_auc, search_auc = (roc_auc_score(labels.loc[scores.index], scores) for scores in (final, searched))
    record = meta["final_fit"]
    assert record["auc"] == pytest.approx(final_auc, abs=1e-9) and record["search_auc"] == pytest.approx(search_auc, abs=1e-9)
    assert record["search_members"] == [selected.name] and record["compared_on"] == "external" and record["forced"] is False
    kept = final_auc >= search_auc
    runs = json.loads((experiment / "finalfit" / "members.json").read_text())
    assert record["exported"] is kept
    assert [m["trial_id"] for m in meta["members"]] == ([run["name"] for run in runs] if kept else [selected.name])
    assert ("final fit NOT exported" in stdout) is (not kept) and ("NOT exported" in (experiment / "report.md").read_text()) is (not kept)


def test_a_final_fit_that_scores_below_the_search_s_own_ensemble_is_not_exported(experiment, exported_trial, tmp_path):
    """The final fit's stored external scores replaced, in a copy, by scores that rank every NORMAL above every PNEUMONIA."""
    copy = copy_tree(experiment, tmp_path / "ext")
    for stored in (copy / "finalfit" / "train").glob("*/checkpoint_*/ext_predictions.parquet"):
        frame = pd.read_parquet(stored)
        frame.assign(score=1.0 - frame["label"].astype(float)).to_parquet(stored)
    done = call_cli("cxr_tune.export", str(copy), "--out", str(tmp_path / "model"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    selected = read(experiment, exported_trial)[1]
    assert meta["final_fit"]["exported"] is False and meta["final_fit"]["auc"] == 0.0
    assert [m["trial_id"] for m in meta["members"]] == meta["final_fit"]["search_members"] == [selected["trial_id"]]
    assert meta["threshold"] == pytest.approx(selected["threshold"], abs=1e-9)  # the search's ensemble, at its own threshold
    assert f"final fit NOT exported: its {SEEDS} runs' average scored AUC 0.0000" in done.stdout
    assert "Final fit NOT exported" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    refused = call_cli("cxr_tune.export", str(copy), "--final-fit", "--trial", selected["trial_id"])
    assert refused.returncode == 2 and "--final-fit exports the final fit's runs: it takes no --trial" in refused.stderr


def diverge(run_folder: Path, at_epoch: int) -> None:
    """A final-fit run's last checkpoint rewritten, in a copy, as the loop leaves a run whose scores turned non-finite at ``at_epoch`` (1-based)."""
    import torch

    for path in run_folder.glob("checkpoint_*/state.pt"):
        state = torch.load(path, weights_only=True)
        state["history"] = [*state["history"][:at_epoch - 1], {**state["history"][at_epoch - 1], "diverged": True, "ext_non_finite": 3}]
        torch.save({**state, "epoch": at_epoch - 1}, path)


def test_a_final_fit_run_that_diverged_ends_its_run_and_is_left_out_of_the_average(experiment, tmp_path):
    """Before: a run that diverged before its last epoch left the final fit incomplete for good (each --resume ended
    "interrupted" and export refused it), and one that diverged at its last epoch was averaged in."""
    from cxr_tune.experiment import Experiment
    from cxr_tune.search.report import final_fit_section

    copy = copy_tree(experiment, tmp_path / "ext")
    runs = [run["name"] for run in json.loads((copy / "finalfit" / "members.json").read_text())]
    diverge(copy / "finalfit" / "train" / runs[0], at_epoch=1)
    assert Experiment(str(copy)).final_fit_complete()  # nothing for --resume to train: the same seed diverges again
    assert [run.name for run, _ in Experiment(str(copy)).final_fit_checkpoints()] == runs[1:]
    assert "| diverged at epoch 1 (left out) |" in "\n".join(final_fit_section(Experiment(str(copy)), "ext"))
    done = call_cli("cxr_tune.export", str(copy), "--final-fit", "--out", str(tmp_path / "model"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert [m["trial_id"] for m in meta["members"]] == runs[1:] and [run["name"] for run in meta["final_fit"]["diverged"]] == runs[:1]
    assert "(1 run(s) that diverged left out)" in done.stdout

    for run in runs[1:]:
        diverge(copy / "finalfit" / "train" / run, at_epoch=EPOCHS)
    refused = call_cli("cxr_tune.export", str(copy), "--final-fit", "--out", str(tmp_path / "none"))
    assert refused.returncode == 2 and "every final-fit run in" in refused.stderr and "diverged" in refused.stderr
    done = call_cli("cxr_tune.export", str(copy), "--out", str(tmp_path / "search"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    meta = json.loads((tmp_path / "search" / "model.json").read_text())
    assert meta["final_fit"]["exported"] is False and [m["trial_id"] for m in meta["members"]] == meta["final_fit"]["search_members"]
    assert f"all its {SEEDS} runs diverged" in done.stdout


def test_a_final_fit_whose_best_configurations_changed_is_planned_again_keeping_its_runs_checkpoints(experiment, tmp_path, capsys):
    """A resumed search that ran more trials can change the ranking under an interrupted final fit:
    the old list and Tune's record of it go, the runs' own checkpoints stay."""
    from cxr_tune.experiment import Experiment
    from cxr_tune.search.finalfit import runs_to_train

    copy = copy_tree(experiment, tmp_path / "ext")
    planned = json.loads((copy / "finalfit" / "members.json").read_text())
    assert [run.name for run in runs_to_train(Experiment(str(copy)))] == [run["name"] for run in planned]  # nothing changed
    assert (copy / "finalfit" / "tuner.pkl").exists()
    stale = [{**run, "name": f"gone-seed{run['seed']}", "trial_id": "gone"} for run in planned[:1]] + planned[1:]
    (copy / "finalfit" / "members.json").write_text(json.dumps(stale))
    runs = runs_to_train(Experiment(str(copy)))
    assert [run.name for run in runs] == [run["name"] for run in planned]
    assert f"planned again, {len(planned) - 1} of its {len(planned)} run(s) already started" in capsys.readouterr().out
    assert sorted(p.name for p in (copy / "finalfit").iterdir()) == ["train"]  # Tune's state would restore the old runs
    assert {p.name for p in (copy / "finalfit" / "train").iterdir()} >= {run["name"] for run in planned}


def test_report_only_exports_best_again_with_the_flags_it_was_last_exported_with(experiment, tmp_path):
    """Before: ``--report-only`` (and a resumed search's end) exported ``best/`` with no flags, dropping a calibration a person had chosen."""
    copy = copy_tree(experiment, tmp_path / "ext")
    calibrated = call_cli("cxr_tune.export", str(copy), "--calibrate", "platt")
    assert calibrated.returncode == 0, calibrated.stderr[-3000:]
    rewritten = call_cli("cxr_tune.search", "--name", "ext", "--storage", str(tmp_path), "--report-only")
    assert rewritten.returncode == 0, rewritten.stdout[-3000:] + rewritten.stderr[-3000:]
    assert "best/ is exported again with the flags it was last exported with: --calibrate platt" in rewritten.stdout
    meta = json.loads((copy / "best" / "model.json").read_text())
    assert meta["calibration"]["method"] == "platt" and meta["export_options"]["calibrate"] == "platt"
    meta["export_options"]["val_data"] = str(tmp_path / "gone")  # a folder that no longer exists
    (copy / "best" / "model.json").write_text(json.dumps(meta))
    fallen_back = call_cli("cxr_tune.search", "--name", "ext", "--storage", str(tmp_path), "--report-only")
    assert fallen_back.returncode == 0, fallen_back.stdout[-3000:] + fallen_back.stderr[-3000:]
    assert f"Note: --val-data {tmp_path / 'gone'} --calibrate platt no longer applies (" in fallen_back.stdout
    assert json.loads((copy / "best" / "model.json").read_text())["calibration"] == {"method": "none"}


def test_a_copied_experiment_reads_its_own_checkpoints_never_the_original_s(experiment, tmp_path):
    """Tune records each checkpoint's absolute path where the search ran: before, a copy whose checkpoints were gone
    exported the original's without a word."""
    from cxr_tune.experiment import Experiment

    copy = copy_tree(experiment, tmp_path / "ext")
    trial = read_trials(experiment).sort_values("rank").iloc[0]["trial_id"]
    # Its trial table (as --report-only writes it there) names the copy's checkpoints too: before, the original's.
    paths = Experiment(str(copy)).trials(ranked=False).set_index("trial_id")["checkpoint_path"].dropna()
    assert len(paths) and all(path.startswith(f"{copy / 'train' / trial_id}/checkpoint_") for trial_id, path in paths.items()), paths
    exported = call_cli("cxr_tune.export", str(copy), "--trial", trial, "--out", str(tmp_path / "model"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    for checkpoint in (copy / "train" / trial).glob("checkpoint_*/"):
        shutil.rmtree(checkpoint)
    refused = call_cli("cxr_tune.export", str(copy), "--trial", trial, "--out", str(tmp_path / "model2"))
    assert refused.returncode == 2 and f"trial {trial} has no checkpoint under {copy / 'train' / trial}" in refused.stderr, refused.stderr[-3000:]


def test_export_records_its_val_data_as_an_absolute_path_so_a_later_report_and_predict_find_it_from_any_folder(experiment, site_root, tmp_path,
                                                                                                                 monkeypatch, capsys):
    """Before: recorded as typed (relative), which --report-only from another folder looked up there, and dropped; and
    model.json's external.source (and the card) kept it as typed, so predict run from another folder scored the set that
    chose the model and its threshold without saying they are selection-set numbers."""
    typed = os.path.relpath(site_root, ROOT)  # call_cli runs in the repository root, as `python -m` from there
    done = call_cli("cxr_tune.export", str(experiment), "--val-data", typed, "--out", str(tmp_path / "model"))
    assert done.returncode == 0, done.stderr[-3000:]
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["export_options"]["val_data"] == meta["external"]["source"] == str(site_root)
    assert f"The external set (`{site_root}`) **chose the model and its thresholds**" in (tmp_path / "model" / "MODEL_CARD.md").read_text()
    from cxr_tune.predict import main as predict

    monkeypatch.chdir(tmp_path)  # not the folder the export ran in (call_cli runs in the repository root)
    predict(["--model", "model", str(site_root), "--quiet"])
    assert "these are selection-set numbers for this model, optimistic" in capsys.readouterr().out
