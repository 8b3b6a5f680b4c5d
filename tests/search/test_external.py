"""A search with an external validation set (``--val-data``), end to end: the external set decides.

One small search for the module (the smoke space, 2 trials, 2 epochs) on the session's SYNTHETIC
set, validated on a second SYNTHETIC set drawn with another seed (another "site"), with a
sensitivity floor. Every check follows from the rules, whatever the tiny models learn: the
objective is the external one, the selected trial is the external ranking's first, the exported
threshold is the one that trial reported on the external set, and the floor holds there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxr_tune.selection import CRITERIA, choose_threshold
from tests.conftest import run_cli
from tests.selection_oracle import checkpoint_scores, expected_winner, exported_scores

pytestmark = pytest.mark.slow

FLOOR = 0.9


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A labelled external folder (NORMAL/, PNEUMONIA/) from another SYNTHETIC draw; ``site-`` names
    keep its patient ids apart from the main set's."""
    from cxr_tune.data.synthetic import synthesize

    drawn = Path(synthesize(str(tmp_path_factory.mktemp("site-draw") / "draw"), n=120, seed=5))
    folder = tmp_path_factory.mktemp("site") / "site"
    for cls in ("NORMAL", "PNEUMONIA"):
        (folder / cls).mkdir(parents=True)
        for path in sorted((drawn / "train" / cls).iterdir()):
            shutil.copyfile(path, folder / cls / f"site-{path.name}")
    return folder


@pytest.fixture(scope="module")
def search(synthetic_root, site, tmp_path_factory) -> tuple[Path, str]:
    storage = tmp_path_factory.mktemp("experiments")
    done = run_cli("cxr_tune.search", "--space", "smoke", "--data", str(synthetic_root), "--val-data", str(site),
                   "--min-sensitivity", str(FLOOR), "--trials", "2", "--max-epochs", "2",
                   "--storage", str(storage), "--name", "ext", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return storage / "ext", done.stdout


@pytest.fixture(scope="module")
def experiment(search) -> Path:
    return search[0]


def read(experiment: Path) -> tuple[pd.DataFrame, dict]:
    return pd.read_csv(experiment / "trials.csv"), json.loads((experiment / "best" / "model.json").read_text())


def test_the_site_is_the_external_role_and_never_trains(experiment, site):
    splits = pd.read_csv(experiment / "splits.csv")
    external = splits[splits["role"] == "external"]
    assert sorted(Path(p).name for p in external["path"]) == sorted(p.name for p in site.rglob("*.jpeg"))
    assert not set(external["group_id"]) & set(splits.loc[splits["role"].isin(["train", "val"]), "group_id"])
    info = json.loads((experiment / "experiment.json").read_text())
    assert info["deciding_set"] == "external" and Path(info["external"]) == site


def test_every_epoch_is_scored_on_both_sets_and_the_objective_is_the_external_one(experiment):
    from cxr_tune.search.results import trial_histories

    _, histories = trial_histories(str(experiment))
    assert len(histories) == 2
    for history in histories.values():
        assert history["val_objective"].notna().all() and history["ext_objective"].notna().all()
        assert np.allclose(history["objective"], history["ext_objective"])  # what ASHA and Optuna read
        assert np.allclose(history["objective_low"], history["ext_objective_low"])
        assert (history["ext_n"] == history["ext_n"].iloc[0]).all() and (history["ext_sensitivity"] >= FLOOR - 1e-12).all()
    table, _ = read(experiment)
    assert np.allclose(table["objective"], table["ext_objective"]) and table["val_objective"].notna().all()


def test_the_selected_trial_is_first_on_the_external_set_and_is_what_best_holds(search):
    experiment, stdout = search
    table, meta = read(experiment)
    selected = table.set_index("trial_id").loc[expected_winner(table, "ext")]  # the README's rule on the external columns
    assert meta["trial_id"] == selected.name and int(selected["rank"]) == 1
    assert meta["epoch"] == int(selected["best_epoch"])
    stored = checkpoint_scores(experiment, selected.name, int(selected["best_epoch"]), "ext")
    exported = exported_scores(experiment, "external_predictions.csv")
    assert np.abs(exported - stored.loc[exported.index]).max() < 1e-4  # best/ holds that epoch's weights
    assert "tied with the best on the external set" in stdout and "external validation (SELECTION SET)" in stdout
    assert meta["deciding_set"] == "external"
    external = meta["external"]
    assert external["selection_set"] is True and Path(external["source"]) == Path(json.loads((experiment / "experiment.json").read_text())["external"])
    assert external["n"] == len(pd.read_csv(experiment / "best" / "external_predictions.csv"))


def test_the_threshold_is_the_external_one_and_keeps_the_sensitivity_floor(experiment):
    table, meta = read(experiment)
    selected = table.sort_values("rank").iloc[0]
    hp = meta["hparams"]
    assert hp["min_sensitivity"] == FLOOR and f"sensitivity >= {FLOOR:g}" in meta["threshold_rule"]
    assert "external validation set" in meta["threshold_rule"]
    # The exported threshold is the one the selected trial reported on the external set at its best epoch.
    assert meta["threshold"] == pytest.approx(selected["ext_threshold"], abs=1e-12)
    assert meta["external"]["sensitivity"] >= FLOOR  # the floor holds on the deciding set, as exported
    # ... and it is the rule's choice on the exported model's own external scores.
    scores = pd.read_csv(experiment / "best" / "external_predictions.csv")
    labels, probability = scores["label"].to_numpy(), scores["probability"].to_numpy()
    assert ((probability >= meta["threshold"]) == scores["prediction"]).all()
    assert (probability[labels == 1] >= meta["threshold"]).mean() == pytest.approx(meta["external"]["sensitivity"])

    def balance(t: float) -> float:
        predicted = probability >= t
        return float(CRITERIA[hp["criterion"]](predicted[labels == 1].mean(), 1 - predicted[labels == 0].mean()))

    best = balance(choose_threshold(labels, probability, hp["criterion"], FLOOR, hp["threshold_tolerance"]))
    assert balance(meta["threshold"]) >= best - hp["threshold_tolerance"] - 1e-9


def test_export_val_data_refuses_a_file_shared_with_train_in_one_line(experiment, site, synthetic_root, tmp_path):
    from cxr_tune.errors import UserError
    from cxr_tune.export import main

    shared = tmp_path / "site"
    shutil.copytree(site, shared)
    original = sorted((synthetic_root / "train" / "NORMAL").iterdir())[0]
    shutil.copyfile(original, shared / "NORMAL" / "copy.jpeg")
    with pytest.raises(UserError) as caught:  # the CLI prints it as one "error: ..." line, status 2
        main([str(experiment), "--val-data", str(shared), "--out", str(tmp_path / "out")])
    message = str(caught.value)
    assert "\n" not in message and "byte-identical to training-folder images" in message
    assert f"{shared / 'NORMAL' / 'copy.jpeg'} = {original}" in message
    assert not (tmp_path / "out").exists()


def test_export_val_data_refuses_another_image_of_a_patient_the_model_trained_on(experiment, site, tmp_path):
    """Not byte-identical, same patient: the splits' patient-group rule applies at export too."""
    from PIL import Image

    from cxr_tune.errors import UserError
    from cxr_tune.export import main

    splits = pd.read_csv(experiment / "splits.csv")
    trained = splits[(splits["role"] == "train") & (splits["label"] == 0)].iloc[0]
    shared = tmp_path / "site"
    shutil.copytree(site, shared)
    another = shared / "NORMAL" / f"{trained['patient_id']}-9999.jpeg"  # the same patient's name, new pixels
    Image.open(trained["path"]).rotate(3).save(another, quality=80)
    with pytest.raises(UserError) as caught:
        main([str(experiment), "--val-data", str(shared), "--out", str(tmp_path / "out")])
    message = str(caught.value)
    assert "\n" not in message and "belong to patients with training images" in message and str(another) in message
    assert not (tmp_path / "out").exists()


def test_export_val_data_refuses_a_missing_or_small_folder(experiment, site, tmp_path):
    from cxr_tune.errors import UserError
    from cxr_tune.export import export_trial

    with pytest.raises(UserError, match="does not exist"):
        export_trial(str(experiment), out=str(tmp_path / "a"), val_data=str(tmp_path / "nowhere"))
    small = tmp_path / "small"
    for cls in ("NORMAL", "PNEUMONIA"):
        (small / cls).mkdir(parents=True)
        for path in sorted((site / cls).iterdir())[:5]:
            shutil.copyfile(path, small / cls / path.name)
    with pytest.raises(UserError, match="holds 5 NORMAL and 5 PNEUMONIA readable images"):
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
