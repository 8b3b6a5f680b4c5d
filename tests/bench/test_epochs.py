"""bench epochs retrains an export's own runs, changing nothing but the schedule's length."""

from __future__ import annotations

import json

import pytest

from cxr_tune.bench.epochs import plan_runs
from cxr_tune.errors import UserError
from tests.conftest import ROOT


def test_bench_epochs_retrains_every_member_with_its_own_configuration_and_seed_for_each_count():
    members = json.loads((ROOT / "results/real/best/model.json").read_text())["members"]
    runs = plan_runs(members, [8, 16])
    assert len(runs) == 2 * len(members) == 12
    for count in (8, 16):
        these = [r for r in runs if r["epochs"] == count]
        assert [r["member"] for r in these] == [m["trial_id"] for m in members]
        for run, member in zip(these, members):
            assert run["hparams"] == {**member["hparams"], "epochs": count}  # only the schedule's length changes


def test_a_change_reaches_every_run_and_one_no_configuration_takes_is_refused_before_training():
    members = json.loads((ROOT / "results/real/best/model.json").read_text())["members"]
    runs = plan_runs(members, [32], {"mixup": 0.2, "convs_per_block": 2})
    for run, member in zip(runs, members):
        assert run["hparams"] == {**member["hparams"], "mixup": 0.2, "convs_per_block": 2, "epochs": 32}
    with pytest.raises(UserError, match="--vary: unknown hyperparameter 'mixups'"):
        plan_runs(members, [32], {"mixups": 0.2})


def test_the_reference_row_says_when_the_export_shipped_an_earlier_epoch_than_it_retrains():
    """An export of a search trial at its best epoch (6 of 9) was called "the export's own schedule trained again: how far
    a retrain of identical runs moves", though the retrain keeps epoch 9."""
    from cxr_tune.bench.epochs import reference_note

    final_fit = [{"trial_id": "a-seed1", "epoch": 9, "hparams": {"epochs": 9}}, {"trial_id": "b-seed1", "epoch": 9, "hparams": {"epochs": 9}}]
    assert "how far a retrain of identical runs moves" in reference_note(final_fit, 9)
    assert reference_note(final_fit, 18) == ""
    trial = [{"trial_id": "f094cf70", "epoch": 6, "hparams": {"epochs": 9}}]
    note = reference_note(trial, 9)
    assert "identical runs moves" not in note
    assert "shipped its member at the best epoch of its trial (epoch 6 of 9)" in note and "another epoch" in note
    ensemble = [*trial, {"trial_id": "c", "epoch": 9, "hparams": {"epochs": 9}}]
    assert "(epochs 6, 9 of 9)" in reference_note(ensemble, 9)


def test_no_committed_final_fit_table_has_a_column_empty_in_every_row():
    """The single-count files once carried an 'AUC minus N epochs retrained' column no row filled (there is no control
    ensemble with one count; bench epochs no longer writes it)."""
    from tests.conftest import table_rows

    for path in sorted((ROOT / "results/benchmarks").glob("final_fit_epochs_*.md")):
        header, _, *body = table_rows(path.read_text())
        empty = [name for i, name in enumerate(header) if all(not row[i] for row in body)]
        assert not empty, f"{path.name}: {empty}"
