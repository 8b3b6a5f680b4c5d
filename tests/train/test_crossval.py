"""Cross-validation's report: a fold that diverged is said, and the command fails as a single diverged run does (no Ray)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pandas as pd

from cxr_tune.train import crossval
from cxr_tune.train.__main__ import run_cv
from cxr_tune.train.crossval import REPORTED, _fold_row
from cxr_tune.train.hparams import HParams


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
