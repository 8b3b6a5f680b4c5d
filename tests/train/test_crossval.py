"""Cross-validation's report: a fold that diverged is said, and the command fails as a single diverged run does (no Ray)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pandas as pd
import pytest

from cxr_tune.errors import UserError
from cxr_tune.train import crossval
from cxr_tune.train.__main__ import run_cv
from cxr_tune.train.crossval import REPORTED, _fold_row
from cxr_tune.train.hparams import HParams
from tests.conftest import kermany_folder


def _history(diverges: bool) -> pd.DataFrame:
    epoch = {"val_n": 40, **{m: 0.8 for m in REPORTED}, "val_objective": 0.8, "val_non_finite": 0, "diverged": False}
    lost = {**epoch, **{m: 0.5 for m in REPORTED}, "val_objective": 0.5, "val_loss": 0.693, "val_non_finite": 40 if diverges else 0, "diverged": diverges}
    return pd.DataFrame([{**epoch, "epoch": 1}, {**lost, "epoch": 2}])


def test_a_diverged_fold_is_named_in_cv_md_and_the_command_exits_1(tmp_path, monkeypatch, capsys):
    folds = pd.DataFrame([{**_fold_row(1, _history(True)), "seconds": 1.0}, {**_fold_row(2, _history(False)), "seconds": 1.0}])
    assert folds["diverged"].tolist() == [True, False] and folds["best_epoch"].tolist() == [1, 1]
    monkeypatch.setattr(crossval, "cross_validate", lambda *args, **kwargs: folds)
    split = SimpleNamespace(source=SimpleNamespace(description="synthetic"))
    status = run_cv(argparse.Namespace(cv=2, split_seed=0), HParams(), split, SimpleNamespace(threads=1), str(tmp_path), "cv", None)
    text = (tmp_path / "cv" / "cv.md").read_text()
    assert status == 1 and "Fold(s) 1 of 2 diverged" in text and "| diverged " in text
    assert capsys.readouterr().err.startswith("error: Fold(s) 1 of 2 diverged")


def _split(normal_groups: int, pneumonia_groups: int) -> SimpleNamespace:
    """A training folder of so many patient groups per class, two images each (fold_roles reads only the roles)."""
    rows = [{"path": f"{label}-{g}-{i}", "label": label, "group_id": f"{label}-{g}", "role": "train"}
            for label, groups in ((0, normal_groups), (1, pneumonia_groups)) for g in range(groups) for i in range(2)]
    return SimpleNamespace(roles=pd.DataFrame(rows + [{"path": "t", "label": 0, "group_id": "t", "role": "test"}]))


@pytest.mark.parametrize(("k", "counts"), [(20, (4, 15)), (8, (5, 14))])
def test_more_folds_than_the_rarer_class_has_patient_groups_are_refused_with_the_counts(k, counts):
    """Before: --cv 20 over 19 groups was sklearn's ValueError traceback once Ray had started; --cv 8 with 5 NORMAL groups
    trained folds that validated on PNEUMONIA only (AUC nan) and averaged the spread silently over the other folds."""
    with pytest.raises(UserError, match=rf"^--cv {k}: {sum(counts)} patient groups in the training folder \({counts[0]} with NORMAL images, "
                                        rf"{counts[1]} with PNEUMONIA images\), so some validation fold would hold one class or none; "
                                        rf"give --cv {counts[0]} or fewer$"):
        crossval.fold_roles(_split(*counts), k)
    folds = crossval.fold_roles(_split(*counts), counts[0])
    assert all(f.loc[f["role"] == "val", "label"].nunique() == 2 for f in folds)


def test_too_many_folds_are_refused_before_ray_starts(tmp_path, monkeypatch):
    import cxr_tune.ray_session
    from cxr_tune.train.__main__ import main

    data = kermany_folder(tmp_path / "data", {"train": {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)],
                                                        "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]}})
    monkeypatch.setattr(cxr_tune.ray_session, "ray_session", lambda *a, **k: pytest.fail("Ray started"))
    with pytest.raises(UserError, match=r"^--cv 7: 12 patient groups in the training folder \(6 with NORMAL images, 6 with PNEUMONIA images\)"):
        main(["--data", str(data), "--storage", str(tmp_path / "runs"), "--name", "cv", "--cv", "7", "--set", "image_size=32"])


def test_cross_validation_with_an_external_set_says_the_folds_validate_on_their_own_and_the_set_goes_unused(tmp_path, monkeypatch, capsys):
    """Before: --cv with --val-data printed "External validation: ... selects epochs, trials, ensemble members and the threshold",
    while each fold chose its best epoch and threshold on its own held-out fold and the external set was never scored."""
    from cxr_tune.train.__main__ import main
    from tests.conftest import lines_before_ray

    layout = {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)], "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]}
    data = kermany_folder(tmp_path / "data", {"train": layout})
    site = kermany_folder(tmp_path / "site", {"": {"NORMAL": [f"IM-site{i:04d}-0001.jpeg" for i in range(20)],
                                                 "PNEUMONIA": [f"site{i}_virus_{i}.jpeg" for i in range(20)]}}, seed=1)  # the least --val-data takes
    argv = ["--data", str(data), "--val-data", str(site), "--storage", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--set", "image_size=32", "--cv", "2"]
    lines = lines_before_ray(main, argv, monkeypatch, capsys)
    assert not [line for line in lines if line.startswith("External validation")]
    assert (f"Cross-validation: each of the 2 folds chooses its best epoch and threshold on its own held-out fold of the training folder; "
            f"the external validation set {site} is not used (neither scored nor selecting, whatever --select-on says).") in lines


def test_cross_validation_takes_an_external_set_too_small_to_select_on_since_it_goes_unused(tmp_path, monkeypatch, capsys):
    """Before: --cv refused a --val-data folder of fewer than 20 images a class ("selecting on it needs at least 20 of each"),
    though no fold scores or selects on it."""
    from cxr_tune.train.__main__ import main
    from tests.conftest import lines_before_ray

    layout = {"NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(6)], "PNEUMONIA": [f"person{i}_virus_{i}.jpeg" for i in range(6)]}
    data = kermany_folder(tmp_path / "data", {"train": layout})
    site = kermany_folder(tmp_path / "site", {"": {"NORMAL": ["IM-site0000-0001.jpeg", "IM-site0001-0001.jpeg"],
                                                 "PNEUMONIA": ["site0_virus_0.jpeg", "site1_virus_1.jpeg"]}}, seed=1)
    argv = ["--data", str(data), "--val-data", str(site), "--storage", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
            "--set", "image_size=32", "--cv", "2"]
    lines = lines_before_ray(main, argv, monkeypatch, capsys)
    assert (f"Cross-validation: each of the 2 folds chooses its best epoch and threshold on its own held-out fold of the training folder; "
            f"the external validation set {site} is not used (neither scored nor selecting, whatever --select-on says).") in lines
