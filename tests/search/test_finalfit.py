"""The final-fit stage end to end, with the newer building blocks: a tiny search (residual blocks,
squeeze-and-excitation, EMA of the weights) whose best configuration is trained again with two new
seeds, and whose export averages those runs' last epochs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, run_cli
from tests.selection_oracle import exported_scores

pytestmark = pytest.mark.slow
SEEDS, EPOCHS = 2, 2


@pytest.fixture(scope="module")
def search(synthetic_root, tmp_path_factory) -> tuple[Path, str]:
    raw = yaml.safe_load((ROOT / "search_spaces" / "smoke.yaml").read_text())
    raw["search"].update({"trials": 2, "max_epochs": 2, "final_fit_top": 1, "final_fit_seeds": SEEDS, "final_fit_epochs": EPOCHS})
    raw["fixed"].update({"block": "residual", "se_ratio": 0.25, "ema_decay": 0.9})
    space = tmp_path_factory.mktemp("space") / "finalfit.yaml"
    space.write_text(yaml.safe_dump(raw))
    storage = tmp_path_factory.mktemp("experiments")
    done = run_cli("cxr_tune.search", "--space", str(space), "--data", str(synthetic_root), "--storage", str(storage), "--name", "ff", timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return storage / "ff", done.stdout


def test_the_best_configuration_is_trained_again_with_new_seeds_for_the_full_schedule(search):
    experiment, stdout = search
    table = pd.read_csv(experiment / "trials.csv")
    runs = json.loads((experiment / "finalfit" / "members.json").read_text())
    selected = table.sort_values("rank").iloc[0]
    assert [run["trial_id"] for run in runs] == [selected["trial_id"]] * SEEDS and len({run["seed"] for run in runs}) == SEEDS
    assert all(run["epochs"] == EPOCHS for run in runs)
    assert "Final fit: 1 best configuration(s)" in stdout and f"{SEEDS} of {SEEDS} run(s) completed" in stdout
    stages = [json.loads(line)["stage"] for line in (experiment / "compute.jsonl").read_text().splitlines()]
    assert stages == ["search", "final fit"]


def test_best_averages_the_final_fit_runs_last_epochs_with_the_threshold_chosen_on_their_mean(search):
    from cxr_tune.selection import choose_threshold

    experiment, _ = search
    meta = json.loads((experiment / "best" / "model.json").read_text())
    runs = json.loads((experiment / "finalfit" / "members.json").read_text())
    assert [m["trial_id"] for m in meta["members"]] == [run["name"] for run in runs] and meta["final_fit"]["runs"] == runs
    assert all(m["epoch"] == EPOCHS for m in meta["members"])  # last epochs, none picked
    assert all(m["hparams"]["block"] == "residual" and m["hparams"]["ema_decay"] == 0.9 for m in meta["members"])
    stored = []
    for run in runs:
        [checkpoint] = list((experiment / "finalfit" / "train" / run["name"]).glob("checkpoint_*/val_predictions.parquet"))
        stored.append(pd.read_parquet(checkpoint).set_index("content_hash")["score"])
    mean = pd.concat(stored, axis=1).mean(axis=1)
    exported = exported_scores(experiment)
    assert np.abs(exported - mean.loc[exported.index]).max() < 1e-4
    labels = pd.read_csv(experiment / "best" / "val_predictions.csv")["label"].to_numpy()
    hp = meta["hparams"]
    assert meta["threshold"] == pytest.approx(choose_threshold(labels, mean.loc[exported.index].to_numpy(), hp["criterion"],
                                                               hp["min_sensitivity"], hp["threshold_tolerance"]), abs=1e-9)
    card = (experiment / "best" / "MODEL_CARD.md").read_text()
    assert "Final fit" in card and "## Final fit" in (experiment / "report.md").read_text()
